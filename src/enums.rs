//! The enums of option fields. A struct holds them as plain `int32_t` (a value from C that is
//! not a variant is then an error, never undefined behaviour); `TryFrom<i32>` turns the field
//! into the enum, refusing an unknown value with a message that names the field and the known
//! values, and each enum maps to the engine's type.
//!
//! The training enums live here, not in `generator`: cbindgen repeats a module's cfg on every
//! enum variant, an item's cfg only once around the enum.
use crate::status::{Failure, FfiResult};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::runtime::Provider;
#[cfg(feature = "train")]
use pdiff_core::{
    model::Preset,
    training::{DeviceChoice, ReconstructionWeighting, TrainConfig},
};

/// `impl TryFrom<i32>` for a `#[repr(C)]` enum of the C ABI, whose values are read from the
/// `int32_t` field `$field` (named in the error), and its names: `ALL` (every variant, in the
/// order given), `name()` and `c_name()` (the variant as the header spells it). The list must
/// hold every variant: `name()`'s match does not compile otherwise.
macro_rules! c_enum {
    ($enum:ident, $field:literal, [$($variant:ident),+ $(,)?]) => {
        impl $enum {
            /// Every value, in declaration order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),+];

            /// The value's name as the header spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => stringify!($variant)),+
                }
            }

            /// [`Self::name`] as a static C string.
            pub fn c_name(self) -> &'static ::std::ffi::CStr {
                match self {
                    $($enum::$variant => {
                        const NAME: &::std::ffi::CStr = match ::std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($variant), "\0").as_bytes()) {
                            Ok(name) => name,
                            Err(_) => panic!("a variant name holds a NUL"),
                        };
                        NAME
                    }),+
                }
            }
        }

        impl TryFrom<i32> for $enum {
            type Error = $crate::status::Failure;

            /// The variant of value `value`, or `PDIFF_ERR_INVALID_ARGUMENT` naming the field and
            /// the known values.
            fn try_from(value: i32) -> Result<Self, Self::Error> {
                $enum::ALL.iter().copied().find(|v| *v as i32 == value).ok_or_else(|| {
                    let known: Vec<String> = $enum::ALL.iter().map(|v| format!("{} = {}", v.name(), *v as i32)).collect();
                    $crate::status::Failure::invalid(format!(concat!($field, " is {}: not a ", stringify!($enum), " value (known: {})"), value, known.join(", ")))
                })
            }
        }
    };
}
pub(crate) use c_enum;

/// Architecture and default hyper-parameters of a generator (`pdiff_train_options.preset`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_preset {
    /// Small networks tuned for CPUs; dense layers over the whole vector, so for D below about
    /// 50,000.
    PDIFF_PRESET_COMPACT = 0,
    /// The reference widths of the paper's code: for GPUs.
    PDIFF_PRESET_PAPER = 1,
    /// Large D: the vector cut into tokens (tensor rows) encoded by one shared network, the
    /// diffusion over principal coefficients of the token latents; grows about as sqrt(D).
    PDIFF_PRESET_CHUNKED = 2,
    /// Chosen by the dataset's D: compact below 50,000 parameters, chunked from there (the
    /// default; the bundle's manifest records the choice).
    PDIFF_PRESET_AUTO = 3,
}

#[cfg(feature = "train")]
c_enum!(pdiff_preset, "options.preset", [PDIFF_PRESET_COMPACT, PDIFF_PRESET_PAPER, PDIFF_PRESET_CHUNKED, PDIFF_PRESET_AUTO]);

#[cfg(feature = "train")]
impl pdiff_preset {
    /// The preset's training configuration for a dataset of `d` parameters per checkpoint.
    pub(crate) fn config(self, d: usize) -> TrainConfig {
        match self {
            pdiff_preset::PDIFF_PRESET_COMPACT => TrainConfig::new(Preset::Compact),
            pdiff_preset::PDIFF_PRESET_PAPER => TrainConfig::new(Preset::Paper),
            pdiff_preset::PDIFF_PRESET_CHUNKED => TrainConfig::new(Preset::Chunked),
            pdiff_preset::PDIFF_PRESET_AUTO => TrainConfig::auto(d),
        }
    }
}

/// How the autoencoder's reconstruction loss weighs the parameters
/// (`pdiff_train_options.reconstruction_weighting`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_reconstruction_weighting {
    /// Every scalar the same (the paper's MSE; the default): a tensor counts by its size.
    PDIFF_RECONSTRUCTION_UNIFORM = 0,
    /// Every tensor the same whatever its size, so that a small head next to a large first
    /// layer is not lost in the loss (the mnist-tasks recipe).
    PDIFF_RECONSTRUCTION_PER_TENSOR = 1,
}

#[cfg(feature = "train")]
c_enum!(pdiff_reconstruction_weighting, "options.reconstruction_weighting", [PDIFF_RECONSTRUCTION_UNIFORM, PDIFF_RECONSTRUCTION_PER_TENSOR]);

#[cfg(feature = "train")]
impl From<pdiff_reconstruction_weighting> for ReconstructionWeighting {
    fn from(w: pdiff_reconstruction_weighting) -> Self {
        match w {
            pdiff_reconstruction_weighting::PDIFF_RECONSTRUCTION_UNIFORM => ReconstructionWeighting::Uniform,
            pdiff_reconstruction_weighting::PDIFF_RECONSTRUCTION_PER_TENSOR => ReconstructionWeighting::PerTensor,
        }
    }
}

/// Where training runs (`pdiff_train_options.device`).
#[cfg(feature = "train")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_device {
    /// CUDA when libtorch sees a GPU, else CPU (the default).
    PDIFF_DEVICE_AUTO = 0,
    /// CPU.
    PDIFF_DEVICE_CPU = 1,
    /// CUDA device `device_index`; `PDIFF_ERR_DEVICE_UNAVAILABLE` when there is none (never a
    /// silent fallback).
    PDIFF_DEVICE_CUDA = 2,
}

#[cfg(feature = "train")]
c_enum!(pdiff_device, "options.device", [PDIFF_DEVICE_AUTO, PDIFF_DEVICE_CPU, PDIFF_DEVICE_CUDA]);

#[cfg(feature = "train")]
impl pdiff_device {
    /// The engine's device choice; `index` is the CUDA device of `PDIFF_DEVICE_CUDA`.
    pub(crate) fn choice(self, index: u32) -> DeviceChoice {
        match self {
            pdiff_device::PDIFF_DEVICE_AUTO => DeviceChoice::Auto,
            pdiff_device::PDIFF_DEVICE_CPU => DeviceChoice::Cpu,
            pdiff_device::PDIFF_DEVICE_CUDA => DeviceChoice::Cuda(index as usize),
        }
    }
}

/// ONNX Runtime execution provider (`pdiff_sampler_options.provider`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_provider {
    /// CUDA when this ONNX Runtime has it and it registers, else CPU (the default); see
    /// `pdiff_sampler_backend` for the choice made.
    PDIFF_PROVIDER_AUTO = 0,
    /// CPU.
    PDIFF_PROVIDER_CPU = 1,
    /// CUDA, or `PDIFF_ERR_DEVICE_UNAVAILABLE` (never a silent fallback).
    PDIFF_PROVIDER_CUDA = 2,
}

c_enum!(pdiff_provider, "options.provider", [PDIFF_PROVIDER_AUTO, PDIFF_PROVIDER_CPU, PDIFF_PROVIDER_CUDA]);

impl From<pdiff_provider> for Provider {
    fn from(p: pdiff_provider) -> Self {
        match p {
            pdiff_provider::PDIFF_PROVIDER_AUTO => Provider::Auto,
            pdiff_provider::PDIFF_PROVIDER_CPU => Provider::Cpu,
            pdiff_provider::PDIFF_PROVIDER_CUDA => Provider::Cuda,
        }
    }
}

/// How DDIM runs (`pdiff_sampler_options.whole_loop`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_whole_loop {
    /// As one graph on CUDA (no host round trip per step) when the bundle has sampler.onnx;
    /// step by step on the CPU (the default).
    PDIFF_WHOLE_LOOP_AUTO = 0,
    /// Always as one graph; `pdiff_sampler_open` fails with `PDIFF_ERR_BUNDLE` when the bundle
    /// has no sampler.onnx. A sampling progress callback is then called once, at the end.
    PDIFF_WHOLE_LOOP_ON = 1,
    /// Always step by step.
    PDIFF_WHOLE_LOOP_OFF = 2,
}

c_enum!(pdiff_whole_loop, "options.whole_loop", [PDIFF_WHOLE_LOOP_AUTO, PDIFF_WHOLE_LOOP_ON, PDIFF_WHOLE_LOOP_OFF]);

/// The engine's `RuntimeOptions::whole_loop`: `None` lets it decide.
impl From<pdiff_whole_loop> for Option<bool> {
    fn from(w: pdiff_whole_loop) -> Self {
        match w {
            pdiff_whole_loop::PDIFF_WHOLE_LOOP_AUTO => None,
            pdiff_whole_loop::PDIFF_WHOLE_LOOP_ON => Some(true),
            pdiff_whole_loop::PDIFF_WHOLE_LOOP_OFF => Some(false),
        }
    }
}

/// Reverse process used to generate (`pdiff_sample_options.sampler`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_sampler_kind {
    /// Ancestral DDPM over all T steps, as in the paper (slow).
    PDIFF_SAMPLER_DDPM = 0,
    /// Deterministic DDIM (eta = 0) over `ddim_steps` steps (the default).
    PDIFF_SAMPLER_DDIM = 1,
}

c_enum!(pdiff_sampler_kind, "options.sampler", [PDIFF_SAMPLER_DDPM, PDIFF_SAMPLER_DDIM]);

impl pdiff_sampler_kind {
    /// The engine's sampler; `ddim_steps` (at least 1) is used by DDIM only.
    pub(crate) fn kind(self, ddim_steps: usize) -> FfiResult<SamplerKind> {
        match self {
            pdiff_sampler_kind::PDIFF_SAMPLER_DDPM => Ok(SamplerKind::Ddpm),
            pdiff_sampler_kind::PDIFF_SAMPLER_DDIM => SamplerKind::parse("ddim", ddim_steps).map_err(Failure::from),
        }
    }
}
