//! Options shared by several commands, declared for clap: typed values (`ValueEnum`, `FromStr`)
//! and comma-separated lists (`value_delimiter`), so that nothing here parses text by hand.
use clap::{Args, ValueEnum};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::model::Preset;
use pdiff_core::output::IfForeign;
use pdiff_core::runtime::{Provider, RuntimeOptions};
use pdiff_core::training::{DeviceChoice, ReconstructionWeighting, TrainConfig};
use pdiff_core::Result;
use std::path::PathBuf;

/// `--force` of the commands that write a directory. Without it, an --out that holds files
/// pdiff did not write is refused; a previous output of the same command is replaced.
#[derive(Args, Clone, Copy)]
pub struct ForceArg {
    /// When --out holds files pdiff did not write, write the output beside them instead of
    /// refusing. They are kept as they are; a name they take is still refused, and so is an
    /// --out that is a file, a symbolic link or another kind of output.
    #[arg(long)]
    pub force: bool,
}

impl ForceArg {
    pub fn policy(self) -> IfForeign {
        if self.force {
            IfForeign::Force
        } else {
            IfForeign::Refuse
        }
    }
}

/// What runs the networks when sampling.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// ONNX Runtime serving the exported bundle (the product path).
    #[value(alias = "ort")]
    Onnxruntime,
    /// In-process libtorch.
    Tch,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderArg {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
    /// CUDA, or an error.
    Cuda,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WholeLoop {
    /// On CUDA only.
    Auto,
    On,
    Off,
}

#[derive(Args, Clone)]
pub struct RuntimeArgs {
    #[arg(long, value_enum, default_value_t = Backend::Onnxruntime)]
    pub backend: Backend,
    /// ONNX Runtime execution provider.
    #[arg(long, value_enum, default_value_t = ProviderArg::Auto)]
    pub provider: ProviderArg,
    /// ONNX Runtime intra-op threads (0: its default).
    #[arg(long, default_value_t = 0, value_parser = threads)]
    pub threads: usize,
    /// Path of libonnxruntime.so (default: $PDIFF_ORT_LIB, $ORT_DYLIB_PATH, the project venv, the system loader).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// DDIM as one graph (the bundle's sampler.onnx).
    #[arg(long, value_enum, default_value_t = WholeLoop::Auto)]
    pub whole_loop: WholeLoop,
}

impl RuntimeArgs {
    /// `Some(options)` for ONNX Runtime, `None` for tch.
    pub fn options(&self) -> Option<RuntimeOptions> {
        let opts = RuntimeOptions {
            library: pdiff_tools::ort_library::resolve(self.ort_lib.as_deref()),
            provider: match self.provider {
                ProviderArg::Auto => Provider::Auto,
                ProviderArg::Cpu => Provider::Cpu,
                ProviderArg::Cuda => Provider::Cuda,
            },
            intra_threads: Some(self.threads),
            whole_loop: match self.whole_loop {
                WholeLoop::Auto => None,
                WholeLoop::On => Some(true),
                WholeLoop::Off => Some(false),
            },
            ..Default::default()
        };
        (self.backend == Backend::Onnxruntime).then_some(opts)
    }
}

/// `--preset`: a named preset, or `auto` (chosen by D).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetArg {
    /// Compact below 50,000 parameters, chunked from there.
    Auto,
    /// CPU-friendly, small D.
    Compact,
    /// Tokenized, large D.
    Chunked,
    /// The reference widths, for GPUs.
    Paper,
}

impl PresetArg {
    fn preset(self) -> Option<Preset> {
        match self {
            PresetArg::Auto => None,
            PresetArg::Compact => Some(Preset::Compact),
            PresetArg::Chunked => Some(Preset::Chunked),
            PresetArg::Paper => Some(Preset::Paper),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightingArg {
    /// Every parameter weighs the same (the paper's MSE).
    Uniform,
    /// Every tensor weighs the same, whatever its size.
    PerTensor,
}

#[derive(Args, Clone)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value_t = PresetArg::Auto)]
    pub preset: PresetArg,
    #[arg(long, value_parser = steps)]
    pub ae_steps: Option<usize>,
    #[arg(long, value_parser = steps)]
    pub diffusion_steps: Option<usize>,
    #[arg(long, value_parser = batch)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub ae_lr: Option<f64>,
    #[arg(long)]
    pub diffusion_lr: Option<f64>,
    #[arg(long)]
    pub input_noise: Option<f64>,
    #[arg(long)]
    pub latent_noise: Option<f64>,
    /// Latent noise relative to the batch's latent std instead of absolute.
    #[arg(long)]
    pub latent_noise_relative: bool,
    /// EMA decay of the denoiser's weights (e.g. 0.999); off by default.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Conditional generators: probability of dropping a training row's condition (0.1).
    #[arg(long)]
    pub condition_dropout: Option<f64>,
    /// Weight of each parameter in the autoencoder's loss.
    #[arg(long, value_enum)]
    pub reconstruction_weighting: Option<WeightingArg>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// libtorch threads while training on the CPU (0: the cores this process may run on).
    /// (`--threads` is ONNX Runtime's, for sampling.)
    #[arg(long, default_value_t = 0, value_parser = threads)]
    pub train_threads: usize,
    /// Diffusion training: timesteps (each with its own noise) per drawn latent and step (1).
    #[arg(long, value_parser = timesteps_per_row)]
    pub timesteps_per_row: Option<usize>,
}

impl TrainArgs {
    /// The configuration for D parameters (`--preset auto` chooses by D).
    pub fn config(&self, d: usize) -> Result<TrainConfig> {
        let base = match self.preset.preset() {
            Some(p) => TrainConfig::new(p),
            None => TrainConfig::auto(d),
        };
        self.config_from(base)
    }

    /// `base` (a task's own defaults, kept with `--preset auto`) with the options given on the
    /// command line.
    pub fn config_from(&self, base: TrainConfig) -> Result<TrainConfig> {
        let mut c = match self.preset.preset() {
            Some(p) if p != base.preset => TrainConfig::new(p),
            _ => base,
        };
        let set = |field: &mut usize, v: Option<usize>| *field = v.unwrap_or(*field);
        set(&mut c.ae_steps, self.ae_steps);
        set(&mut c.diffusion_steps, self.diffusion_steps);
        set(&mut c.batch_size, self.batch_size);
        let set = |field: &mut f64, v: Option<f64>| *field = v.unwrap_or(*field);
        set(&mut c.ae_lr, self.ae_lr);
        set(&mut c.diffusion_lr, self.diffusion_lr);
        set(&mut c.input_noise, self.input_noise);
        set(&mut c.latent_noise, self.latent_noise);
        set(&mut c.condition_dropout, self.condition_dropout);
        c.latent_noise_relative |= self.latent_noise_relative;
        if self.ema.is_some() {
            c.ema = self.ema;
        }
        if let Some(w) = self.reconstruction_weighting {
            c.reconstruction_weighting = match w {
                WeightingArg::Uniform => ReconstructionWeighting::Uniform,
                WeightingArg::PerTensor => ReconstructionWeighting::PerTensor,
            };
        }
        c.seed = self.seed;
        c.device = self.device;
        c.threads = self.train_threads;
        c.timesteps_per_row = self.timesteps_per_row.unwrap_or(c.timesteps_per_row);
        c.validate()?;
        Ok(c)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerName {
    /// Deterministic, --steps steps.
    Ddim,
    /// Ancestral, all T steps.
    Ddpm,
}

#[derive(Args, Clone)]
pub struct SamplerArgs {
    #[arg(long, value_enum, default_value_t = SamplerName::Ddim)]
    pub sampler: SamplerName,
    /// DDIM steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
}

impl SamplerArgs {
    pub fn kind(&self) -> SamplerKind {
        match self.sampler {
            SamplerName::Ddim => SamplerKind::Ddim { steps: self.steps as usize },
            SamplerName::Ddpm => SamplerKind::Ddpm,
        }
    }
}

/// A whole number within `lo ..= hi`, for clap: a value out of range is a usage error naming the
/// range.
fn bounded(text: &str, lo: usize, hi: usize) -> std::result::Result<usize, String> {
    let v: usize = text.trim().parse().map_err(|_| format!("'{text}' is not a whole number"))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in {lo} ..= {hi}"))
    }
}

/// Models to generate or evaluate: 1 ..= 10^9.
pub fn models(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 1, 1_000_000_000)
}

/// Training steps: 1 ..= 10^9.
pub fn steps(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 1, 1_000_000_000)
}

/// A training batch: 1 ..= 2^20 checkpoints.
pub fn batch(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 1, 1 << 20)
}

/// Threads: 0 (the library's default) ..= 1024.
pub fn threads(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 0, 1024)
}

/// Timesteps per drawn latent: 1 ..= the library's limit.
pub fn timesteps_per_row(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 1, pdiff_core::training::MAX_TIMESTEPS_PER_ROW)
}

/// Checkpoints to collect: 2 ..= the library's limit.
pub fn checkpoints(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 2, pdiff_core::limits::MAX_CHECKPOINTS)
}

/// Checkpoints to collect per task (mnist-tasks): 1 ..= the library's limit.
pub fn checkpoints_per_task(text: &str) -> std::result::Result<usize, String> {
    bounded(text, 1, pdiff_core::limits::MAX_CHECKPOINTS)
}
