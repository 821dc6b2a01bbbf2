//! `pdiff sample`: N parameter sets from a bundle into safetensors files, ONNX Runtime
//! adapters or PEFT adapter directories.
use crate::args::{ForceArg, RuntimeArgs, SamplerArgs};
use crate::progress::Progress;
use clap::{Args, ValueEnum};
use pdiff_core::adapter::NameMap;
use pdiff_core::diffusion::{ClipCount, Conditioning};
use pdiff_core::generate::{ModelFormat, ModelSource, SampleRequest, WriteOptions};
use pdiff_core::output::{self, OutputKind};
use pdiff_core::peft::PeftConfig;
use pdiff_core::runtime::Sampler;
use pdiff_core::training::DeviceChoice;
use pdiff_core::Result;
use pdiff_tools::results::LatentClipping;
use pdiff_train::Generator;
use std::path::PathBuf;

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    bundle: PathBuf,
    #[arg(short = 'n', long, default_value_t = 100, value_parser = crate::args::models)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Conditional generator: the condition, comma-separated (e.g. 0,1,1,0,1,0,0,1,0,1).
    /// Without it, a conditional generator samples with no condition.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_name = "V,V,...")]
    condition: Option<Vec<f32>>,
    /// Classifier-free guidance scale (1: the plain conditional model).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    guidance: f32,
    #[arg(long)]
    out: PathBuf,
    /// The files written: gen_XXXX.safetensors, gen_XXXX.onnx_adapter (ONNX Runtime's
    /// adapter format, with provenance.json beside them), or gen_XXXX/ PEFT adapter
    /// directories (adapter_config.json from --peft-config + adapter_model.safetensors).
    #[arg(long, value_enum, default_value_t = FormatArg::Safetensors)]
    format: FormatArg,
    /// onnx-adapter: name a tensor as the host graph's input does instead of the layout's
    /// name (LAYOUT_NAME=HOST_NAME, repeatable or comma-separated).
    #[arg(long = "adapter-name", value_delimiter = ',', value_name = "LAYOUT=HOST")]
    adapter_names: Vec<String>,
    /// peft: the adapter_config.json written into every directory (e.g. a source adapter's).
    #[arg(long = "peft-config", value_name = "FILE")]
    peft_config: Option<PathBuf>,
    #[command(flatten)]
    force: ForceArg,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    Safetensors,
    OnnxAdapter,
    Peft,
}

pub fn run(a: SampleArgs, progress: &mut Progress) -> Result<()> {
    if a.condition.is_none() && a.guidance != 1.0 {
        return Err(pdiff_core::Error::invalid("guidance", "a guidance scale needs --condition"));
    }
    let kind = a.sampler.kind();
    let mut request = SampleRequest::new(a.n).seed(a.seed).sampler(kind);
    request.condition = a.condition.as_deref().map(|values| Conditioning { values, guidance: a.guidance });
    let format = match a.format {
        FormatArg::Safetensors => ModelFormat::Safetensors,
        FormatArg::OnnxAdapter => ModelFormat::OnnxAdapter,
        FormatArg::Peft => ModelFormat::Peft,
    };
    if format != ModelFormat::OnnxAdapter && !a.adapter_names.is_empty() {
        return Err(pdiff_core::Error::invalid("adapter-name", "renames adapter parameters: it needs --format onnx-adapter"));
    }
    let peft_config = match (format, &a.peft_config) {
        (ModelFormat::Peft, Some(path)) => Some(PeftConfig::read(path)?),
        (ModelFormat::Peft, None) => {
            return Err(pdiff_core::Error::invalid("peft-config", "--format peft needs --peft-config adapter_config.json (e.g. one of the source adapters')"))
        }
        (_, Some(_)) => return Err(pdiff_core::Error::invalid("peft-config", "an adapter_config.json is written with --format peft only")),
        (_, None) => None,
    };
    let write = WriteOptions { if_foreign: a.force.policy(), format, names: NameMap::parse(&a.adapter_names)?, peft_config };
    output::check_output_dir(&a.out, OutputKind::Samples, a.force.policy())?;
    let mut on_step = |i, t| progress.update("sample", i, t, None);
    let ((files, clipped), latent_dim, backend) = match a.runtime.options() {
        Some(opts) => {
            let s = Sampler::open(&a.bundle, &opts)?;
            eprintln!("backend: {} ({})", s.backend_name(), s.backend().detail);
            (s.sample_to_dir_with(&request, &a.out, &write, &mut on_step)?, s.manifest().latent_dim, s.backend_name().to_string())
        }
        None => {
            let g = Generator::load_bundle(&a.bundle, DeviceChoice::Auto)?;
            (g.sample_to_dir_with(&request, &a.out, &write, &mut on_step)?, g.latent_dim(), "tch".to_string())
        }
    };
    progress.finish();
    warn_clipped(a.n, latent_dim, clipped);
    println!("wrote {} models to {} ({}, {})", files.len(), a.out.display(), kind.label(), backend);
    Ok(())
}

/// Warn when generated latents fall outside the training range (the decoder clips them to it):
/// such models come from where the autoencoder never saw a checkpoint.
fn warn_clipped(n: usize, latent_dim: usize, clipped: ClipCount) {
    if clipped.rows > 0 {
        let clipping = LatentClipping { generated: n, latent_dim, clipped };
        eprintln!("warning: {}: those models come from outside what the autoencoder was trained on", clipping.sentence());
    }
}
