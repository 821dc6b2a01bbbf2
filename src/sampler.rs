//! `pdiff_sampler`: serving an exported bundle with ONNX Runtime; generation into caller
//! buffers, into the host's own tensors, best-of-N with a host scoring callback, or to
//! safetensors files. Every generation call takes a `pdiff_sample_options`, which also carries
//! the call's progress callback and where its clip count goes.
use crate::args::{nonnull, output_flags, path_arg, static_cstr};
use crate::boundary::{ffi_boundary, ffi_call};
use crate::enums::{pdiff_provider, pdiff_sampler_kind, pdiff_whole_loop};
use crate::handles::{Handle, HandleOut};
use crate::options::{options_arg, options_struct};
use crate::status::{pdiff_status, Failure, FfiResult};
use pdiff_core::adapter::{adapter_size, NameMap};
use pdiff_core::diffusion::{ClipCount, Conditioning};
use pdiff_core::generate::{ModelSource, SampleRequest, TensorSink};
use pdiff_core::runtime::{RuntimeOptions, Sampler};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

/// Options of `pdiff_sampler_open`. Initialize with `pdiff_sampler_options_default`.
///
/// Layouts (the `struct_size` values accepted): up to `runtime_library` (the first); the
/// whole struct.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_sampler_options {
    /// `sizeof(pdiff_sampler_options)`; set by `pdiff_sampler_options_default`.
    pub struct_size: usize,
    /// A `pdiff_provider` value.
    pub provider: i32,
    /// CUDA device index for `PDIFF_PROVIDER_CUDA` / `_AUTO` (at most INT32_MAX; default 0).
    pub device_index: u32,
    /// Intra-op threads per ONNX Runtime session (0: ONNX Runtime's default).
    pub intra_threads: usize,
    /// Path of libonnxruntime.so, or NULL for the default ($PDIFF_ORT_LIB, $ORT_DYLIB_PATH,
    /// then the system loader's libonnxruntime.so). ONNX Runtime is loaded once per process:
    /// the first successful open decides which library is used. Borrowed during
    /// `pdiff_sampler_open` only.
    pub runtime_library: *const c_char,
    /// At most this many threads sample from this sampler at the same time, each with its own
    /// ONNX Runtime sessions (one copy of the graphs' weights each); more wait their turn.
    /// 0: the number of CPUs.
    pub max_sessions: usize,
    /// A `pdiff_whole_loop` value: whether DDIM runs as one graph (the bundle's sampler.onnx).
    pub whole_loop: i32,
}

impl Default for pdiff_sampler_options {
    fn default() -> Self {
        pdiff_sampler_options {
            struct_size: std::mem::size_of::<pdiff_sampler_options>(),
            provider: pdiff_provider::PDIFF_PROVIDER_AUTO as i32,
            device_index: 0,
            intra_threads: 0,
            runtime_library: std::ptr::null(),
            max_sessions: 0,
            whole_loop: pdiff_whole_loop::PDIFF_WHOLE_LOOP_AUTO as i32,
        }
    }
}

options_struct!(pdiff_sampler_options, [max_sessions]);

impl pdiff_sampler_options {
    /// The engine's runtime options.
    unsafe fn runtime(&self) -> FfiResult<RuntimeOptions> {
        let library = if self.runtime_library.is_null() { None } else { Some(unsafe { path_arg(self.runtime_library, "options.runtime_library") }?) };
        let device_id = i32::try_from(self.device_index)
            .map_err(|_| Failure::invalid(format!("options.device_index is {}: at most {} (INT32_MAX)", self.device_index, i32::MAX)))?;
        Ok(RuntimeOptions {
            library,
            provider: pdiff_provider::try_from(self.provider)?.into(),
            intra_threads: (self.intra_threads > 0).then_some(self.intra_threads),
            device_id,
            max_sessions: (self.max_sessions > 0).then_some(self.max_sessions),
            whole_loop: pdiff_whole_loop::try_from(self.whole_loop)?.into(),
        })
    }
}

/// Progress callback of a generation call (`pdiff_sample_options.progress`), called on the
/// calling thread as the call advances: `step` of `total` denoising steps are done, `step`
/// rising from 1 to `total`. `total` counts every step of the call: DDIM's `ddim_steps` (DDPM:
/// the schedule's T) times the number of chunks a large n is sampled in (one for
/// `pdiff_sampler_sample`). When DDIM runs as one graph (`pdiff_sampler_options.whole_loop`),
/// it is called once per chunk, at the chunk's end. Return 0 to continue, nonzero to cancel:
/// the call then returns `PDIFF_ERR_CANCELLED`. `user_data` is
/// `pdiff_sample_options.progress_user_data`.
pub type pdiff_sample_progress_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, step: usize, total: usize) -> c_int>;

/// How many generated latents fell outside the range the autoencoder was trained on, over a
/// whole generation call (`pdiff_sample_options.clipped`). The decoder clips such a latent to
/// the training range (the bundle's `latent.clip`), so a model whose latent was clipped comes
/// from outside the region the generator learnt; many clipped latents suggest an undertrained
/// denoiser or too few sampling steps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct pdiff_clip_count {
    /// Generated models whose latent had at least one value outside the training range.
    pub latents: usize,
    /// Latent values outside the training range, over all the call's models.
    pub values: usize,
}

impl From<ClipCount> for pdiff_clip_count {
    fn from(c: ClipCount) -> Self {
        pdiff_clip_count { latents: c.rows, values: c.values }
    }
}

/// Options of one generation call. Initialize with `pdiff_sample_options_default`.
/// The same options (seed included) and n give bit-identical output on the same machine,
/// whichever thread calls.
///
/// Layouts (the `struct_size` values accepted): up to `seed` (the first); up to `guidance`;
/// the whole struct.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_sample_options {
    /// `sizeof(pdiff_sample_options)`; set by `pdiff_sample_options_default`.
    pub struct_size: usize,
    /// A `pdiff_sampler_kind` value.
    pub sampler: i32,
    /// DDIM steps (>= 1; default 50). Ignored by DDPM.
    pub ddim_steps: usize,
    /// Seed of the initial noise (and of DDPM's noise).
    pub seed: u64,
    /// Conditional generators (`pdiff_sampler_condition_dim` > 0): the condition,
    /// `condition_len` floats: C (the same condition for every generated vector) or n x C (one
    /// per vector, row-major). NULL with `condition_len` 0: no condition (the generator's
    /// unconditional model). Must be NULL for an unconditional generator. Borrowed during the
    /// call.
    pub condition: *const f32,
    /// Number of floats at `condition`.
    pub condition_len: usize,
    /// Classifier-free guidance scale (default 1: the plain conditional model; 0: no
    /// condition; above 1: further from the unconditional model).
    pub guidance: f64,
    /// Progress callback of the call (NULL, the default: none); see `pdiff_sample_progress_fn`.
    pub progress: pdiff_sample_progress_fn,
    /// Passed unchanged to `progress`; never dereferenced by the library.
    pub progress_user_data: *mut c_void,
    /// Where the call's clip count goes (NULL, the default: not wanted): written when the call
    /// returns `PDIFF_OK`, untouched otherwise.
    pub clipped: *mut pdiff_clip_count,
}

options_struct!(pdiff_sample_options, [condition, progress]);

impl Default for pdiff_sample_options {
    fn default() -> Self {
        pdiff_sample_options {
            struct_size: std::mem::size_of::<pdiff_sample_options>(),
            sampler: pdiff_sampler_kind::PDIFF_SAMPLER_DDIM as i32,
            ddim_steps: 50,
            seed: 0,
            condition: std::ptr::null(),
            condition_len: 0,
            guidance: 1.0,
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            clipped: std::ptr::null_mut(),
        }
    }
}

impl pdiff_sample_options {
    /// The condition of the call (borrowed from the caller's buffer for the call's duration).
    unsafe fn conditioning(&self) -> FfiResult<Option<Conditioning<'_>>> {
        match (self.condition.is_null(), self.condition_len) {
            (true, 0) => {
                if self.guidance != 1.0 {
                    return Err(Failure::invalid(format!("options.guidance is {} without a condition", self.guidance)));
                }
                Ok(None)
            }
            (true, _) => Err(Failure::null(format!("options.condition is NULL but options.condition_len is {}", self.condition_len))),
            (false, 0) => Err(Failure::invalid("options.condition_len is 0 but options.condition is not NULL")),
            (false, len) => Ok(Some(Conditioning { values: unsafe { std::slice::from_raw_parts(self.condition, len) }, guidance: self.guidance as f32 })),
        }
    }

    /// The request for `n` models with these options (the condition borrowed from the caller's
    /// buffer for the call's duration).
    unsafe fn request(&self, n: usize) -> FfiResult<SampleRequest<'_>> {
        let sampler = pdiff_sampler_kind::try_from(self.sampler)?.kind(self.ddim_steps)?;
        let mut request = SampleRequest::new(n).seed(self.seed).sampler(sampler);
        request.condition = unsafe { self.conditioning() }?;
        Ok(request)
    }

    /// The engine's progress closure: the host's callback (false, to cancel, when it returns
    /// nonzero), or one that never cancels.
    fn on_step(&self) -> impl FnMut(usize, usize) -> bool {
        let (progress, user_data) = (self.progress, self.progress_user_data);
        move |step, total| match progress {
            // SAFETY: the host's callback, with the user data it gave for it.
            Some(f) => (unsafe { f(user_data, step, total) }) == 0,
            None => true,
        }
    }

    /// Write the call's clip count where the host asked for it (after the call succeeded).
    fn report(&self, clipped: ClipCount) {
        if !self.clipped.is_null() {
            // SAFETY: `clipped` points to the caller's writable pdiff_clip_count (its promise).
            unsafe { self.clipped.write(clipped.into()) };
        }
    }
}

/// Fill `*options` with the defaults (automatic provider, ONNX Runtime's thread count, the
/// default runtime library) and set its `struct_size`.
///
/// Ownership: `options` is caller-owned memory, written during the call only.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_options_default(options: *mut pdiff_sampler_options) -> pdiff_status {
    ffi_call!(pdiff_sampler_options_default, || {
        nonnull!(options, "options");
        unsafe { options.write(pdiff_sampler_options::default()) };
        Ok(())
    })
}

/// Fill `*options` with the defaults (DDIM, 50 steps, seed 0, no condition, no progress
/// callback, no clip count wanted) and set its `struct_size`.
///
/// Ownership: `options` is caller-owned memory, written during the call only.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sample_options_default(options: *mut pdiff_sample_options) -> pdiff_status {
    ffi_call!(pdiff_sample_options_default, || {
        nonnull!(options, "options");
        unsafe { options.write(pdiff_sample_options::default()) };
        Ok(())
    })
}

/// An exported generator served by ONNX Runtime. Opaque. Create with `pdiff_sampler_open`,
/// release with `pdiff_sampler_free`. Thread-safe: every function taking a
/// `const pdiff_sampler*` may be called concurrently from several threads.
pub struct pdiff_sampler {
    inner: Arc<Sampler>,
    names: Vec<CString>,
    shapes: Vec<Vec<usize>>,
    backend_detail: CString,
    condition_names: Vec<CString>,
}

impl Handle for pdiff_sampler {}

/// Open the bundle directory `bundle_dir` (written by `pdiff_generator_export` or
/// `pdiff export`): verify its manifest and file hashes, load ONNX Runtime and both graphs.
/// `options` may be NULL (all defaults). A missing or corrupt bundle gives `PDIFF_ERR_BUNDLE`.
///
/// Ownership: `bundle_dir` and `options` (with `runtime_library`) are borrowed for the duration
/// of the call; the sampler keeps no reference to them nor to the directory's files. On
/// `PDIFF_OK`, `*out` receives a new sampler owned by the caller, to be released with
/// `pdiff_sampler_free`; on error `*out` is left untouched.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_open(bundle_dir: *const c_char, options: *const pdiff_sampler_options, out: *mut *mut pdiff_sampler) -> pdiff_status {
    ffi_call!(pdiff_sampler_open, || {
        let out = HandleOut::new(out)?;
        let dir = unsafe { path_arg(bundle_dir, "bundle_dir") }?;
        let rt = unsafe { options_arg(options, "options")?.runtime() }?;
        let sampler = Sampler::open(&dir, &rt)?;
        let layout = sampler.layout();
        let names = layout
            .tensors
            .iter()
            .map(|t| CString::new(t.name.as_str()).map_err(|_| Failure::new(pdiff_status::PDIFF_ERR_BUNDLE, format!("tensor name {:?} contains NUL", t.name))))
            .collect::<FfiResult<Vec<_>>>()?;
        let shapes = layout.tensors.iter().map(|t| t.shape.clone()).collect();
        let backend_detail = CString::new(sampler.backend().detail.replace('\0', " ")).unwrap_or_default();
        let condition_names = match sampler.manifest().condition.as_ref().and_then(|c| c.names.as_ref()) {
            Some(names) => names.iter().map(|n| CString::new(n.replace('\0', " ")).unwrap_or_default()).collect(),
            None => Vec::new(),
        };
        out.give(pdiff_sampler { inner: Arc::new(sampler), names, shapes, backend_detail, condition_names });
        Ok(())
    })
}

/// The execution provider actually in use: "onnxruntime-cpu" or "onnxruntime-cuda"; NULL when
/// `sampler` is NULL.
///
/// Ownership: a static string, valid for the life of the process. Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_backend(sampler: *const pdiff_sampler) -> *const c_char {
    ffi_boundary!(pdiff_sampler_backend, || Ok(static_cstr(unsafe { pdiff_sampler::borrow(sampler, "sampler") }?.inner.backend_name())))
}

/// Why the sampler runs on its execution provider: "CPU execution provider (asked for)",
/// "CUDA execution provider, device 0 (auto)", or, when CUDA was not used in auto mode, the
/// reason (e.g. the ONNX Runtime in use has no CUDA provider, or which CUDA library is
/// missing). NULL when `sampler` is NULL.
///
/// Ownership: the string is owned by `sampler` and valid until `pdiff_sampler_free(sampler)`.
/// Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_backend_detail(sampler: *const pdiff_sampler) -> *const c_char {
    ffi_boundary!(pdiff_sampler_backend_detail, || Ok(unsafe { pdiff_sampler::borrow(sampler, "sampler") }?.backend_detail.as_ptr()))
}

/// Dimension C of the condition of a conditional generator; 0 for an unconditional one (or
/// when `sampler` is NULL).
///
/// Ownership: `sampler` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_condition_dim(sampler: *const pdiff_sampler) -> usize {
    ffi_boundary!(pdiff_sampler_condition_dim, || Ok(unsafe { pdiff_sampler::borrow(sampler, "sampler") }?.inner.condition_dim().unwrap_or(0)))
}

/// Name of condition dimension `index` (< `pdiff_sampler_condition_dim`), or NULL when the
/// bundle names none, `index` is out of range or `sampler` is NULL.
///
/// Ownership: the string is owned by `sampler` and valid until `pdiff_sampler_free(sampler)`.
/// Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_condition_name(sampler: *const pdiff_sampler, index: usize) -> *const c_char {
    ffi_boundary!(pdiff_sampler_condition_name, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        s.condition_names
            .get(index)
            .map(|n| n.as_ptr())
            .ok_or_else(|| Failure::invalid(format!("index {index}: the bundle names {} condition dimensions", s.condition_names.len())))
    })
}

/// Number of scalars D in one generated parameter vector (0 when `sampler` is NULL).
///
/// Ownership: `sampler` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_param_count(sampler: *const pdiff_sampler) -> usize {
    ffi_boundary!(pdiff_sampler_param_count, || Ok(unsafe { pdiff_sampler::borrow(sampler, "sampler") }?.inner.layout().param_count()))
}

/// Number of named tensors in one generated parameter vector (0 when `sampler` is NULL).
///
/// Ownership: `sampler` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_tensor_count(sampler: *const pdiff_sampler) -> usize {
    ffi_boundary!(pdiff_sampler_tensor_count, || Ok(unsafe { pdiff_sampler::borrow(sampler, "sampler") }?.names.len()))
}

/// Describe tensor `index` (< `pdiff_sampler_tensor_count`) of the generated vectors: its
/// name, number of dimensions, shape and offset (in floats) inside one flat vector of D floats.
/// Each output pointer may be NULL when not wanted. `PDIFF_ERR_INVALID_ARGUMENT` when `index` is
/// out of range.
///
/// Ownership: `*name` (NUL-terminated) and `*shape` (`*ndim` entries; NULL for a scalar) are
/// borrowed from the sampler and stay valid until `pdiff_sampler_free(sampler)`. Do not free
/// them.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_tensor_info(
    sampler: *const pdiff_sampler,
    index: usize,
    name: *mut *const c_char,
    ndim: *mut usize,
    shape: *mut *const usize,
    offset: *mut usize,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_tensor_info, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        let t = s.inner.layout().tensors.get(index).ok_or_else(|| Failure::invalid(format!("index {index} >= tensor count {}", s.names.len())))?;
        let dims = &s.shapes[index];
        unsafe {
            if !name.is_null() {
                *name = s.names[index].as_ptr();
            }
            if !ndim.is_null() {
                *ndim = dims.len();
            }
            if !shape.is_null() {
                *shape = if dims.is_empty() { std::ptr::null() } else { dims.as_ptr() };
            }
            if !offset.is_null() {
                *offset = t.offset;
            }
        }
        Ok(())
    })
}

fn needed(s: &pdiff_sampler, n: usize) -> FfiResult<usize> {
    if n == 0 {
        return Err(Failure::invalid("n is 0: ask for at least one sample"));
    }
    let d = s.inner.layout().param_count();
    n.checked_mul(d).ok_or_else(|| Failure::invalid(format!("n = {n} times D = {d} overflows")))
}

/// The caller's output buffer `out[0..out_len]`, of which the first `need` floats are written.
fn out_buffer<'a>(out: *mut f32, out_len: usize, need: usize) -> FfiResult<&'a mut [f32]> {
    nonnull!(out, "out");
    if out_len < need {
        return Err(Failure::new(pdiff_status::PDIFF_ERR_BUFFER_TOO_SMALL, format!("out_len is {out_len} floats, {need} are needed")));
    }
    Ok(unsafe { std::slice::from_raw_parts_mut(out, need) })
}

/// Generate `n` parameter vectors into `out`, row-major: vector i is `out[i*D .. (i+1)*D]`, in
/// the host's units and in the layout of `pdiff_sampler_tensor_info`. `options` may be NULL
/// (defaults); its `progress` is called as the call advances and its `clipped` receives the
/// call's clip count. `PDIFF_ERR_BUFFER_TOO_SMALL` when `out_len < n * D`; on any failure
/// (`PDIFF_ERR_CANCELLED` included) nothing is written.
///
/// Thread-safe: several threads may sample from one sampler at once.
///
/// Ownership: `sampler` and `options` are borrowed for the call; `out` is caller-owned memory
/// of `out_len` floats, of which the first `n * D` are written.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_sample(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    out: *mut f32,
    out_len: usize,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_sample, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        let need = needed(s, n)?;
        let buf = out_buffer(out, out_len, need)?;
        // The engine samples in full before it writes `buf`: a failure leaves it untouched.
        let clipped = s.inner.sample_into(&request, buf, &mut opts.on_step())?;
        opts.report(clipped);
        Ok(())
    })
}

/// One host buffer of `pdiff_sampler_sample_tensors`: where one tensor of the generated models
/// goes. Borrowed for the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_tensor_buffer {
    /// The tensor's name (as `pdiff_sampler_tensor_info` gives it), or NULL to name it by
    /// `index`.
    pub name: *const c_char,
    /// The tensor's index (< `pdiff_sampler_tensor_count`); used only when `name` is NULL.
    pub index: usize,
    /// Host memory of `len` floats (4-byte aligned) that receives the tensor, row-major in
    /// its shape: n x numel floats, model i's values at `data[i * numel .. (i + 1) * numel]`.
    pub data: *mut f32,
    /// Floats at `data`: exactly n x numel(tensor).
    pub len: usize,
}

/// Generate `n` models, as `pdiff_sampler_sample` with the same options would (bit for bit),
/// and write each tensor straight into the host's own buffer for it: an engine places
/// generated weights directly into its tensors, with no n x D copy in between (the library
/// holds about 4 MiB of generated parameters at a time, whatever n). `buffers[0 ..
/// buffer_count]` name each tensor once, by name or index; tensors without a buffer are
/// generated and dropped.
///
/// Every buffer is checked before any work, and the first bad one is refused with a last-error
/// message naming its tensor (or its position in `buffers`): `PDIFF_ERR_NULL_POINTER` for a
/// NULL `data` (or `buffers`); `PDIFF_ERR_INVALID_ARGUMENT` for an unknown name, an index out
/// of range, a tensor given twice, a `len` other than n x numel, a misaligned `data`,
/// buffers that overlap in memory, or `buffer_count` 0. Nothing is written then; after a later
/// failure (a cancelled or failing run) the buffers' contents are unspecified. `options`'
/// `progress` and `clipped` as in `pdiff_sampler_sample`.
///
/// Thread-safe: several threads may sample from one sampler at once (into distinct buffers).
///
/// Ownership: `sampler`, `options`, `buffers` and every `name` are borrowed for the call; each
/// `data` is caller-owned memory of `len` floats, all written on `PDIFF_OK`.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_sample_tensors(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    buffers: *const pdiff_tensor_buffer,
    buffer_count: usize,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_sample_tensors, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        needed(s, n)?;
        nonnull!(buffers, "buffers");
        if buffer_count == 0 {
            return Err(Failure::invalid("buffer_count is 0: give at least one tensor buffer"));
        }
        let layout = s.inner.layout();
        let given = unsafe { std::slice::from_raw_parts(buffers, buffer_count) };
        // Resolve and check every entry before any slice is formed over host memory.
        let mut resolved: Vec<(usize, *mut f32, usize)> = Vec::with_capacity(buffer_count);
        for (k, b) in given.iter().enumerate() {
            let index = if b.name.is_null() {
                if b.index >= layout.tensors.len() {
                    return Err(Failure::invalid(format!(
                        "buffers[{k}]: tensor index {} is out of range (the bundle has {} tensors)",
                        b.index,
                        layout.tensors.len()
                    )));
                }
                b.index
            } else {
                let name = unsafe { CStr::from_ptr(b.name) }.to_string_lossy();
                layout
                    .index_of(&name)
                    .ok_or_else(|| Failure::invalid(format!("buffers[{k}]: the bundle has no tensor '{name}' (its tensors: {})", tensor_list(layout))))?
            };
            let t = &layout.tensors[index];
            if b.data.is_null() {
                return Err(Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, format!("buffers[{k}]: data for tensor '{}' is NULL", t.name)));
            }
            if !(b.data as usize).is_multiple_of(std::mem::align_of::<f32>()) {
                return Err(Failure::invalid(format!("buffers[{k}]: data for tensor '{}' is not aligned for float ({:p})", t.name, b.data)));
            }
            let need = n.checked_mul(t.numel()).ok_or_else(|| Failure::invalid(format!("n = {n} times numel = {} overflows", t.numel())))?;
            if b.len != need {
                return Err(Failure::invalid(format!(
                    "buffers[{k}]: tensor '{}' {:?}: len is {} floats, n x numel = {n} x {} = {need} are needed",
                    t.name,
                    t.shape,
                    b.len,
                    t.numel()
                )));
            }
            if resolved.iter().any(|&(i, _, _)| i == index) {
                return Err(Failure::invalid(format!("buffers[{k}]: tensor '{}' is given twice", t.name)));
            }
            resolved.push((index, b.data, b.len));
        }
        // Two sinks over the same memory would be two &mut to it: refuse overlaps.
        let mut spans: Vec<(usize, usize, usize)> = resolved.iter().map(|&(i, p, len)| (p as usize, p as usize + len * 4, i)).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(Failure::invalid(format!(
                    "the buffers of tensors '{}' and '{}' overlap in memory",
                    layout.tensors[w[0].2].name, layout.tensors[w[1].2].name
                )));
            }
        }
        // SAFETY: each data pointer is non-NULL, aligned, holds `len` floats (the caller's
        // promise) and no two ranges overlap (checked above).
        let mut sinks: Vec<TensorSink<'_>> =
            resolved.iter().map(|&(tensor, p, len)| TensorSink { tensor, out: unsafe { std::slice::from_raw_parts_mut(p, len) } }).collect();
        let clipped = s.inner.sample_into_tensors(&request, &mut sinks, &mut opts.on_step())?;
        opts.report(clipped);
        Ok(())
    })
}

/// Generate model `model_index` of `options`' request (the model `pdiff_sampler_sample` gives
/// at row `model_index` for the same options, bit for bit) as an ONNX Runtime adapter
/// (`.onnx_adapter` format, docs/api.md "Adapters") in the host's `buffer[0..capacity]`, ready
/// for ONNX Runtime's `CreateLoraAdapterFromArray`: a FLOAT parameter per tensor, named as
/// `pdiff_sampler_tensor_info` names it, with its shape; the model index is the adapter's
/// `adapter_version`.
///
/// Size query, then fill: `*size` always receives the adapter's exact size in bytes (the same
/// for every model of this sampler). With `buffer` NULL and `capacity` 0 the call only reports
/// it (`PDIFF_OK`, nothing sampled); a `capacity` below it is `PDIFF_ERR_BUFFER_TOO_SMALL`
/// (naming both sizes) before any work, and nothing is written to `buffer`. On success the
/// first `*size` bytes of `buffer` hold the adapter. `options` as in `pdiff_sampler_sample`
/// (seed, sampler, condition for this one model, progress, clip count).
///
/// Thread-safe: several threads may sample from one sampler at once (into distinct buffers).
///
/// Ownership: `sampler` and `options` are borrowed for the call; `buffer` is caller-owned
/// memory of `capacity` bytes; `size` is a caller-owned `size_t`.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_sample_adapter(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    model_index: usize,
    buffer: *mut u8,
    capacity: usize,
    size: *mut usize,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_sample_adapter, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        nonnull!(size, "size");
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(1) }?.starting_at(model_index);
        let names = NameMap::default();
        let need = adapter_size(s.inner.layout(), &names)?;
        // SAFETY: `size` is non-NULL and points to the caller's size_t (its promise).
        unsafe { *size = need };
        if buffer.is_null() && capacity == 0 {
            return Ok(());
        }
        nonnull!(buffer, "buffer");
        if capacity < need {
            return Err(Failure::new(pdiff_status::PDIFF_ERR_BUFFER_TOO_SMALL, format!("capacity is {capacity} bytes, the adapter needs {need}")));
        }
        let (bytes, clipped) = s.inner.sample_adapter(&request, &names, &mut opts.on_step())?;
        if bytes.len() != need {
            return Err(Failure::new(pdiff_status::PDIFF_ERR_RUNTIME, format!("the adapter is {} bytes, {need} were announced", bytes.len())));
        }
        // SAFETY: `buffer` holds `capacity` >= need bytes (the caller's promise, checked size).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer, need) };
        opts.report(clipped);
        Ok(())
    })
}

/// "'a' [4, 8], 'b' [4]": the layout's tensors, for an error about a name.
fn tensor_list(layout: &pdiff_core::params::Layout) -> String {
    layout.tensors.iter().map(|t| format!("'{}' {:?}", t.name, t.shape)).collect::<Vec<_>>().join(", ")
}

/// Generated parameters held at once by `pdiff_sampler_best_of_n`: candidates are sampled and
/// scored in chunks of this size.
const BEST_OF_N_CHUNK_BYTES: usize = 4 << 20;

/// Host scoring callback of `pdiff_sampler_best_of_n`: a score for one generated parameter
/// vector `params[0..len]` (len = D; higher is better, e.g. an accuracy on training data).
/// A NaN score ranks below every other score. `params` is valid only during the call.
pub type pdiff_score_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, params: *const f32, len: usize) -> f64>;

/// Generate `n` candidates (as `pdiff_sampler_sample` with the same options would), score each
/// with `score` (called n times, in order, on the calling thread), and copy the best one (the
/// first of the highest score) into `out[0..D]`. The paper picks the best of 100.
/// `*best_index` (0-based) and `*best_score` receive its index and score; either may be NULL.
/// `PDIFF_ERR_BUFFER_TOO_SMALL` when `out_len < D`; `PDIFF_ERR_INVALID_ARGUMENT` when every
/// score is NaN. `options`' `progress` counts the steps of all n candidates and `clipped`
/// receives their clip count (all n, not only the best's).
///
/// Ownership: `sampler` and `options` are borrowed for the call; `user_data` is passed
/// unchanged to `score` and never dereferenced; the `params` pointer given to `score` is owned
/// by the library and valid only during that callback; `out` is caller-owned memory of
/// `out_len` floats, of which the first D are written.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_best_of_n(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    score: pdiff_score_fn,
    user_data: *mut c_void,
    out: *mut f32,
    out_len: usize,
    best_index: *mut usize,
    best_score: *mut f64,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_best_of_n, || {
        let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
        let score = score.ok_or_else(|| Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, "score is NULL"))?;
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        needed(s, n)?;
        let d = s.inner.layout().param_count();
        let buf = out_buffer(out, out_len, d)?;
        // Candidates are generated and scored chunk by chunk, keeping a copy of the best so
        // far: memory stays bounded whatever n is, and `out` is written only on success.
        let mut best: Option<(usize, f64)> = None;
        let mut best_params = vec![0f32; d];
        let clipped = s.inner.sample_chunks(
            &request,
            s.inner.rows_within(BEST_OF_N_CHUNK_BYTES),
            &mut |first, samples| {
                for (j, row) in samples.params.rows().into_iter().enumerate() {
                    let row = row.as_slice().expect("standard layout");
                    let v = unsafe { score(user_data, row.as_ptr(), d) };
                    if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                        best = Some((first + j, v));
                        best_params.copy_from_slice(row);
                    }
                }
                Ok(())
            },
            &mut opts.on_step(),
        )?;
        let (i, v) = best.ok_or_else(|| Failure::invalid(format!("every one of the {n} scores is NaN")))?;
        buf.copy_from_slice(&best_params);
        unsafe {
            if !best_index.is_null() {
                *best_index = i;
            }
            if !best_score.is_null() {
                *best_score = v;
            }
        }
        opts.report(clipped);
        Ok(())
    })
}

/// Generate `n` parameter vectors and write them as `dir/gen_0000.safetensors`, ... (f32, the
/// original tensor names, ready to load), with a marker `.pdiff-output.json` that records them.
/// The models are sampled and written chunk by chunk (about 16 MiB of generated parameters at a
/// time), so memory does not grow with n; they are those of `pdiff_sampler_sample`, bit for bit.
/// `options` may be NULL (defaults); its `progress` and `clipped` as in `pdiff_sampler_sample`
/// (a cancelled call writes nothing). The same as `pdiff_sampler_sample_to_dir_ex` with no
/// flags:
///
/// - `dir` missing: created, atomically (the files are written and fsynced in a temporary
///   sibling directory, which is then renamed);
/// - `dir` holds earlier output of this function (nothing else): replaced atomically, the old
///   files staying in place until the new ones are complete;
/// - `dir` empty: filled;
/// - anything else (a regular file, a symbolic link, a directory with files libpdiff did not
///   write, a bundle): `PDIFF_ERR_OUTPUT_EXISTS`, checked before sampling; nothing is written
///   or removed.
///
/// Ownership: `sampler`, `options` and `dir` are borrowed for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_sample_to_dir(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    dir: *const c_char,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_sample_to_dir, || unsafe { sample_to_dir(sampler, options, n, dir, 0) })
}

/// `pdiff_sampler_sample_to_dir` with `flags`: 0, or `PDIFF_OUTPUT_FORCE` to write the files
/// beside files libpdiff did not write in `dir` instead of refusing. Those files are kept
/// byte for byte; a `gen_XXXX.safetensors` name one of them takes is still refused
/// (`PDIFF_ERR_OUTPUT_EXISTS`), and only files this function wrote there before are replaced
/// or removed. An unknown flag bit is `PDIFF_ERR_INVALID_ARGUMENT`.
///
/// Ownership: `sampler`, `options` and `dir` are borrowed for the duration of the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_sample_to_dir_ex(
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    dir: *const c_char,
    flags: u32,
) -> pdiff_status {
    ffi_call!(pdiff_sampler_sample_to_dir_ex, || unsafe { sample_to_dir(sampler, options, n, dir, flags) })
}

/// The body of `pdiff_sampler_sample_to_dir(_ex)`.
unsafe fn sample_to_dir(sampler: *const pdiff_sampler, options: *const pdiff_sample_options, n: usize, dir: *const c_char, flags: u32) -> FfiResult {
    let s = unsafe { pdiff_sampler::borrow(sampler, "sampler") }?;
    let opts = unsafe { options_arg(options, "options") }?;
    let request = unsafe { opts.request(n) }?;
    let dir = unsafe { path_arg(dir, "dir") }?;
    let if_foreign = output_flags(flags)?;
    needed(s, n)?;
    let (_files, clipped) = s.inner.sample_to_dir(&request, &dir, if_foreign, &mut opts.on_step())?;
    opts.report(clipped);
    Ok(())
}

/// Release a sampler. NULL is a no-op. Must not race with calls still using it.
///
/// Ownership: takes back ownership of `sampler`; it, and every name/shape pointer borrowed from
/// it, must not be used afterwards, nor freed twice.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_free(sampler: *mut pdiff_sampler) {
    ffi_boundary!(pdiff_sampler_free, || {
        unsafe { pdiff_sampler::free(sampler) };
        Ok(())
    })
}

/// The handle is shared between host threads: keep it Send + Sync (checked at compile time).
#[allow(dead_code)]
fn assert_sampler_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<pdiff_sampler>();
}
