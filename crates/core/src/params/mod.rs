//! Parameter data: K checkpoints of one network (or a subset of its tensors) as a K x D matrix
//! plus the [`Layout`] that maps flat offsets back to named tensors.
//!
//! Normalization is per tensor: one scalar mean and std over that tensor's values in all K
//! checkpoints (docs/design.md, "Data and layout"). Padding (to the autoencoder's stride
//! multiple) is applied by the model stage; this module only knows the unpadded length D.
mod conditions;
mod layout;
mod synthetic;

pub use conditions::{ConditionSpec, Conditions};
pub use layout::{Layout, TensorSpec, STD_FLOOR};
pub use synthetic::synthetic_trajectory;

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Fewer checkpoints than this get a dataset warning. In the mnist-mlp3 ablation
/// (docs/results/ablations.md) the median and the worst generated model collapsed with K = 2;
/// K = 10 was fragile (some generated models collapsed in one run of it; in another none did,
/// but 16 of 100 generated latents fell outside the training range and the autoencoder kept 28%
/// of the checkpoints' spread as error, against 12.5% with K = 200); from K = 50 on every run
/// was sound, with no latent clipped: below 50 the generator has too few examples of the
/// distribution it must learn.
pub const MIN_RECOMMENDED_K: usize = 50;

/// Which tensors of a checkpoint to model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub enum Selection {
    /// Every floating-point tensor (the default).
    #[default]
    AllFloat,
    /// Exact names or glob patterns (`*`, `?`, `[..]`); each must match at least one tensor.
    Patterns(Vec<String>),
}

impl Selection {
    pub fn patterns<S: AsRef<str>>(p: &[S]) -> Self {
        if p.is_empty() {
            Selection::AllFloat
        } else {
            Selection::Patterns(p.iter().map(|s| s.as_ref().to_string()).collect())
        }
    }
}

/// K flat parameter vectors in host units (row-major K x D) and their layout.
#[derive(Clone, Debug)]
pub struct ParamSet {
    pub layout: Layout,
    pub data: Vec<f32>,
    /// Where each row came from (file path or "memory[i]").
    pub sources: Vec<String>,
    /// Non-fatal findings: fewer than [`MIN_RECOMMENDED_K`] checkpoints, checkpoints that look
    /// permutation-misaligned.
    pub warnings: Vec<String>,
    /// One condition vector per checkpoint, for a conditional generator.
    pub conditions: Option<Conditions>,
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16)
}

/// Convert a little-endian tensor buffer to f32.
fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Dtype::F64 => out.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)),
        Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        Dtype::BF16 => out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => unreachable!("checked by is_float"),
    }
}

impl ParamSet {
    /// K = number of checkpoints.
    pub fn k(&self) -> usize {
        self.sources.len()
    }

    /// Attach one condition vector per checkpoint (in the checkpoints' order): the data of a
    /// conditional generator.
    pub fn with_conditions(mut self, conditions: Conditions) -> Result<Self> {
        if conditions.len() != self.k() {
            return Err(Error::invalid("conditions", format!("{} condition vectors for K = {} checkpoints", conditions.len(), self.k())));
        }
        self.conditions = Some(conditions);
        Ok(self)
    }

    /// Attach the vectors of a conditions file (see [`Conditions::from_file`]).
    pub fn with_conditions_file(self, path: &Path) -> Result<Self> {
        let c = Conditions::from_file(path, &self.sources)?;
        self.with_conditions(c)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.layout.param_count();
        &self.data[i * d..(i + 1) * d]
    }

    /// Build from vectors already in memory (C API input B). Computes normalization stats and
    /// validates K >= 2 and finiteness.
    pub fn from_rows(layout: Layout, data: Vec<f32>, sources: Vec<String>) -> Result<Self> {
        let d = layout.param_count();
        if d == 0 {
            return Err(Error::invalid("layout", "no parameters selected"));
        }
        if !data.len().is_multiple_of(d) {
            return Err(Error::invalid("data", format!("{} values is not a multiple of D = {d}", data.len())));
        }
        let k = data.len() / d;
        if sources.len() != k {
            return Err(Error::invalid("sources", format!("{} names for {k} checkpoints", sources.len())));
        }
        if k < 2 {
            return Err(too_few_checkpoints(k));
        }
        for (i, row) in data.chunks_exact(d).enumerate() {
            for t in &layout.tensors {
                if let Some(j) = row[t.offset..t.offset + t.numel()].iter().position(|x| !x.is_finite()) {
                    return Err(Error::Tensor {
                        file: PathBuf::from(&sources[i]),
                        tensor: t.name.clone(),
                        message: format!("non-finite value {} at flat index {j}", row[t.offset + j]),
                    });
                }
            }
        }
        let mut set = ParamSet { layout, data, sources, warnings: Vec::new(), conditions: None };
        set.compute_stats();
        set.check_k();
        set.check_alignment();
        Ok(set)
    }

    /// Load K safetensors checkpoints and select tensors. Layout order is the order in which
    /// the tensors are stored in the first file.
    pub fn load(paths: &[PathBuf], selection: &Selection) -> Result<Self> {
        Self::load_with(paths, selection, read_checkpoint)
    }

    /// [`ParamSet::load`] over checkpoint files already in memory: (name used in errors, bytes).
    pub fn from_safetensors_bytes(files: &[(PathBuf, Vec<u8>)], selection: &Selection) -> Result<Self> {
        let names: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
        Self::load_with(&names, selection, |p| Ok(files.iter().find(|f| f.0 == p).expect("listed").1.clone()))
    }

    fn load_with(paths: &[PathBuf], selection: &Selection, read: impl Fn(&Path) -> Result<Vec<u8>>) -> Result<Self> {
        if paths.len() < 2 {
            return Err(too_few_checkpoints(paths.len()));
        }
        let mut layout: Option<Layout> = None;
        let mut data = Vec::new();
        for path in paths {
            let bytes = read(path)?;
            check_header_names(path, &bytes)?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| Error::Checkpoint { file: path.clone(), message: format!("not a readable safetensors file ({e})") })?;
            let layout = match &layout {
                Some(l) => l,
                None => layout.insert(select_layout(path, stored_tensors(&st, &bytes), selection)?),
            };
            crate::files::try_reserve(&mut data, layout.param_count(), &format_args!("the parameters of checkpoint {}", path.display()))?;
            for t in &layout.tensors {
                let view = st.tensor(&t.name).map_err(|_| Error::Tensor {
                    file: path.clone(),
                    tensor: t.name.clone(),
                    message: "missing (present in the first checkpoint)".into(),
                })?;
                if view.shape() != t.shape.as_slice() {
                    return Err(Error::Tensor {
                        file: path.clone(),
                        tensor: t.name.clone(),
                        message: format!("shape {:?} differs from {:?} in the first checkpoint", view.shape(), t.shape),
                    });
                }
                if !is_float(view.dtype()) {
                    return Err(Error::Tensor {
                        file: path.clone(),
                        tensor: t.name.clone(),
                        message: format!("dtype {:?} is not floating point", view.dtype()),
                    });
                }
                let start = data.len();
                to_f32(view.dtype(), view.data(), &mut data);
                if let Some(j) = data[start..].iter().position(|x| !x.is_finite()) {
                    return Err(Error::Tensor {
                        file: path.clone(),
                        tensor: t.name.clone(),
                        message: format!("non-finite value {} at element {j}", data[start + j]),
                    });
                }
            }
        }
        let layout = layout.expect("K >= 2");
        let sources = paths.iter().map(|p| p.display().to_string()).collect();
        let mut set = ParamSet { layout, data, sources, warnings: Vec::new(), conditions: None };
        set.compute_stats();
        set.check_k();
        set.check_alignment();
        Ok(set)
    }

    /// All `*.safetensors` files of a directory, sorted by name, then [`ParamSet::load`].
    pub fn load_dir(dir: &Path, selection: &Selection) -> Result<Self> {
        Self::load(&list_checkpoints(dir)?, selection)
    }

    fn compute_stats(&mut self) {
        let d = self.layout.param_count();
        let k = self.k();
        for t in &mut self.layout.tensors {
            let n = (t.numel() * k) as f64;
            let mut sum = 0f64;
            for row in self.data.chunks_exact(d) {
                sum += row[t.offset..t.offset + t.numel()].iter().map(|&x| x as f64).sum::<f64>();
            }
            let mean = sum / n;
            let mut var = 0f64;
            for row in self.data.chunks_exact(d) {
                var += row[t.offset..t.offset + t.numel()].iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>();
            }
            t.mean = mean as f32;
            t.std = (var / n).sqrt().max(STD_FLOOR) as f32;
        }
    }

    /// Too few checkpoints to learn their distribution: see [`MIN_RECOMMENDED_K`].
    fn check_k(&mut self) {
        let k = self.k();
        if k < MIN_RECOMMENDED_K {
            self.warnings.push(format!(
                "K = {k} checkpoints is few: at least {MIN_RECOMMENDED_K} are recommended (in the mnist-mlp3 ablation \
                 most generated models collapsed with K = 2, K = 10 was fragile, K = 50 sound); collect more checkpoints"
            ));
        }
    }

    /// Checkpoints from one trajectory are nearly parallel; independently initialised runs are
    /// permutation-misaligned (cosine near 0) and the autoencoder fails on them
    /// (docs/design.md, "Data and layout").
    fn check_alignment(&mut self) {
        let d = self.layout.param_count();
        let first = self.row(0).to_vec();
        let n0 = first.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let mut worst = (1.0f64, 0usize);
        for i in 1..self.k() {
            let r = &self.data[i * d..(i + 1) * d];
            let dot: f64 = r.iter().zip(&first).map(|(&a, &b)| a as f64 * b as f64).sum();
            let n = r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let cos = if n0 > 0.0 && n > 0.0 { dot / (n0 * n) } else { 1.0 };
            if cos < worst.0 {
                worst = (cos, i);
            }
        }
        if worst.0 < 0.5 {
            self.warnings.push(format!(
                "checkpoints look permutation-misaligned: cosine similarity between {} and {} is {:.3}; \
                 p-diff learns checkpoints of one training trajectory, independent runs usually fail",
                self.sources[0], self.sources[worst.1], worst.0
            ));
        }
    }

    /// The K rows normalized (host units -> per-tensor standardized), row-major K x D.
    pub fn normalized(&self) -> Vec<f32> {
        let d = self.layout.param_count();
        let mut out = vec![0f32; self.data.len()];
        for (src, dst) in self.data.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            self.layout.normalize(src, dst);
        }
        out
    }

    /// The checkpoints' spread, in normalized units: the variance across the K checkpoints of
    /// each of the D coordinates (population variance), averaged over D. It is the mean squared
    /// error of reproducing every checkpoint by their mean, the error of an autoencoder that
    /// learned nothing, and so the scale against which its reconstruction error is judged.
    pub fn checkpoint_variance(&self) -> f64 {
        self.checkpoint_variance_weighted(None)
    }

    /// [`ParamSet::checkpoint_variance`] with coordinate j weighted by `weights[j]` (the
    /// autoencoder's reconstruction weighting; None: uniform).
    pub fn checkpoint_variance_weighted(&self, weights: Option<&[f32]>) -> f64 {
        let d = self.layout.param_count();
        let k = self.k() as f64;
        let mut sum = vec![0f64; d];
        let mut sum_sq = vec![0f64; d];
        // One normalized row at a time: a normalized copy of all K rows is as large as the
        // data (750 MB for mnist-mlp-wide).
        let mut row = vec![0f32; d];
        for raw in self.data.chunks_exact(d) {
            self.layout.normalize(raw, &mut row);
            for ((s, q), &x) in sum.iter_mut().zip(&mut sum_sq).zip(&row) {
                *s += x as f64;
                *q += x as f64 * x as f64;
            }
        }
        let total: f64 = sum.iter().zip(&sum_sq).enumerate().map(|(j, (s, q))| (q / k - (s / k).powi(2)).max(0.0) * weights.map_or(1.0, |w| w[j] as f64)).sum();
        total / d as f64
    }

    /// Uniform average of the K rows ("model soup").
    pub fn mean_row(&self) -> Vec<f32> {
        let d = self.layout.param_count();
        let mut acc = vec![0f64; d];
        for row in self.data.chunks_exact(d) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x as f64;
            }
        }
        acc.into_iter().map(|a| (a / self.k() as f64) as f32).collect()
    }
}

/// Refuse fewer than 2 checkpoints in all (a distribution needs at least two samples).
pub fn check_k(k: usize) -> Result<()> {
    if k < 2 {
        return Err(too_few_checkpoints(k));
    }
    Ok(())
}

fn too_few_checkpoints(k: usize) -> Error {
    Error::invalid("checkpoints", format!("K = {k}: at least 2 checkpoints are needed to learn a distribution"))
}

/// One checkpoint file, read bounded ([`crate::limits::MAX_CHECKPOINT_BYTES`]): regular files only
/// (a FIFO or a device is refused, naming it, never waited on or read without end).
fn read_checkpoint(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_regular(path, crate::limits::MAX_CHECKPOINT_BYTES)
        .map_err(|e| Error::read_out_of_memory(&e, format!("checkpoint {}", path.display())).unwrap_or_else(|| Error::io(path, e)))
}

/// A safetensors header that names a tensor twice is refused (the safetensors crate would keep
/// one of them silently).
fn check_header_names(path: &Path, bytes: &[u8]) -> Result<()> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).unwrap_or(0);
    let Some(header) = usize::try_from(n).ok().and_then(|n| bytes.get(8..8usize.checked_add(n)?)) else {
        return Ok(()); // malformed: SafeTensors::deserialize says how
    };
    crate::json::check_unique_keys(header)
        .map_err(|e| Error::Checkpoint { file: path.to_path_buf(), message: format!("not a readable safetensors file (header: {e})") })
}

/// `*.safetensors` files of a directory, sorted by file name.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().map(|e| e == "safetensors").unwrap_or(false)).collect();
    paths.sort();
    Ok(paths)
}

/// A tensor as a checkpoint's header declares it: name, dtype, shape, data offset in the file.
type StoredTensor = (String, Dtype, Vec<usize>, usize);

/// The tensors of a deserialized checkpoint with their data offsets in `bytes`.
fn stored_tensors(st: &SafeTensors<'_>, bytes: &[u8]) -> Vec<StoredTensor> {
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let off = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
            (name, v.dtype(), v.shape().to_vec(), off)
        })
        .collect()
}

/// The tensors declared by the header of the checkpoint at `path`, read without its data:
/// the 8-byte header length, the JSON header (validated by the safetensors crate: dtypes,
/// shapes and contiguous offsets), and a file length that matches the header.
fn read_header(path: &Path) -> Result<Vec<StoredTensor>> {
    use std::io::Read;
    let unreadable = |message: String| Error::Checkpoint { file: path.to_path_buf(), message: format!("not a readable safetensors file ({message})") };
    let (mut file, file_len) = crate::files::open_regular(path, crate::limits::MAX_CHECKPOINT_BYTES).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| unreadable(format!("header length: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > crate::limits::MAX_SAFETENSORS_HEADER_BYTES || n > file_len.saturating_sub(8) {
        return Err(unreadable(format!("header length {n} in a file of {file_len} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| unreadable(format!("header: {e}")))?;
    crate::json::check_unique_keys(&header).map_err(|e| unreadable(format!("header: {e}")))?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header).map_err(|e| unreadable(e.to_string()))?;
    let expected_len = 8 + n + meta.data_len() as u64;
    if file_len != expected_len {
        return Err(unreadable(format!("the header describes {expected_len} bytes, the file has {file_len}")));
    }
    Ok(meta.tensors().into_iter().map(|(name, t)| (name, t.dtype, t.shape.clone(), 8 + n as usize + t.data_offsets.0)).collect())
}

/// The layout and K that [`ParamSet::load_dir`] would give, from the checkpoints' headers
/// alone: no tensor data is read (the layout's normalization stats are left neutral). A caller
/// checks with it what a training run would need (`train::check_memory`) before loading
/// checkpoints that may not even fit in memory. The layout comes from the first file, as in
/// [`ParamSet::load`]; the other files are checked by the full load. One directory may hold a
/// single checkpoint (a PEFT adapter directory holds one `adapter_model.safetensors`): K >= 2 is
/// the caller's check over all its directories ([`check_k`]); an empty directory is refused.
pub fn peek_dir(dir: &Path, selection: &Selection) -> Result<(Layout, usize)> {
    let paths = list_checkpoints(dir)?;
    if paths.is_empty() {
        return Err(Error::invalid("checkpoints", format!("{}: no *.safetensors checkpoint in this directory", dir.display())));
    }
    let layout = select_layout(&paths[0], read_header(&paths[0])?, selection)?;
    Ok((layout, paths.len()))
}

fn select_layout(path: &Path, mut all: Vec<StoredTensor>, selection: &Selection) -> Result<Layout> {
    // Storage order in the file (data offset), so layouts are stable across runs.
    all.sort_by(|a, b| a.3.cmp(&b.3).then_with(|| a.0.cmp(&b.0)));
    let chosen: Vec<&StoredTensor> = match selection {
        Selection::AllFloat => all.iter().filter(|t| is_float(t.1) && t.2.iter().product::<usize>() > 0).collect(),
        Selection::Patterns(patterns) => {
            let mut chosen = Vec::new();
            for p in patterns {
                let pat = glob::Pattern::new(p).map_err(|e| Error::invalid("selection", format!("bad pattern '{p}': {e}")))?;
                // An exact name that is not floating point is an error; a glob pattern skips
                // non-float tensors (e.g. `bn.*` and PyTorch's int64 num_batches_tracked).
                let is_glob = p.contains(['*', '?', '[']);
                let hits: Vec<_> = all.iter().filter(|t| t.0 == *p || pat.matches(&t.0)).filter(|t| !is_glob || t.0 == *p || is_float(t.1)).collect();
                if hits.is_empty() {
                    return Err(Error::Tensor {
                        file: path.to_path_buf(),
                        tensor: p.clone(),
                        message: "no floating-point tensor matches this selection".into(),
                    });
                }
                for h in hits {
                    if !is_float(h.1) {
                        return Err(Error::Tensor {
                            file: path.to_path_buf(),
                            tensor: h.0.clone(),
                            message: format!("dtype {:?} is not floating point and cannot be modelled", h.1),
                        });
                    }
                    if !chosen.iter().any(|c: &&StoredTensor| c.0 == h.0) {
                        chosen.push(h);
                    }
                }
            }
            chosen.sort_by_key(|t| t.3);
            chosen
        }
    };
    if chosen.is_empty() {
        return Err(Error::Checkpoint { file: path.to_path_buf(), message: "the selection is empty: no floating-point tensor".into() });
    }
    let entries: Vec<(String, Vec<usize>)> = chosen.iter().map(|t| (t.0.clone(), t.2.clone())).collect();
    Layout::from_shapes(&entries)
}
