//! `pdiff_generator`: training (autoencoder + latent DDPM, tch) and export as a bundle.
use crate::args::{nonnull, output_flags, path_arg, static_cstr};
use crate::boundary::{ffi_boundary, ffi_call};
use crate::dataset::{pdiff_dataset, warning_cstrings};
use crate::enums::{pdiff_device, pdiff_preset, pdiff_reconstruction_weighting};
use crate::handles::{Handle, HandleOut};
use crate::options::{options_arg, options_struct};
use crate::status::{pdiff_status, Failure, FfiResult};
use pdiff_core::training::TrainConfig;
use pdiff_train::Generator;
use std::ffi::{c_char, c_int, c_void, CString};

/// Progress callback of training, called on the training thread after every step.
/// `stage` is "autoencoder" or "diffusion" (a static string), `step` runs from 1 to `total`,
/// `loss` is the step's training loss. Return 0 to continue, nonzero to cancel: the training
/// call then returns `PDIFF_ERR_CANCELLED`. `user_data` is `pdiff_train_options.user_data`.
pub type pdiff_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, stage: *const c_char, step: usize, total: usize, loss: f64) -> c_int>;

/// Bit of `pdiff_train_options.explicit_fields`: `ae_steps` holds the value to use even when 0
/// (then refused: training needs at least one step).
pub const PDIFF_TRAIN_EXPLICIT_AE_STEPS: u64 = 1;
/// Bit of `pdiff_train_options.explicit_fields`: `diffusion_steps` holds the value to use even
/// when 0 (then refused: training needs at least one step).
pub const PDIFF_TRAIN_EXPLICIT_DIFFUSION_STEPS: u64 = 2;
/// Bit of `pdiff_train_options.explicit_fields`: `batch_size` holds the value to use even when
/// 0 (then refused: a batch needs at least one checkpoint).
pub const PDIFF_TRAIN_EXPLICIT_BATCH_SIZE: u64 = 4;
/// Bit of `pdiff_train_options.explicit_fields`: `ae_lr` holds the value to use even when 0
/// (then refused: a learning rate must be > 0).
pub const PDIFF_TRAIN_EXPLICIT_AE_LR: u64 = 8;
/// Bit of `pdiff_train_options.explicit_fields`: `diffusion_lr` holds the value to use even
/// when 0 (then refused: a learning rate must be > 0).
pub const PDIFF_TRAIN_EXPLICIT_DIFFUSION_LR: u64 = 16;
/// Bit of `pdiff_train_options.explicit_fields`: `latent_noise` holds the value to use even
/// when 0 (no noise on the latent while the autoencoder trains).
pub const PDIFF_TRAIN_EXPLICIT_LATENT_NOISE: u64 = 32;

/// Every `PDIFF_TRAIN_EXPLICIT_*` bit, with the field it makes explicit.
const EXPLICIT_BITS: [(u64, &str); 6] = [
    (PDIFF_TRAIN_EXPLICIT_AE_STEPS, "PDIFF_TRAIN_EXPLICIT_AE_STEPS"),
    (PDIFF_TRAIN_EXPLICIT_DIFFUSION_STEPS, "PDIFF_TRAIN_EXPLICIT_DIFFUSION_STEPS"),
    (PDIFF_TRAIN_EXPLICIT_BATCH_SIZE, "PDIFF_TRAIN_EXPLICIT_BATCH_SIZE"),
    (PDIFF_TRAIN_EXPLICIT_AE_LR, "PDIFF_TRAIN_EXPLICIT_AE_LR"),
    (PDIFF_TRAIN_EXPLICIT_DIFFUSION_LR, "PDIFF_TRAIN_EXPLICIT_DIFFUSION_LR"),
    (PDIFF_TRAIN_EXPLICIT_LATENT_NOISE, "PDIFF_TRAIN_EXPLICIT_LATENT_NOISE"),
];

/// Options of `pdiff_generator_train`. Initialize with `pdiff_train_options_default`, then
/// change fields. The numeric fields `ae_steps`, `diffusion_steps`, `batch_size`, `ae_lr`,
/// `diffusion_lr` and `latent_noise` left at 0 take the preset's value, unless their bit is set
/// in `explicit_fields`.
///
/// Layouts (the `struct_size` values accepted): up to `user_data` (the first); up to
/// `reconstruction_weighting`; up to `explicit_fields`; the whole struct.
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
    /// CUDA device index when `device` is `PDIFF_DEVICE_CUDA` (default 0).
    pub device_index: u32,
    /// Optional progress callback (NULL: none).
    pub progress: pdiff_progress_fn,
    /// Passed unchanged to `progress`; never dereferenced by the library.
    pub user_data: *mut c_void,
    /// Gaussian noise added to the latent while the autoencoder trains (0: the preset's, 0.1).
    pub latent_noise: f64,
    /// A `pdiff_reconstruction_weighting` value.
    pub reconstruction_weighting: i32,
    /// `PDIFF_TRAIN_EXPLICIT_*` bits (default 0): each says that its field holds the value to
    /// use even when it is 0, instead of the preset's. A value of 0 then meets the field's
    /// rules: a `latent_noise` of 0 trains without latent noise; 0 steps, a batch of 0 or a
    /// learning rate of 0 is `PDIFF_ERR_INVALID_ARGUMENT` naming the field. An unknown bit is
    /// `PDIFF_ERR_INVALID_ARGUMENT`.
    pub explicit_fields: u64,
    /// Threads libtorch computes with while this training runs on the CPU (the fourth layout;
    /// default 0: the cores this process may run on, from its affinity mask).
    /// The host's own libtorch thread count is restored when the call returns. At most 1024.
    /// Hosts on machines whose cores are shared should also start with `OMP_WAIT_POLICY=passive`
    /// in their environment (docs/api.md, "Threads").
    pub threads: usize,
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
            explicit_fields: 0,
            threads: 0,
        }
    }
}

options_struct!(pdiff_train_options, [latent_noise, explicit_fields, threads]);

impl pdiff_train_options {
    /// Whether the host gave field `bit` itself: nonzero, or explicit.
    fn given(&self, bit: u64, zero: bool) -> bool {
        !zero || self.explicit_fields & bit != 0
    }

    /// The training configuration for a dataset of `d` parameters per checkpoint.
    fn train_config(&self, d: usize) -> FfiResult<TrainConfig> {
        let unknown = self.explicit_fields & !EXPLICIT_BITS.iter().fold(0, |all, (bit, _)| all | bit);
        if unknown != 0 {
            let known: Vec<String> = EXPLICIT_BITS.iter().map(|(bit, name)| format!("{name} = {bit:#x}")).collect();
            return Err(Failure::invalid(format!(
                "options.explicit_fields {:#x}: unknown bits {unknown:#x} (known: {})",
                self.explicit_fields,
                known.join(", ")
            )));
        }
        let mut c = pdiff_preset::try_from(self.preset)?.config(d);
        for (bit, steps, field, name) in [
            (PDIFF_TRAIN_EXPLICIT_AE_STEPS, self.ae_steps, &mut c.ae_steps, "ae_steps"),
            (PDIFF_TRAIN_EXPLICIT_DIFFUSION_STEPS, self.diffusion_steps, &mut c.diffusion_steps, "diffusion_steps"),
        ] {
            if self.given(bit, steps == 0) {
                // The engine would run no step and export an untrained network: refused here.
                if steps == 0 {
                    return Err(Failure::invalid(format!("options.{name} is 0 (explicit): training needs at least 1 step")));
                }
                *field = steps;
            }
        }
        if self.given(PDIFF_TRAIN_EXPLICIT_BATCH_SIZE, self.batch_size == 0) {
            c.batch_size = self.batch_size;
        }
        for (bit, value, field) in [
            (PDIFF_TRAIN_EXPLICIT_AE_LR, self.ae_lr, &mut c.ae_lr),
            (PDIFF_TRAIN_EXPLICIT_DIFFUSION_LR, self.diffusion_lr, &mut c.diffusion_lr),
            (PDIFF_TRAIN_EXPLICIT_LATENT_NOISE, self.latent_noise, &mut c.latent_noise),
        ] {
            if self.given(bit, value == 0.0) {
                *field = value;
            }
        }
        c.reconstruction_weighting = pdiff_reconstruction_weighting::try_from(self.reconstruction_weighting)?.into();
        c.seed = self.seed;
        c.threads = self.threads;
        c.device = pdiff_device::try_from(self.device)?.choice(self.device_index);
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
    ffi_call!(pdiff_train_options_default, || {
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

impl Handle for pdiff_generator {}

/// Train a generator on `dataset`: the autoencoder, then the latent diffusion model. Blocks
/// the calling thread; `options->progress` is called on it after every step.
///
/// `options` may be NULL (all defaults). Returns `PDIFF_ERR_STRUCT_SIZE` when
/// `options->struct_size` is neither `sizeof(pdiff_train_options)` nor the size of one of its
/// earlier layouts, `PDIFF_ERR_INVALID_ARGUMENT` for an invalid field (named in the message),
/// `PDIFF_ERR_CANCELLED` when the callback asked to stop, `PDIFF_ERR_DIVERGED` on a non-finite
/// loss.
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
    ffi_call!(pdiff_generator_train, || {
        let out = HandleOut::new(out)?;
        let ds = unsafe { pdiff_dataset::borrow(dataset, "dataset") }?;
        let opts = unsafe { options_arg(options, "options") }?;
        let config = opts.train_config(ds.set.layout.param_count())?;
        let mut progress = |p: &pdiff_core::training::Progress| -> bool {
            match opts.progress {
                Some(cb) => unsafe { cb(opts.user_data, static_cstr(p.stage.name()), p.step, p.total, p.loss) == 0 },
                None => true,
            }
        };
        let g = Generator::train(&ds.set, &config, &mut progress)?;
        out.give(pdiff_generator::new(g));
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
    ffi_call!(pdiff_generator_export, || unsafe { export(generator, bundle_dir, 0) })
}

/// `pdiff_generator_export` with `flags`: 0, or `PDIFF_OUTPUT_FORCE` to write the bundle beside
/// files libpdiff did not write in `bundle_dir` instead of refusing. Those files are kept byte
/// for byte; a bundle file name one of them takes is still refused (`PDIFF_ERR_OUTPUT_EXISTS`).
/// An unknown flag bit is `PDIFF_ERR_INVALID_ARGUMENT`.
///
/// Ownership: `generator` and `bundle_dir` are borrowed for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_export_ex(generator: *const pdiff_generator, bundle_dir: *const c_char, flags: u32) -> pdiff_status {
    ffi_call!(pdiff_generator_export_ex, || unsafe { export(generator, bundle_dir, flags) })
}

/// The body of `pdiff_generator_export(_ex)`.
unsafe fn export(generator: *const pdiff_generator, bundle_dir: *const c_char, flags: u32) -> FfiResult {
    let g = unsafe { pdiff_generator::borrow(generator, "generator") }?;
    let dir = unsafe { path_arg(bundle_dir, "bundle_dir") }?;
    let if_foreign = output_flags(flags)?;
    g.g.export_bundle_with(&dir, if_foreign)?;
    Ok(())
}

/// Number of scalars D in one parameter vector generated by `generator` (0 when NULL).
///
/// Ownership: `generator` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_param_count(generator: *const pdiff_generator) -> usize {
    ffi_boundary!(pdiff_generator_param_count, || Ok(unsafe { pdiff_generator::borrow(generator, "generator") }?.g.layout.param_count()))
}

/// Number of health warnings of `generator` (0 when NULL): its dataset's warnings (fewer than
/// 50 checkpoints, permutation-misaligned checkpoints) and training's (an autoencoder whose
/// reconstruction error is a large fraction of the checkpoints' spread across K, so that the
/// generated models lose what distinguishes the checkpoints). The bundle records them too.
///
/// Ownership: `generator` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_warning_count(generator: *const pdiff_generator) -> usize {
    ffi_boundary!(pdiff_generator_warning_count, || Ok(unsafe { pdiff_generator::borrow(generator, "generator") }?.warnings.len()))
}

/// Warning `index` (< `pdiff_generator_warning_count`) of `generator`, or NULL when `generator`
/// is NULL or `index` is out of range.
///
/// Ownership: the string is owned by `generator` and valid until
/// `pdiff_generator_free(generator)`. Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_warning(generator: *const pdiff_generator, index: usize) -> *const c_char {
    ffi_boundary!(pdiff_generator_warning, || {
        let g = unsafe { pdiff_generator::borrow(generator, "generator") }?;
        g.warnings.get(index).map(|w| w.as_ptr()).ok_or_else(|| Failure::invalid(format!("index {index} >= warning count {}", g.warnings.len())))
    })
}

/// Release a generator. NULL is a no-op. Bundles exported from it stay valid.
///
/// Ownership: takes back ownership of `generator`; it must not be used afterwards, nor freed
/// twice.
#[no_mangle]
pub unsafe extern "C" fn pdiff_generator_free(generator: *mut pdiff_generator) {
    ffi_boundary!(pdiff_generator_free, || {
        unsafe { pdiff_generator::free(generator) };
        Ok(())
    })
}
