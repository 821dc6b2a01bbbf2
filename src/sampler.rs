//! `pdiff_sampler`: serving an exported bundle with ONNX Runtime; generation into caller
//! buffers, best-of-N with a host scoring callback, or to safetensors files.
use super::pdiff_status;
use super::{boundary, call, free_handle, nonnull, options_arg, output_flags, path_arg, put_handle, static_cstr, try_ref, Failure, FfiResult, OptionsStruct};
use pdiff_core::diffusion::{Conditioning, SamplerKind};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest, TensorSink};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::Arc;

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

/// Options of `pdiff_sampler_open`. Initialize with `pdiff_sampler_options_default`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pdiff_sampler_options {
    /// `sizeof(pdiff_sampler_options)`; set by `pdiff_sampler_options_default`.
    pub struct_size: usize,
    /// A `pdiff_provider` value.
    pub provider: i32,
    /// CUDA device index for `PDIFF_PROVIDER_CUDA` / `_AUTO`.
    pub device_id: i32,
    /// Intra-op threads per ONNX Runtime session (0: ONNX Runtime's default).
    pub intra_threads: usize,
    /// Path of libonnxruntime.so, or NULL for the default ($PDIFF_ORT_LIB, $ORT_DYLIB_PATH,
    /// then the system loader's libonnxruntime.so). ONNX Runtime is loaded once per process:
    /// the first successful open decides which library is used. Borrowed during
    /// `pdiff_sampler_open` only.
    pub runtime_library: *const c_char,
    /// At most this many threads sample from this sampler at the same time, each with its own
    /// ONNX Runtime sessions (one copy of the graphs' weights each); more wait their turn.
    /// 0: the number of CPUs. This field and the next came after the struct's first layout: a
    /// host built against that older pdiff.h passes its smaller struct_size and gets defaults.
    pub max_sessions: usize,
    /// A `pdiff_whole_loop` value: whether DDIM runs as one graph (the bundle's sampler.onnx).
    pub whole_loop: i32,
}

impl Default for pdiff_sampler_options {
    fn default() -> Self {
        pdiff_sampler_options {
            struct_size: std::mem::size_of::<pdiff_sampler_options>(),
            provider: pdiff_provider::PDIFF_PROVIDER_AUTO as i32,
            device_id: 0,
            intra_threads: 0,
            runtime_library: std::ptr::null(),
            max_sessions: 0,
            whole_loop: pdiff_whole_loop::PDIFF_WHOLE_LOOP_AUTO as i32,
        }
    }
}

impl OptionsStruct for pdiff_sampler_options {
    const SIZES: &'static [usize] = &[std::mem::offset_of!(pdiff_sampler_options, max_sessions), std::mem::size_of::<pdiff_sampler_options>()];
}

/// How DDIM runs (`pdiff_sampler_options.whole_loop`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum pdiff_whole_loop {
    /// As one graph on CUDA (no host round trip per step) when the bundle has sampler.onnx;
    /// step by step on the CPU (the default).
    PDIFF_WHOLE_LOOP_AUTO = 0,
    /// Always as one graph; `pdiff_sampler_open` fails with `PDIFF_ERR_BUNDLE` when the bundle
    /// has no sampler.onnx. Progress is then reported once, at the end.
    PDIFF_WHOLE_LOOP_ON = 1,
    /// Always step by step.
    PDIFF_WHOLE_LOOP_OFF = 2,
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

/// Options of one generation call. Initialize with `pdiff_sample_options_default`.
/// The same options (seed included) and n give bit-identical output on the same machine,
/// whichever thread calls.
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
    /// call. This field and the next two came after the struct's first layout: a host built
    /// against that older pdiff.h passes its smaller struct_size and gets the defaults.
    pub condition: *const f32,
    /// Number of floats at `condition`.
    pub condition_len: usize,
    /// Classifier-free guidance scale (default 1: the plain conditional model; 0: no
    /// condition; above 1: further from the unconditional model).
    pub guidance: f64,
}

impl OptionsStruct for pdiff_sample_options {
    const SIZES: &'static [usize] = &[std::mem::offset_of!(pdiff_sample_options, condition), std::mem::size_of::<pdiff_sample_options>()];
}

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
        }
    }
}

impl pdiff_sample_options {
    /// The condition of the call (borrowed from the caller's buffer for the call's duration).
    unsafe fn conditioning(&self) -> FfiResult<Option<Conditioning<'_>>> {
        match (self.condition.is_null(), self.condition_len) {
            (true, 0) => {
                if self.guidance != 1.0 {
                    return Err(Failure::invalid(format!("guidance {} without a condition", self.guidance)));
                }
                Ok(None)
            }
            (true, _) => {
                Err(Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, format!("options.condition is NULL but condition_len is {}", self.condition_len)))
            }
            (false, 0) => Err(Failure::invalid("options.condition_len is 0 but options.condition is not NULL")),
            (false, len) => Ok(Some(Conditioning { values: unsafe { std::slice::from_raw_parts(self.condition, len) }, guidance: self.guidance as f32 })),
        }
    }

    /// The request for `n` models with these options (the condition borrowed from the caller's
    /// buffer for the call's duration).
    unsafe fn request(&self, n: usize) -> FfiResult<SampleRequest<'_>> {
        let mut request = SampleRequest::new(n).seed(self.seed).sampler(self.kind()?);
        request.condition = unsafe { self.conditioning() }?;
        Ok(request)
    }

    fn kind(&self) -> FfiResult<SamplerKind> {
        match self.sampler {
            0 => Ok(SamplerKind::Ddpm),
            1 => Ok(SamplerKind::parse("ddim", self.ddim_steps)?),
            s => Err(Failure::invalid(format!("sampler {s} (expected PDIFF_SAMPLER_DDPM or PDIFF_SAMPLER_DDIM)"))),
        }
    }
}

/// Fill `*options` with the defaults (automatic provider, ONNX Runtime's thread count, the
/// default runtime library) and set its `struct_size`.
///
/// Ownership: `options` is caller-owned memory, written during the call only.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_options_default(options: *mut pdiff_sampler_options) -> pdiff_status {
    call("pdiff_sampler_options_default", || {
        nonnull!(options, "options");
        unsafe { options.write(pdiff_sampler_options::default()) };
        Ok(())
    })
}

/// Fill `*options` with the defaults (DDIM, 50 steps, seed 0) and set its `struct_size`.
///
/// Ownership: `options` is caller-owned memory, written during the call only.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sample_options_default(options: *mut pdiff_sample_options) -> pdiff_status {
    call("pdiff_sample_options_default", || {
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
    call("pdiff_sampler_open", || {
        nonnull!(out, "out");
        let dir = unsafe { path_arg(bundle_dir, "bundle_dir") }?;
        let opts = unsafe { options_arg(options, "options") }?;
        let provider = match opts.provider {
            0 => Provider::Auto,
            1 => Provider::Cpu,
            2 => Provider::Cuda,
            p => return Err(Failure::invalid(format!("provider {p} (expected PDIFF_PROVIDER_AUTO, _CPU or _CUDA)"))),
        };
        let library = if opts.runtime_library.is_null() { None } else { Some(unsafe { path_arg(opts.runtime_library, "options.runtime_library") }?) };
        let whole_loop = match opts.whole_loop {
            0 => None,
            1 => Some(true),
            2 => Some(false),
            w => return Err(Failure::invalid(format!("whole_loop {w} (expected PDIFF_WHOLE_LOOP_AUTO, _ON or _OFF)"))),
        };
        let rt = RuntimeOptions {
            library,
            provider,
            intra_threads: (opts.intra_threads > 0).then_some(opts.intra_threads),
            device_id: opts.device_id,
            max_sessions: (opts.max_sessions > 0).then_some(opts.max_sessions),
            whole_loop,
        };
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
        put_handle(out, pdiff_sampler { inner: Arc::new(sampler), names, shapes, backend_detail, condition_names });
        Ok(())
    })
}

/// The execution provider actually in use: "onnxruntime-cpu" or "onnxruntime-cuda"; NULL when
/// `sampler` is NULL.
///
/// Ownership: a static string, valid for the life of the process. Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_backend(sampler: *const pdiff_sampler) -> *const c_char {
    boundary("pdiff_sampler_backend", || Ok(static_cstr(try_ref!(sampler, "sampler").inner.backend_name())))
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
    boundary("pdiff_sampler_backend_detail", || Ok(try_ref!(sampler, "sampler").backend_detail.as_ptr()))
}

/// Dimension C of the condition of a conditional generator; 0 for an unconditional one (or
/// when `sampler` is NULL).
///
/// Ownership: `sampler` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_condition_dim(sampler: *const pdiff_sampler) -> usize {
    boundary("pdiff_sampler_condition_dim", || Ok(try_ref!(sampler, "sampler").inner.condition_dim().unwrap_or(0)))
}

/// Name of condition dimension `index` (< `pdiff_sampler_condition_dim`), or NULL when the
/// bundle names none, `index` is out of range or `sampler` is NULL.
///
/// Ownership: the string is owned by `sampler` and valid until `pdiff_sampler_free(sampler)`.
/// Do not free it.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_condition_name(sampler: *const pdiff_sampler, index: usize) -> *const c_char {
    boundary("pdiff_sampler_condition_name", || {
        let s = try_ref!(sampler, "sampler");
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
    boundary("pdiff_sampler_param_count", || Ok(try_ref!(sampler, "sampler").inner.layout().param_count()))
}

/// Number of named tensors in one generated parameter vector (0 when `sampler` is NULL).
///
/// Ownership: `sampler` is borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_tensor_count(sampler: *const pdiff_sampler) -> usize {
    boundary("pdiff_sampler_tensor_count", || Ok(try_ref!(sampler, "sampler").names.len()))
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
    call("pdiff_sampler_tensor_info", || {
        let s = try_ref!(sampler, "sampler");
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

fn out_buffer<'a>(out: *mut f32, out_len: usize, need: usize, what: &str) -> FfiResult<&'a mut [f32]> {
    nonnull!(out, "out");
    if out_len < need {
        return Err(Failure::new(pdiff_status::PDIFF_ERR_BUFFER_TOO_SMALL, format!("{what}: out_len is {out_len} floats, {need} are needed")));
    }
    Ok(unsafe { std::slice::from_raw_parts_mut(out, need) })
}

/// Generate `n` parameter vectors into `out`, row-major: vector i is `out[i*D .. (i+1)*D]`, in
/// the host's units and in the layout of `pdiff_sampler_tensor_info`. `options` may be NULL
/// (defaults). `PDIFF_ERR_BUFFER_TOO_SMALL` when `out_len < n * D` (nothing is written).
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
    call("pdiff_sampler_sample", || {
        let s = try_ref!(sampler, "sampler");
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        let need = needed(s, n)?;
        let buf = out_buffer(out, out_len, need, "pdiff_sampler_sample")?;
        s.inner.sample_into(&request, buf, &mut no_progress)?;
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
/// failure (a cancelled or failing run) the buffers' contents are unspecified.
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
    call("pdiff_sampler_sample_tensors", || {
        let s = try_ref!(sampler, "sampler");
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
        s.inner.sample_into_tensors(&request, &mut sinks, &mut no_progress)?;
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
/// score is NaN.
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
    call("pdiff_sampler_best_of_n", || {
        let s = try_ref!(sampler, "sampler");
        let score = score.ok_or_else(|| Failure::new(pdiff_status::PDIFF_ERR_NULL_POINTER, "score is NULL"))?;
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        needed(s, n)?;
        let d = s.inner.layout().param_count();
        let buf = out_buffer(out, out_len, d, "pdiff_sampler_best_of_n")?;
        // Candidates are generated and scored chunk by chunk, keeping a copy of the best so
        // far: memory stays bounded whatever n is, and `out` is written only on success.
        let mut best: Option<(usize, f64)> = None;
        let mut best_params = vec![0f32; d];
        s.inner.sample_chunks(
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
            &mut no_progress,
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
        Ok(())
    })
}

/// Generate `n` parameter vectors and write them as `dir/gen_0000.safetensors`, ... (f32, the
/// original tensor names, ready to load), with a marker `.pdiff-output.json` that records them.
/// The models are sampled and written chunk by chunk (about 16 MiB of generated parameters at a
/// time), so memory does not grow with n; they are those of `pdiff_sampler_sample`, bit for bit.
/// `options` may be NULL (defaults). The same as `pdiff_sampler_sample_to_dir_ex` with no flags:
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
    unsafe { sample_to_dir("pdiff_sampler_sample_to_dir", sampler, options, n, dir, 0) }
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
    unsafe { sample_to_dir("pdiff_sampler_sample_to_dir_ex", sampler, options, n, dir, flags) }
}

unsafe fn sample_to_dir(
    name: &str,
    sampler: *const pdiff_sampler,
    options: *const pdiff_sample_options,
    n: usize,
    dir: *const c_char,
    flags: u32,
) -> pdiff_status {
    call(name, || {
        let s = try_ref!(sampler, "sampler");
        let opts = unsafe { options_arg(options, "options") }?;
        let request = unsafe { opts.request(n) }?;
        let dir = unsafe { path_arg(dir, "dir") }?;
        let if_foreign = output_flags(flags)?;
        needed(s, n)?;
        s.inner.sample_to_dir(&request, &dir, if_foreign, &mut no_progress)?;
        Ok(())
    })
}

/// Release a sampler. NULL is a no-op. Must not race with calls still using it.
///
/// Ownership: takes back ownership of `sampler`; it, and every name/shape pointer borrowed from
/// it, must not be used afterwards, nor freed twice.
#[no_mangle]
pub unsafe extern "C" fn pdiff_sampler_free(sampler: *mut pdiff_sampler) {
    boundary("pdiff_sampler_free", || {
        unsafe { free_handle(sampler) };
        Ok(())
    })
}

/// The handle is shared between host threads: keep it Send + Sync (checked at compile time).
#[allow(dead_code)]
fn assert_sampler_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<pdiff_sampler>();
}
