//! Preparing a host's ONNX model for adapters: the initializers a bundle generates become graph
//! inputs whose default is the initializer (docs/api.md, "Adapters"). The model still runs as
//! before without an adapter; with one, ONNX Runtime feeds the adapter's tensors to those inputs
//! for that `Run`. Everything else is kept as it was.
//!
//! Each exposed initializer is checked against the bundle's layout by name (through a
//! [`NameMap`] when the host names it differently), shape and element type (FLOAT), and a
//! mismatch is refused naming the tensor. An input that already exists must have the same
//! type; it is kept.
//!
//! What such inputs cost: ONNX Runtime treats an initializer that is also a graph input as
//! overridable, not constant, so constant folding and the fusions that rewrite weights (a
//! BatchNormalization folded into the Conv before it, Conv + BatchNorm + Relu fused) do not
//! apply to them (docs/api.md, "Adapters", measured by `pdiff bench adapters`).
use super::graph::{value_info, Dim};
use super::proto::{tensor_proto::DataType, type_proto, ModelProto, StringStringEntryProto};
use pdiff_core::adapter::NameMap;
use pdiff_core::error::{Error, Result};
use pdiff_core::params::Layout;
use prost::Message;

/// The metadata key an exposed model carries (value: the sha256 of the bundle's pdiff.json):
/// it marks the file as pdiff's output (a later `expose` may replace it).
pub const EXPOSED_KEY: &str = "pdiff.exposed_for_bundle";

/// The result of [`expose`].
pub struct Exposed {
    /// The new model (protobuf bytes).
    pub bytes: Vec<u8>,
    /// The host names of the inputs added, in the layout's order.
    pub added: Vec<String>,
    /// Those that were graph inputs already (checked, kept).
    pub kept: Vec<String>,
}

fn element_name(t: i32) -> String {
    DataType::try_from(t).map(|d| d.as_str_name().to_string()).unwrap_or_else(|_| format!("element type {t}"))
}

/// Whether `bytes` is a model [`expose`] wrote (its metadata holds [`EXPOSED_KEY`]).
pub fn is_exposed_model(bytes: &[u8]) -> bool {
    ModelProto::decode(bytes).map(|m| m.metadata_props.iter().any(|p| p.key.as_deref() == Some(EXPOSED_KEY))).unwrap_or(false)
}

/// Expose the tensors of `layout` (named through `names`) in the host model `model` (ONNX
/// protobuf bytes; `what` names it in errors) as graph inputs with their initializers as
/// defaults. `bundle_sha256` is recorded in the model's metadata.
pub fn expose(model: &[u8], what: &str, layout: &Layout, names: &NameMap, bundle_sha256: &str) -> Result<Exposed> {
    names.check(layout)?;
    let bad = |message: String| Error::invalid(format!("host model {what}"), message);
    let mut m = ModelProto::decode(model).map_err(|e| bad(format!("not an ONNX model ({e})")))?;
    let graph = m.graph.as_mut().ok_or_else(|| bad("has no graph".into()))?;
    let (mut added, mut kept) = (Vec::new(), Vec::new());
    for t in &layout.tensors {
        let host = names.host_name(&t.name);
        let which = if host == t.name { format!("'{host}'") } else { format!("'{host}' (the bundle's '{}')", t.name) };
        let init = graph.initializer.iter().find(|i| i.name.as_deref() == Some(host)).ok_or_else(|| {
            bad(format!("has no initializer {which}: the bundle generates it (name it with --adapter-name LAYOUT=HOST if the host calls it otherwise)"))
        })?;
        let want: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        if init.dims != want {
            return Err(bad(format!("initializer {which} has shape {:?}, the bundle generates {want:?}", init.dims)));
        }
        let elem = init.data_type.unwrap_or(0);
        if elem != DataType::Float as i32 {
            return Err(bad(format!("initializer {which} is {}, the bundle generates FLOAT", element_name(elem))));
        }
        match graph.input.iter().find(|i| i.name.as_deref() == Some(host)) {
            Some(existing) => {
                let tensor = existing.r#type.as_ref().and_then(|t| match &t.value {
                    Some(type_proto::Value::TensorType(tt)) => Some(tt),
                    _ => None,
                });
                match tensor {
                    Some(tt) if tt.elem_type == Some(DataType::Float as i32) => kept.push(host.to_string()),
                    _ => return Err(bad(format!("graph input {which} is not a FLOAT tensor"))),
                }
            }
            None => {
                let dims: Vec<Dim> = want.iter().map(|&d| Dim::Fixed(d)).collect();
                graph.input.push(value_info(host, DataType::Float, &dims));
                added.push(host.to_string());
            }
        }
    }
    m.metadata_props.retain(|p| p.key.as_deref() != Some(EXPOSED_KEY));
    m.metadata_props.push(StringStringEntryProto { key: Some(EXPOSED_KEY.into()), value: Some(bundle_sha256.into()) });
    Ok(Exposed { bytes: m.encode_to_vec(), added, kept })
}

/// The host model `model` with the initializers of `layout` (named through `names`) holding
/// `flat`'s values instead: what a host without adapters builds for each generated model (a
/// session per model). Each tensor is checked as in [`expose`].
pub fn with_values(model: &[u8], what: &str, layout: &Layout, names: &NameMap, flat: &[f32]) -> Result<Vec<u8>> {
    names.check(layout)?;
    if flat.len() != layout.param_count() {
        return Err(Error::invalid("parameters", format!("vector has {} values, layout needs {}", flat.len(), layout.param_count())));
    }
    let bad = |message: String| Error::invalid(format!("host model {what}"), message);
    let mut m = ModelProto::decode(model).map_err(|e| bad(format!("not an ONNX model ({e})")))?;
    let graph = m.graph.as_mut().ok_or_else(|| bad("has no graph".into()))?;
    for (t, values) in layout.split(flat) {
        let host = names.host_name(&t.name);
        let init = graph.initializer.iter_mut().find(|i| i.name.as_deref() == Some(host)).ok_or_else(|| bad(format!("has no initializer '{host}'")))?;
        let want: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        if init.dims != want || init.data_type != Some(DataType::Float as i32) {
            return Err(bad(format!("initializer '{host}' is not FLOAT {want:?}")));
        }
        init.float_data.clear();
        init.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    Ok(m.encode_to_vec())
}
