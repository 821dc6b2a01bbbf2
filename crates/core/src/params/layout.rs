//! The layout of a parameter vector: which named tensors, of which shapes, sit at which offsets
//! of the flat D values, with each tensor's normalization; splitting a vector back into tensors
//! and writing it as a safetensors file.
use crate::error::{Error, Result};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Below this a tensor's std is treated as this value (a constant tensor must not divide by 0).
pub const STD_FLOOR: f64 = 1e-8;

/// One modelled tensor: its name, shape, place in the flat vector and normalization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub mean: f32,
    pub std: f32,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Ordered tensors that make up one flat parameter vector of length [`Layout::param_count`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub tensors: Vec<TensorSpec>,
}

impl Layout {
    /// A layout from names and shapes in the given order (offsets follow; stats are neutral
    /// until [`ParamSet`] computes them).
    pub fn from_shapes<S: AsRef<str>>(entries: &[(S, Vec<usize>)]) -> Result<Self> {
        if entries.is_empty() {
            return Err(Error::invalid("layout", "no tensors: the selection is empty"));
        }
        let mut tensors = Vec::with_capacity(entries.len());
        let mut offset = 0usize;
        for (name, shape) in entries {
            let name = name.as_ref();
            if name.is_empty() {
                return Err(Error::invalid("layout", "a tensor has an empty name"));
            }
            if tensors.iter().any(|t: &TensorSpec| t.name == name) {
                return Err(Error::invalid("layout", format!("tensor '{name}' is listed twice")));
            }
            let numel: usize = shape.iter().product();
            if numel == 0 {
                return Err(Error::invalid("layout", format!("tensor '{name}' has no elements (shape {shape:?})")));
            }
            tensors.push(TensorSpec { name: name.to_string(), shape: shape.clone(), offset, mean: 0.0, std: 1.0 });
            offset = offset.checked_add(numel).ok_or_else(|| Error::invalid("layout", "parameter count overflows"))?;
        }
        Ok(Layout { tensors })
    }

    /// D: the number of scalars in one flat vector.
    pub fn param_count(&self) -> usize {
        self.tensors.last().map(|t| t.offset + t.numel()).unwrap_or(0)
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Index of tensor `name` in the layout's order.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Check that this layout holds exactly the tensors a host expects (same names and shapes,
    /// in any order); the error names the first tensor that differs.
    pub fn check_matches<S: AsRef<str>>(&self, expected: &[(S, Vec<usize>)]) -> Result<()> {
        for (name, shape) in expected {
            let name = name.as_ref();
            match self.get(name) {
                None => return Err(Error::invalid("layout", format!("the bundle has no tensor '{name}' that the host's model needs"))),
                Some(t) if &t.shape != shape => {
                    return Err(Error::invalid("layout", format!("tensor '{name}': bundle shape {:?}, host model {:?}", t.shape, shape)))
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self.tensors.iter().find(|t| !expected.iter().any(|(n, _)| n.as_ref() == t.name)) {
            return Err(Error::invalid("layout", format!("the bundle models tensor '{}' that the host's model does not have", extra.name)));
        }
        Ok(())
    }

    /// Map host units to normalized units, tensor by tensor. `raw.len() == out.len() == D`.
    pub fn normalize(&self, raw: &[f32], out: &mut [f32]) {
        for t in &self.tensors {
            let r = t.offset..t.offset + t.numel();
            let (m, s) = (t.mean, t.std);
            for (o, &x) in out[r.clone()].iter_mut().zip(&raw[r]) {
                *o = (x - m) / s;
            }
        }
    }

    /// Exact inverse of [`Layout::normalize`] up to f32 rounding: normalized -> host units.
    pub fn denormalize(&self, norm: &[f32], out: &mut [f32]) {
        for t in &self.tensors {
            let r = t.offset..t.offset + t.numel();
            let (m, s) = (t.mean, t.std);
            for (o, &x) in out[r.clone()].iter_mut().zip(&norm[r]) {
                *o = x * s + m;
            }
        }
    }

    /// Borrow the tensors of one flat vector by name and shape.
    pub fn split<'a>(&'a self, flat: &'a [f32]) -> impl Iterator<Item = (&'a TensorSpec, &'a [f32])> + 'a {
        self.tensors.iter().map(move |t| (t, &flat[t.offset..t.offset + t.numel()]))
    }

    /// Serialize one flat vector as safetensors bytes with the original tensor names (f32).
    pub fn to_safetensors(&self, flat: &[f32]) -> Result<Vec<u8>> {
        self.to_safetensors_with(flat, None)
    }

    /// [`Layout::to_safetensors`] with a `__metadata__` map (e.g. the model's provenance),
    /// written in key order: the same model gives the same bytes.
    pub fn to_safetensors_with(&self, flat: &[f32], metadata: Option<&BTreeMap<String, String>>) -> Result<Vec<u8>> {
        if flat.len() != self.param_count() {
            return Err(Error::invalid("parameters", format!("vector has {} values, layout needs {}", flat.len(), self.param_count())));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .split(flat)
            .map(|(t, v)| {
                let bytes: &[u8] = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) };
                (t.name.clone(), safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), bytes).expect("shape matches"))
            })
            .collect();
        let bytes = safetensors::serialize(views, None).map_err(|e| Error::invalid("safetensors", e.to_string()))?;
        match metadata {
            Some(m) => Ok(with_metadata(&bytes, m)),
            None => Ok(bytes),
        }
    }

    /// Write one flat vector as a safetensors file (atomically).
    pub fn save_safetensors(&self, flat: &[f32], path: &Path) -> Result<()> {
        crate::files::write_atomic(path, &self.to_safetensors(flat)?)
    }
}

/// Safetensors bytes (as `safetensors::serialize` writes them, without metadata) with a
/// `__metadata__` entry added to the header. The safetensors crate takes metadata as a HashMap
/// and writes it in the map's random order; here the header is written again with the
/// metadata's keys sorted, so that a file's bytes depend on its content alone. Tensor offsets
/// are relative to the data, which is unchanged; the header is padded with spaces to a
/// multiple of 8 bytes, as the crate does.
fn with_metadata(bytes: &[u8], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let (header, data) = (&bytes[8..8 + n], &bytes[8 + n..]);
    let header = std::str::from_utf8(header).expect("safetensors writes UTF-8").trim_end();
    let body = header.strip_prefix('{').expect("a JSON object");
    let meta = serde_json::to_string(metadata).expect("strings serialize");
    let mut new_header = format!("{{\"__metadata__\":{meta},{body}").into_bytes();
    new_header.resize(new_header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + new_header.len() + data.len());
    out.extend_from_slice(&(new_header.len() as u64).to_le_bytes());
    out.extend_from_slice(&new_header);
    out.extend_from_slice(data);
    out
}
