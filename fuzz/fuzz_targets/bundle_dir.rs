//! A whole bundle directory from arbitrary bytes, end to end through the C ABI as a host uses
//! libpdiff.so (the root crate `pdiff`, serve-only): write pdiff.json, decoder.onnx and
//! denoiser.onnx (format: pdiff_fuzz::bundle_input), open them with `pdiff_sampler_open` (CPU,
//! one intra-op thread), sample n models with `pdiff_sampler_sample` into a buffer of the
//! target's, and with WRITE_FILES sample them again with `pdiff_sampler_sample_to_dir_ex`.
//!
//! Any status but PDIFF_OK is fine when `pdiff_last_error()` says why, under the failing
//! function's name. A bug: PDIFF_ERR_PANIC (a Rust panic caught at the boundary), a crash or an
//! abort (an unchecked allocation, under scripts/fuzz.sh's memory limits), ONNX Runtime becoming
//! unavailable, or a broken promise of the API (include/pdiff.h):
//! - `pdiff_sampler_open`: `*out` untouched on failure; on success the tensors of
//!   `pdiff_sampler_tensor_info` lie back to back and cover D = `pdiff_sampler_param_count`;
//! - `pdiff_sampler_sample`: on success exactly the first n x D floats of the buffer written
//!   (a guard after them stays as it was), the clip count written and sane (at most n latents,
//!   at least one value per clipped latent), the progress callback called with steps 1, 2, ...,
//!   total (DDIM: total = its steps); on failure nothing written, neither buffer nor clip count;
//! - `pdiff_sampler_sample_to_dir_ex` (flags 0, into a directory that does not exist): on
//!   success the directory holds gen_0000.safetensors ... (n files) and the output marker, each
//!   file the layout's tensors in f32 and bit for bit the models `pdiff_sampler_sample` gave; it
//!   fails where `pdiff_sampler_sample` failed, and a failure leaves nothing behind.
//!
//! Needs ONNX Runtime ($PDIFF_ORT_LIB): checked once up front.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff::*;
use pdiff_fuzz::bundle_input::{BundleInput, DDPM, FILES, WRITE_FILES};
use pdiff_fuzz::{c_error_says_runtime_unavailable, init_with_runtime, scratch_root, verbose};
use std::ffi::{c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The most memory the target gives a `pdiff_sampler_sample` buffer. The fixture's graphs give
/// D = 144; a larger D (a manifest that graphs with symbolic shapes do not contradict) is
/// sampled into a buffer that is too small, which must be refused.
const MAX_BUFFER_BYTES: usize = 64 << 20;
/// Floats after the n x D of a buffer that must stay untouched.
const GUARD: usize = 16;
/// What the buffer and the clip count hold before a call: a NaN no computation gives.
const UNWRITTEN: u32 = 0x7fc0_dead;
const UNWRITTEN_CLIP: pdiff_clip_count = pdiff_clip_count { latents: usize::MAX, values: usize::MAX };

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("a scratch path holds no NUL")
}

/// Ok for PDIFF_OK; else the status's name and `pdiff_last_error()`, which must name the
/// function and say something. PDIFF_ERR_PANIC and a vanished ONNX Runtime are bugs: panic.
fn check(function: &str, status: pdiff_status) -> Result<(), String> {
    if status == pdiff_status::PDIFF_OK {
        return Ok(());
    }
    // SAFETY: both return static or thread-local NUL-terminated strings, never NULL.
    let name = unsafe { CStr::from_ptr(pdiff_status_name(status as i32)) }.to_string_lossy().into_owned();
    let message = unsafe { CStr::from_ptr(pdiff_last_error()) }.to_string_lossy().into_owned();
    assert_ne!(status, pdiff_status::PDIFF_ERR_PANIC, "{function} panicked: {message}");
    let said = message.strip_prefix(function).and_then(|m| m.strip_prefix(": ")).unwrap_or("");
    assert!(!said.trim().is_empty(), "{function} returned {name} with last error {message:?}: it should name the function and say why");
    assert!(!(status == pdiff_status::PDIFF_ERR_RUNTIME && c_error_says_runtime_unavailable(&message)), "ONNX Runtime became unavailable: {message}");
    Err(format!("{name}: {message}"))
}

/// What the progress callback saw: steps must come 1, 2, ... with one total.
#[derive(Default)]
struct Progress {
    calls: usize,
    total: Option<usize>,
    broken: Option<String>,
}

unsafe extern "C" fn on_progress(user_data: *mut c_void, step: usize, total: usize) -> c_int {
    // SAFETY: `user_data` is the `Progress` of the call in progress (see `sample_options`).
    let p = unsafe { &mut *(user_data as *mut Progress) };
    p.calls += 1;
    if p.broken.is_none() && (step != p.calls || total == 0 || step > total || p.total.is_some_and(|t| t != total)) {
        p.broken = Some(format!("call {} of the progress callback: step {step} of {total} (total so far {:?})", p.calls, p.total));
    }
    p.total.get_or_insert(total);
    0
}

impl Progress {
    /// After a call that returned PDIFF_OK: every step seen, the last one the total.
    fn check_complete(&self, function: &str, ddim_steps: Option<usize>) {
        assert!(self.broken.is_none(), "{function}: {}", self.broken.as_deref().unwrap_or_default());
        let total = self.total.unwrap_or_else(|| panic!("{function} succeeded without calling the progress callback"));
        assert_eq!(self.calls, total, "{function}: the progress callback saw {} of {total} steps", self.calls);
        if let Some(steps) = ddim_steps {
            assert_eq!(total, steps, "{function}: DDIM with {steps} steps reported {total}");
        }
    }
}

/// The sample options of the input; `progress` and `clipped` point into the caller's frame.
fn sample_options(input: &BundleInput, progress: &mut Progress, clipped: &mut pdiff_clip_count) -> pdiff_sample_options {
    let mut o = std::mem::MaybeUninit::<pdiff_sample_options>::uninit();
    // SAFETY: a valid pointer to write the defaults to.
    check("pdiff_sample_options_default", unsafe { pdiff_sample_options_default(o.as_mut_ptr()) }).expect("the defaults");
    let mut o = unsafe { o.assume_init() };
    let kind = if input.flags & DDPM != 0 { pdiff_sampler_kind::PDIFF_SAMPLER_DDPM } else { pdiff_sampler_kind::PDIFF_SAMPLER_DDIM };
    o.sampler = kind as i32;
    o.ddim_steps = input.ddim_steps;
    o.seed = 7;
    o.progress = Some(on_progress);
    o.progress_user_data = progress as *mut Progress as *mut c_void;
    o.clipped = clipped;
    o
}

/// The open sampler, freed on every way out.
struct Sampler(*mut pdiff_sampler);

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: a sampler from pdiff_sampler_open, freed once.
        unsafe { pdiff_sampler_free(self.0) };
    }
}

/// One tensor of the layout as `pdiff_sampler_tensor_info` gives it.
struct Tensor {
    name: String,
    shape: Vec<usize>,
    offset: usize,
    numel: usize,
}

fn open(dir: &Path) -> Result<Sampler, String> {
    let mut opts = std::mem::MaybeUninit::<pdiff_sampler_options>::uninit();
    // SAFETY: a valid pointer to write the defaults to.
    check("pdiff_sampler_options_default", unsafe { pdiff_sampler_options_default(opts.as_mut_ptr()) }).expect("the defaults");
    let mut opts = unsafe { opts.assume_init() };
    opts.provider = pdiff_provider::PDIFF_PROVIDER_CPU as i32;
    opts.intra_threads = 1;
    let untouched = std::ptr::NonNull::<pdiff_sampler>::dangling().as_ptr();
    let mut out = untouched;
    let path = c_path(dir);
    // SAFETY: valid strings and options for the call; `out` is written only on success.
    let status = unsafe { pdiff_sampler_open(path.as_ptr(), &opts, &mut out) };
    if let Err(e) = check("pdiff_sampler_open", status) {
        assert_eq!(out, untouched, "pdiff_sampler_open failed but wrote *out");
        return Err(e);
    }
    assert!(!out.is_null() && out != untouched, "pdiff_sampler_open returned PDIFF_OK without a sampler");
    Ok(Sampler(out))
}

/// The layout through the C ABI; its tensors must lie back to back and cover D.
fn layout(s: &Sampler, d: usize) -> Vec<Tensor> {
    // SAFETY: an open sampler; the strings and shapes it lends stay valid while it is open
    // (they are copied here).
    let count = unsafe { pdiff_sampler_tensor_count(s.0) };
    let mut tensors = Vec::with_capacity(count);
    let mut at = 0;
    for i in 0..count {
        let (mut name, mut ndim, mut shape, mut offset) = (std::ptr::null(), 0usize, std::ptr::null(), 0usize);
        check("pdiff_sampler_tensor_info", unsafe { pdiff_sampler_tensor_info(s.0, i, &mut name, &mut ndim, &mut shape, &mut offset) })
            .unwrap_or_else(|e| panic!("tensor {i} of {count}: {e}"));
        assert!(!name.is_null(), "tensor {i}: NULL name");
        let name = unsafe { CStr::from_ptr(name) }.to_str().expect("tensor names come from JSON: UTF-8").to_string();
        let shape = if ndim == 0 {
            Vec::new()
        } else {
            assert!(!shape.is_null(), "tensor '{name}': NULL shape for {ndim} dimensions");
            unsafe { std::slice::from_raw_parts(shape, ndim) }.to_vec()
        };
        let numel = shape.iter().product::<usize>();
        assert_eq!(offset, at, "tensor '{name}' {shape:?} starts at {offset}, the tensors before it end at {at}");
        at += numel;
        tensors.push(Tensor { name, shape, offset, numel });
    }
    assert_eq!(at, d, "the tensors cover {at} of D = {d} floats");
    tensors
}

/// What `pdiff_sampler_sample` gave.
enum Sampled {
    /// n x D floats.
    Models(Vec<f32>),
    /// Its failure (nothing written).
    Failed(String),
    /// n x D is more than this target allocates: a buffer of 0 floats was refused instead.
    TooLarge(String),
}

/// `pdiff_sampler_sample` into a buffer of the target's.
fn sample(s: &Sampler, input: &BundleInput, d: usize) -> Sampled {
    let (mut progress, mut clipped) = (Progress::default(), UNWRITTEN_CLIP);
    let opts = sample_options(input, &mut progress, &mut clipped);
    let need = input.n.checked_mul(d).filter(|&need| need <= MAX_BUFFER_BYTES / 4);
    let Some(need) = need else {
        // Too large a D for this target: a buffer one model short must be refused.
        let mut small = vec![f32::from_bits(UNWRITTEN); GUARD];
        let status = unsafe { pdiff_sampler_sample(s.0, &opts, input.n, small.as_mut_ptr(), 0) };
        let e = check("pdiff_sampler_sample", status).expect_err("a buffer of 0 floats accepted");
        assert!(small.iter().all(|v| v.to_bits() == UNWRITTEN), "pdiff_sampler_sample failed but wrote the buffer");
        return Sampled::TooLarge(e);
    };
    let mut out = vec![f32::from_bits(UNWRITTEN); need + GUARD];
    // SAFETY: `out` holds need + GUARD floats; the options' pointers live through the call.
    let status = unsafe { pdiff_sampler_sample(s.0, &opts, input.n, out.as_mut_ptr(), need + GUARD) };
    let outcome = check("pdiff_sampler_sample", status);
    if let Err(e) = outcome {
        assert!(out.iter().all(|v| v.to_bits() == UNWRITTEN), "pdiff_sampler_sample failed ({e}) but wrote the buffer");
        assert_eq!(clipped, UNWRITTEN_CLIP, "pdiff_sampler_sample failed ({e}) but wrote the clip count");
        return Sampled::Failed(e);
    }
    assert!(out[need..].iter().all(|v| v.to_bits() == UNWRITTEN), "pdiff_sampler_sample wrote past n x D = {need} floats");
    check_clipped(&clipped, input.n, "pdiff_sampler_sample");
    progress.check_complete("pdiff_sampler_sample", (input.flags & DDPM == 0).then_some(input.ddim_steps));
    out.truncate(need);
    Sampled::Models(out)
}

fn check_clipped(c: &pdiff_clip_count, n: usize, function: &str) {
    assert_ne!(*c, UNWRITTEN_CLIP, "{function} succeeded without writing the clip count");
    assert!(c.latents <= n && c.values >= c.latents, "{function}: clip count {c:?} for n = {n}");
}

/// `pdiff_sampler_sample_to_dir_ex` into `bundle/generated`; on success the files must hold
/// the models `pdiff_sampler_sample` gave.
fn sample_to_dir(s: &Sampler, input: &BundleInput, bundle: &Path, tensors: &[Tensor], sampled: &Sampled) -> Result<(), String> {
    let (mut progress, mut clipped) = (Progress::default(), UNWRITTEN_CLIP);
    let opts = sample_options(input, &mut progress, &mut clipped);
    let dir = bundle.join("generated");
    let path = c_path(&dir);
    // SAFETY: valid options and path for the call.
    let status = unsafe { pdiff_sampler_sample_to_dir_ex(s.0, &opts, input.n, path.as_ptr(), 0) };
    let outcome = check("pdiff_sampler_sample_to_dir_ex", status);
    if let Err(e) = &outcome {
        assert_eq!(clipped, UNWRITTEN_CLIP, "pdiff_sampler_sample_to_dir_ex failed ({e}) but wrote the clip count");
        let mut left: Vec<String> =
            std::fs::read_dir(bundle).expect("the bundle directory").map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut files: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
        files.sort();
        assert_eq!(left, files, "pdiff_sampler_sample_to_dir_ex failed ({e}) and left something behind");
        return outcome;
    }
    let sampled = match sampled {
        Sampled::Models(models) => models,
        Sampled::Failed(e) => panic!("pdiff_sampler_sample_to_dir_ex succeeded where pdiff_sampler_sample failed: {e}"),
        Sampled::TooLarge(_) => return Ok(()),
    };
    check_clipped(&clipped, input.n, "pdiff_sampler_sample_to_dir_ex");
    progress.check_complete("pdiff_sampler_sample_to_dir_ex", None);
    let mut written: Vec<String> =
        std::fs::read_dir(&dir).expect("the output directory").map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()).collect();
    written.sort();
    let mut expected: Vec<String> = (0..input.n).map(|i| format!("gen_{i:04}.safetensors")).collect();
    expected.push(pdiff_core::output::OUTPUT_MARKER.to_string());
    expected.sort();
    assert_eq!(written, expected, "the files of pdiff_sampler_sample_to_dir_ex for n = {}", input.n);
    let d = sampled.len() / input.n;
    for (i, model) in sampled.chunks_exact(d).enumerate() {
        let file = dir.join(format!("gen_{i:04}.safetensors"));
        let bytes = std::fs::read(&file).expect("a file just written");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: not safetensors: {e}", file.display()));
        assert_eq!(st.len(), tensors.len(), "{}: {} tensors, the layout has {}", file.display(), st.len(), tensors.len());
        for t in tensors {
            let view = st.tensor(&t.name).unwrap_or_else(|e| panic!("{}: tensor '{}': {e}", file.display(), t.name));
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{}: tensor '{}'", file.display(), t.name);
            assert_eq!(view.shape(), t.shape.as_slice(), "{}: tensor '{}'", file.display(), t.name);
            let expected: Vec<u8> = model[t.offset..t.offset + t.numel].iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(view.data() == expected.as_slice(), "{}: tensor '{}' differs from pdiff_sampler_sample's model {i}", file.display(), t.name);
        }
    }
    Ok(())
}

fn run(input: &BundleInput, dir: &Path) -> Result<String, String> {
    let sampler = open(dir)?;
    // SAFETY: an open sampler.
    let d = unsafe { pdiff_sampler_param_count(sampler.0) };
    assert!(d > 0, "an open sampler with D = 0");
    let tensors = layout(&sampler, d);
    let sampled = sample(&sampler, input, d);
    if input.flags & WRITE_FILES != 0 {
        let to_dir = sample_to_dir(&sampler, input, dir, &tensors, &sampled);
        if let (Sampled::Models(_), Err(e)) = (&sampled, &to_dir) {
            panic!("pdiff_sampler_sample succeeded where pdiff_sampler_sample_to_dir_ex failed: {e}");
        }
    }
    if let Sampled::Failed(e) | Sampled::TooLarge(e) = sampled {
        return Err(e);
    }
    Ok(format!("sampled [{}, {d}] with {:?}", input.n, input.sampler()))
}

fuzz_target!(init: init_with_runtime(), |data: &[u8]| {
    let input = BundleInput::decode(data);
    let dir = tempfile::Builder::new().prefix("pdiff-fuzz-bundle").tempdir_in(scratch_root()).expect("a scratch directory");
    input.write(dir.path()).expect("writing the bundle files");
    let outcome = run(&input, dir.path());
    if verbose() {
        match outcome {
            Ok(what) => eprintln!("bundle_dir: {what}"),
            Err(e) => eprintln!("bundle_dir: error: {e}"),
        }
    }
});
