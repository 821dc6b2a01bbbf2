//! `pdiff_generator`: training (autoencoder + latent DDPM, tch) and export as a bundle.
use super::{boundary, call, free_handle, nonnull, options_arg, output_flags, path_arg, put_handle, static_cstr, try_ref, Failure, OptionsStruct};
use super::{dataset::warning_cstrings, pdiff_dataset, pdiff_device, pdiff_preset, pdiff_reconstruction_weighting, pdiff_status};
use pdiff_core::model::Preset;
use pdiff_core::training::{DeviceChoice, ReconstructionWeighting, TrainConfig};
use pdiff_train::Generator;
use std::ffi::{c_char, c_int, c_void, CString};

/// Progress callback of training, called on the training thread after every step.
/// `stage` is "autoencoder" or "diffusion" (a static string), `step` runs from 1 to `total`,
/// `loss` is the step's training loss. Return 0 to continue, nonzero to cancel: the training
/// call then returns `PDIFF_ERR_CANCELLED`. `user_data` is `pdiff_train_options.user_data`.
pub type pdiff_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, stage: *const c_char, step: usize, total: usize, loss: f64) -> c_int>;

/// Options of `pdiff_generator_train`. Initialize with `pdiff_train_options_default`, then
/// change fields. Numeric fields left at 0 take the preset's value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_train_options {
    /// `sizeof(pdiff_train_options)`; set by `pdiff_train_options_default`.
    pub struct_size: usize,
    /// A `pdiff_preset` value.
    pub preset: i32,
    /// Autoencoder training steps (0: the preset's, 1000 for compact).
    pub ae_steps: usize,
    /// Diffusion training steps (0: the preset's: 8000 for compact, 40000 for chunked).
    pub diffusion_steps: usize,
    /// Mini-batch size, capped at K (0: the preset's, 50).
    pub batch_size: usize,
    /// Autoencoder learning rate (0: the preset's).
    pub ae_lr: f64,
    /// Denoiser learning rate (0: the preset's).
    pub diffusion_lr: f64,
    /// Seed of initialization and mini-batch sampling.
    pub seed: u64,
    /// A `pdiff_device` value.
    pub device: i32,
    /// CUDA device index when `device` is `PDIFF_DEVICE_CUDA`.
    pub device_index: u32,
    /// Optional progress callback (NULL: none).
    pub progress: pdiff_progress_fn,
    /// Passed unchanged to `progress`; never dereferenced by the library.
    pub user_data: *mut c_void,
    /// Gaussian noise added to the latent while the autoencoder trains (0: the preset's, 0.1).
    /// This field and the next came after the struct's first layout: a host built against that
    /// older pdiff.h passes its smaller struct_size and gets the defaults.
    pub latent_noise: f64,
    /// A `pdiff_reconstruction_weighting` value.
    pub reconstruction_weighting: i32,
}

impl Default for pdiff_train_options {
    fn default() -> Self {
        pdiff_train_options {
            struct_size: std::mem::size_of::<pdiff_train_options>(),
            preset: pdiff_preset::PDIFF_PRESET_AUTO as i32,
            ae_steps: 0,
            diffusion_steps: 0,
            batch_size: 0,
            ae_lr: 0.0,
            diffusion_lr: 0.0,
            seed: 0,
            device: pdiff_device::PDIFF_DEVICE_AUTO as i32,
            device_index: 0,
            progress: None,
            user_data: std::ptr::null_mut(),
            latent_noise: 0.0,
            reconstruction_weighting: pdiff_reconstruction_weighting::PDIFF_RECONSTRUCTION_UNIFORM as i32,
        }
    }
}

impl OptionsStruct for pdiff_train_options {
    const SIZES: &'static [usize] = &[std::mem::offset_of!(pdiff_train_options, latent_noise), std::mem::size_of::<pdiff_train_options>()];
}

impl pdiff_train_options {
    /// The training configuration for a dataset of `d` parameters per checkpoint.
    fn train_config(&self, d: usize) -> Result<TrainConfig, Failure> {
        let mut c = match self.preset {
            0 => TrainConfig::new(Preset::Compact),
            1 => TrainConfig::new(Preset::Paper),
            2 => TrainConfig::new(Preset::Chunked),
            3 => TrainConfig::auto(d),
            p => return Err(Failure::invalid(format!("preset {p} (expected PDIFF_PRESET_COMPACT, _PAPER, _CHUNKED or _AUTO)"))),
        };
        if self.ae_steps != 0 {
            c.ae_steps = self.ae_steps;
        }
        if self.diffusion_steps != 0 {
            c.diffusion_steps = self.diffusion_steps;
        }
        if self.batch_size != 0 {
            c.batch_size = self.batch_size;
        }
        if self.ae_lr != 0.0 {
            c.ae_lr = self.ae_lr;
        }
        if self.diffusion_lr != 0.0 {
            c.diffusion_lr = self.diffusion_lr;
        }
        if self.latent_noise != 0.0 {
            c.latent_noise = self.latent_noise;
        }
        c.reconstruction_weighting = match self.reconstruction_weighting {
            0 => ReconstructionWeighting::Uniform,
            1 => ReconstructionWeighting::PerTensor,
            w => return Err(Failure::invalid(format!("reconstruction_weighting {w} (expected PDIFF_RECONSTRUCTION_UNIFORM or _PER_TENSOR)"))),
        };
        c.seed = self.seed;
        c.device = match self.device {
            0 => DeviceChoice::Auto,
            1 => DeviceChoice::Cpu,
            2 => DeviceChoice::Cuda(self.device_index as usize),
            d => return Err(Failure::invalid(format!("device {d} (expected PDIFF_DEVICE_AUTO, _CPU or _CUDA)"))),
        };
        c.validate()?;
        Ok(c)
    }
}

/// Fill `*options` with the defaults (preset chosen by D, automatic device, seed 0, no callback)
/// and set its `struct_size`. Returns `PDIFF_ERR_NULL_POINTER` when `options` is NULL.
///
/// Ownership: `options` is caller-owned memory, written during the call only.
#[no_mangle]
pub unsafe extern "C" fn pdiff_train_options_default(options: *mut pdiff_train_options) -> pdiff_status {
    call("pdiff_train_options_default", || {
        nonnull!(options, "options");
        unsafe { options.write(pdiff_train_options::default()) };
        Ok(())
    })
}

/// A trained generator (autoencoder + denoiser, libtorch). Opaque. Create with
/// `pdiff_generator_train`, export with `pdiff_generator_export`, release with
/// `pdiff_generator_free`. Not safe for concurrent use from several threads.
pub struct pdiff_generator {
    pub(crate) g: Generator,
    warnings: Vec<CString>,
}

impl pdiff_generator {
    fn new(g: Generator) -> Self {
        let warnings = warning_cstrings(&g.warnings);
        pdiff_generator { g, warnings }
    }
}

/// Train a generator on `dataset`: the autoencoder, then the latent diffusion model. Blocks
/// the calling thread; `options->progress` is called on it after every step.
///
/// `options` may be NULL (all defaults). Returns `PDIFF_ERR_STRUCT_SIZE` when
/// `options->struct_size` is not `sizeof(pdiff_train_options)`, `PDIFF_ERR_CANCELLED` when the
/// callback asked to stop, `PDIFF_ERR_DIVERGED` on a non-finite loss.
///
/// Ownership: `dataset` and `options` are borrowed for the duration of the call; the dataset
/// may be freed afterwards. On `PDIFF_OK`, `*out` receives a new generator owned by the
/// caller, to be released with `pdiff_generator_free`; on error `*out` is left untouched.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_train(
    dataset: *const pdiff_dataset,
    options: *const pdiff_train_options,
    out: *mut *mut pdiff_generator,
) -> pdiff_status {
    call("pdiff_generator_train", || {
        nonnull!(out, "out");
        let ds = try_ref!(dataset, "dataset");
        let opts = unsafe { options_arg(options, "options") }?;
        let config = opts.train_config(ds.set.layout.param_count())?;
        let mut progress = |p: &pdiff_core::training::Progress| -> bool {
            match opts.progress {
                Some(cb) => unsafe { cb(opts.user_data, static_cstr(p.stage.name()), p.step, p.total, p.loss) == 0 },
                None => true,
            }
        };
        let g = Generator::train(&ds.set, &config, &mut progress)?;
        put_handle(out, pdiff_generator::new(g));
        Ok(())
    })
}

/// Export `generator` as a bundle directory at `bundle_dir` (pdiff.json + decoder.onnx +
/// denoiser.onnx + weights, and a marker `.pdiff-output.json` that records them). Open it with
/// `pdiff_sampler_open`. The same as `pdiff_generator_export_ex` with no flags:
///
/// - `bundle_dir` missing: created, atomically (written and fsynced in a temporary sibling
///   directory, then renamed);
/// - `bundle_dir` holds a bundle libpdiff exported (nothing else): replaced atomically, the old
///   bundle staying in place until the new one is complete;
/// - `bundle_dir` empty: filled;
/// - anything else (a regular file, a symbolic link, a directory with files libpdiff did not
///   write, generated models): `PDIFF_ERR_OUTPUT_EXISTS`; nothing is written or removed.
///
/// Ownership: `generator` and `bundle_dir` are borrowed for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_export(generator: *const pdiff_generator, bundle_dir: *const c_char) -> pdiff_status {
    unsafe { export("pdiff_generator_export", generator, bundle_dir, 0) }
}

/// `pdiff_generator_export` with `flags`: 0, or `PDIFF_OUTPUT_FORCE` to write the bundle beside
/// files libpdiff did not write in `bundle_dir` instead of refusing. Those files are kept byte
/// for byte; a bundle file name one of them takes is still refused (`PDIFF_ERR_OUTPUT_EXISTS`).
/// An unknown flag bit is `PDIFF_ERR_INVALID_ARGUMENT`.
///
/// Ownership: `generator` and `bundle_dir` are borrowed for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_export_ex(generator: *const pdiff_generator, bundle_dir: *const c_char, flags: u32) -> pdiff_status {
    unsafe { export("pdiff_generator_export_ex", generator, bundle_dir, flags) }
}

unsafe fn export(name: &str, generator: *const pdiff_generator, bundle_dir: *const c_char, flags: u32) -> pdiff_status {
    call(name, || {
        let g = try_ref!(generator, "generator");
        let dir = unsafe { path_arg(bundle_dir, "bundle_dir") }?;
        let if_foreign = output_flags(flags)?;
        g.g.export_bundle_with(&dir, if_foreign)?;
        Ok(())
    })
}

/// Number of scalars D in one parameter vector generated by `generator` (0 when NULL).
///
/// Ownership: `generator` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_param_count(generator: *const pdiff_generator) -> usize {
    boundary("pdiff_generator_param_count", || Ok(try_ref!(generator, "generator").g.layout.param_count()))
}

/// Number of health warnings of `generator` (0 when NULL): its dataset's warnings (fewer than
/// 50 checkpoints, permutation-misaligned checkpoints) and training's (an autoencoder whose
/// reconstruction error is a large fraction of the checkpoints' spread across K, so that the
/// generated models lose what distinguishes the checkpoints). The bundle records them too.
///
/// Ownership: `generator` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_warning_count(generator: *const pdiff_generator) -> usize {
    boundary("pdiff_generator_warning_count", || Ok(try_ref!(generator, "generator").warnings.len()))
}

/// Warning `index` (< `pdiff_generator_warning_count`) of `generator`, or NULL when `generator`
/// is NULL or `index` is out of range.
///
/// Ownership: the string is owned by `generator` and valid until
/// `pdiff_generator_free(generator)`. Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_warning(generator: *const pdiff_generator, index: usize) -> *const c_char {
    boundary("pdiff_generator_warning", || {
        let g = try_ref!(generator, "generator");
        g.warnings.get(index).map(|w| w.as_ptr()).ok_or_else(|| Failure::invalid(format!("index {index} >= warning count {}", g.warnings.len())))
    })
}

/// Release a generator. NULL is a no-op. Bundles exported from it stay valid.
///
/// Ownership: takes back ownership of `generator`; it must not be used afterwards, nor freed
/// twice.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_free(generator: *mut pdiff_generator) {
    boundary("pdiff_generator_free", || {
        unsafe { free_handle(generator) };
        Ok(())
    })
}
