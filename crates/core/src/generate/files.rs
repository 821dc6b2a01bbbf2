//! Generated models as files in an output directory of kind samples
//! ([`crate::output::OutputDir`]): `gen_XXXX.safetensors`, or `gen_XXXX.onnx_adapter` (ONNX
//! Runtime's adapter format, [`crate::adapter`]) with `provenance.json` beside them, or
//! `gen_XXXX/` PEFT adapter directories ([`crate::peft`]).
use crate::adapter::{model_adapter, AdapterVersions, NameMap};
use crate::error::{Error, Result};
use crate::generate::Provenance;
use crate::output::{IfForeign, OutputDir, OutputKind};
use crate::params::Layout;
use crate::peft::PeftConfig;
use std::path::{Path, PathBuf};

/// The file format of generated models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelFormat {
    /// `gen_XXXX.safetensors`: the layout's tensors (f32), the provenance in `__metadata__`.
    #[default]
    Safetensors,
    /// `gen_XXXX.onnx_adapter`: ONNX Runtime's adapter format, a FLOAT parameter per tensor,
    /// the model index as its `adapter_version`; the rest of the provenance, which the format
    /// has no room for, in `provenance.json`.
    OnnxAdapter,
    /// `gen_XXXX/`: a Hugging Face PEFT adapter directory, `adapter_config.json` (the
    /// configuration given in [`WriteOptions::peft_config`]) and `adapter_model.safetensors`
    /// (the layout's tensors, the provenance in `__metadata__`).
    Peft,
}

impl ModelFormat {
    /// The name of model `index`'s file (or, for PEFT, directory).
    pub fn entry_name(self, index: usize) -> String {
        match self {
            ModelFormat::Safetensors => format!("gen_{index:04}.safetensors"),
            ModelFormat::OnnxAdapter => format!("gen_{index:04}.{}", crate::adapter::EXTENSION),
            ModelFormat::Peft => format!("gen_{index:04}"),
        }
    }
}

impl std::str::FromStr for ModelFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "safetensors" => Ok(ModelFormat::Safetensors),
            "onnx-adapter" => Ok(ModelFormat::OnnxAdapter),
            "peft" => Ok(ModelFormat::Peft),
            _ => Err(Error::invalid("format", format!("'{s}' (expected safetensors, onnx-adapter or peft)"))),
        }
    }
}

/// How generated models are written ([`super::ModelSource::sample_to_dir_with`]).
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub if_foreign: IfForeign,
    pub format: ModelFormat,
    /// Adapter parameter names where the host graph names the tensors differently
    /// (onnx-adapter only; safetensors files keep the layout's names).
    pub names: NameMap,
    /// The `adapter_config.json` of every PEFT adapter directory (peft only, and required there).
    pub peft_config: Option<PeftConfig>,
}

/// The name of provenance file written beside adapters.
pub const PROVENANCE_FILE: &str = "provenance.json";

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

/// Generated models written one by one into an output directory of kind samples: the caller
/// holds one model (or a chunk) at a time, so writing N models needs memory for one, not N.
/// Nothing is visible at `dir` before [`ModelWriter::commit`]; dropped without it, nothing is
/// left behind.
pub struct ModelWriter<'a> {
    out: OutputDir,
    layout: &'a Layout,
    options: WriteOptions,
    /// The request's provenance, its first model and the generator's condition width.
    provenance: Option<(Provenance<'a>, usize, Option<usize>)>,
    files: Vec<PathBuf>,
    /// File name and model index of each file written (for provenance.json).
    written: Vec<(String, usize)>,
}

impl<'a> ModelWriter<'a> {
    /// Check the destination (a refusal comes before any sampling) and open the staging
    /// directory; safetensors files without provenance.
    pub fn begin(dir: &Path, layout: &'a Layout, if_foreign: IfForeign) -> Result<Self> {
        Self::begin_with(dir, layout, WriteOptions { if_foreign, ..WriteOptions::default() }, None)
    }

    /// [`ModelWriter::begin`] in a format, with the request's provenance (`first`: its first
    /// model; `width`: the generator's condition width C).
    pub fn begin_with(dir: &Path, layout: &'a Layout, options: WriteOptions, provenance: Option<(Provenance<'a>, usize, Option<usize>)>) -> Result<Self> {
        options.names.check(layout)?;
        if options.format != ModelFormat::OnnxAdapter && !options.names.is_empty() {
            return Err(Error::invalid("adapter name", "renaming tensors applies to onnx-adapter output only"));
        }
        match (options.format, &options.peft_config) {
            (ModelFormat::Peft, None) => return Err(Error::invalid("peft config", "PEFT adapter directories need an adapter_config.json to write into each")),
            (ModelFormat::Peft, Some(_)) => crate::peft::check_layout(layout)?,
            (_, Some(_)) => return Err(Error::invalid("peft config", "an adapter_config.json applies to peft output only")),
            (_, None) => {}
        }
        Ok(ModelWriter {
            out: OutputDir::begin(dir, OutputKind::Samples, options.if_foreign)?,
            layout,
            options,
            provenance,
            files: Vec::new(),
            written: Vec::new(),
        })
    }

    /// Write the request's model `index` (its D floats) as [`ModelFormat::entry_name`]; its
    /// provenance names it by its index among all models of the seed (the request's first
    /// model plus `index`).
    pub fn write(&mut self, index: usize, row: &[f32]) -> Result<()> {
        let name = self.options.format.entry_name(index);
        let path = self.out.path().join(&name);
        let model = index + self.provenance.as_ref().map(|(_, first, _)| *first).unwrap_or(0);
        let safetensors = || {
            let metadata = self.provenance.as_ref().map(|(p, first, width)| p.metadata(model, *first, *width));
            self.layout.to_safetensors_with(row, metadata.as_ref())
        };
        match self.options.format {
            ModelFormat::Safetensors => crate::files::write_atomic(&path, &safetensors()?)?,
            ModelFormat::Peft => {
                // Each directory is a complete output of its own (its marker lists its two
                // files), so that a later run recognizes it as the library's and replaces it.
                let config = self.options.peft_config.as_ref().map(PeftConfig::as_bytes).unwrap_or_default();
                let weights = safetensors()?;
                crate::output::write_output_dir(&path, OutputKind::Samples, IfForeign::Refuse, |dir| {
                    crate::files::write_atomic(&dir.join(crate::peft::CONFIG_FILE), config)?;
                    crate::files::write_atomic(&dir.join(crate::peft::WEIGHTS_FILE), &weights)
                })?;
            }
            ModelFormat::OnnxAdapter => {
                let adapter_version = i32::try_from(model)
                    .map_err(|_| Error::invalid("n", format!("model index {model} does not fit the adapter format's 32-bit adapter_version")))?;
                let bytes = model_adapter(self.layout, row, &self.options.names, AdapterVersions { adapter_version, model_version: 0 })?;
                crate::files::write_atomic(&path, &bytes)?;
            }
        }
        self.files.push(self.out.dest().join(&name));
        self.written.push((name, model));
        Ok(())
    }

    /// Put the models in place; returns their final paths in the order written. Adapters get
    /// `provenance.json` beside them.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        if let (ModelFormat::OnnxAdapter, Some((p, first, width))) = (self.options.format, &self.provenance) {
            let doc = p.document(&self.written, *first, *width);
            let text = serde_json::to_vec_pretty(&doc).map_err(|e| Error::invalid("provenance", e.to_string()))?;
            crate::files::write_atomic(&self.out.path().join(PROVENANCE_FILE), &text)?;
        }
        self.out.commit()?;
        Ok(self.files)
    }
}
