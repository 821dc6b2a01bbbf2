//! Generated models as safetensors files: `gen_XXXX.safetensors` in an output directory of kind
//! samples ([`crate::output::OutputDir`]).
use crate::error::Result;
use crate::output::{IfForeign, OutputDir, OutputKind};
use crate::params::Layout;
use std::path::{Path, PathBuf};

/// Write rows of a [n, D] matrix as `gen_XXXX.safetensors` into `dir`, one output of kind
/// samples ([`crate::output::OutputDir`]): a previous one is replaced atomically, files
/// libpdiff did not write are refused or, with [`IfForeign::Force`], kept beside.
pub fn write_models(layout: &Layout, rows: &[f32], dir: &Path, if_foreign: IfForeign) -> Result<Vec<PathBuf>> {
    let mut out = ModelWriter::begin(dir, layout, if_foreign)?;
    for (i, row) in rows.chunks_exact(layout.param_count().max(1)).enumerate() {
        out.write(i, row)?;
    }
    out.commit()
}

/// Generated models written one by one as `gen_XXXX.safetensors` into an output directory of
/// kind samples: the caller holds one model (or a chunk) at a time, so writing N models needs
/// memory for one, not N. Nothing is visible at `dir` before [`ModelWriter::commit`]; dropped
/// without it, nothing is left behind.
pub struct ModelWriter<'a> {
    out: OutputDir,
    layout: &'a Layout,
    files: Vec<PathBuf>,
}

impl<'a> ModelWriter<'a> {
    /// Check the destination (a refusal comes before any sampling) and open the staging
    /// directory.
    pub fn begin(dir: &Path, layout: &'a Layout, if_foreign: IfForeign) -> Result<Self> {
        Ok(ModelWriter { out: OutputDir::begin(dir, OutputKind::Samples, if_foreign)?, layout, files: Vec::new() })
    }

    /// Write model `index` (its D floats) as `gen_{index:04}.safetensors`.
    pub fn write(&mut self, index: usize, row: &[f32]) -> Result<()> {
        let name = format!("gen_{index:04}.safetensors");
        self.layout.save_safetensors(row, &self.out.path().join(&name))?;
        self.files.push(self.out.dest().join(name));
        Ok(())
    }

    /// Put the models in place; returns their final paths in the order written.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        self.out.commit()?;
        Ok(self.files)
    }
}
