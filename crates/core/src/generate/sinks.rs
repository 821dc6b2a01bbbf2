//! The host's own tensors as destinations of generated models ([`super::ModelSource::sample_into_tensors`]).
use crate::error::{Error, Result};
use crate::params::Layout;

/// A host buffer that receives one tensor of every generated model
/// ([`super::ModelSource::sample_into_tensors`]).
#[derive(Debug)]
pub struct TensorSink<'a> {
    /// Index of the tensor in the layout ([`Layout::index_of`] finds it by name).
    pub tensor: usize,
    /// n x numel floats: model i's tensor at `[i * numel, (i + 1) * numel)`, row-major.
    pub out: &'a mut [f32],
}

/// Every sink names a tensor of `layout` once and holds exactly n x numel floats; the error
/// names the tensor (or the index) that is wrong.
pub fn check_sinks(layout: &Layout, n: usize, sinks: &[TensorSink<'_>]) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("n", "number of samples must be at least 1"));
    }
    if sinks.is_empty() {
        return Err(Error::invalid("buffers", "no tensor buffer given"));
    }
    let mut seen = vec![false; layout.tensors.len()];
    for s in sinks {
        let t = layout
            .tensors
            .get(s.tensor)
            .ok_or_else(|| Error::invalid("buffers", format!("tensor index {} is out of range (the layout has {} tensors)", s.tensor, layout.tensors.len())))?;
        if std::mem::replace(&mut seen[s.tensor], true) {
            return Err(Error::invalid("buffers", format!("tensor '{}' is given twice", t.name)));
        }
        let need = n.checked_mul(t.numel()).ok_or_else(|| Error::invalid("n", "too large"))?;
        if s.out.len() != need {
            return Err(Error::invalid(
                "buffers",
                format!("tensor '{}' {:?}: {} floats given, {n} x {} = {need} needed", t.name, t.shape, s.out.len(), t.numel()),
            ));
        }
    }
    Ok(())
}
