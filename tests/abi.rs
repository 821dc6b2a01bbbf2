//! The C ABI's own machinery, from Rust: the panic boundary every exported function runs in,
//! the status of each error and its name, the option enums' conversions, the output flags,
//! the function name in messages, and the clip count and progress of sampling against the
//! engine's. The C ABI as a host uses it is tested by tests/c (C), bindings/cpp and
//! bindings/python.
use pdiff::*;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{ModelSource, SampleRequest};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::Error;
use pdiff_test_support::fixture;
use std::ffi::{c_int, c_void, CStr, CString};
use std::ptr::{null, null_mut};

fn last_error() -> String {
    unsafe { CStr::from_ptr(pdiff_last_error()) }.to_str().unwrap().to_string()
}

fn status_name(status: i32) -> String {
    unsafe { CStr::from_ptr(pdiff_status_name(status)) }.to_str().unwrap().to_string()
}

#[test]
fn panics_become_status_and_message() {
    let s = call("pdiff_test", || panic!("boom"));
    assert_eq!(s, pdiff_status::PDIFF_ERR_PANIC);
    let msg = last_error();
    assert!(msg.contains("pdiff_test") && msg.contains("boom"), "{msg}");
}

#[test]
fn errors_map_to_statuses() {
    let s = call("pdiff_test", || Err(Error::Cancelled.into()));
    assert_eq!(s, pdiff_status::PDIFF_ERR_CANCELLED);
    let s = call("pdiff_test", || Err(Error::bundle("/x", "gone").into()));
    assert_eq!(s, pdiff_status::PDIFF_ERR_BUNDLE);
    let s = call("pdiff_test", || Err(Error::OutputExists { path: "/x".into(), reason: "is a regular file".into(), force_would: None }.into()));
    assert_eq!(s, pdiff_status::PDIFF_ERR_OUTPUT_EXISTS);
    assert_eq!(call("pdiff_test", || Ok(())), pdiff_status::PDIFF_OK);
    let msg = last_error();
    assert!(msg.contains("is a regular file"), "a success keeps the last error: {msg}");
}

#[test]
fn every_status_has_its_header_name() {
    // The values are 0, 1, 2, ... in order, and each name is the variant's (as cbindgen writes
    // it into the header).
    assert_eq!(pdiff_status::ALL.len(), 16);
    for (i, s) in pdiff_status::ALL.iter().enumerate() {
        assert_eq!(*s as i32, i as i32);
        assert_eq!(status_name(*s as i32), format!("{s:?}"));
        assert_eq!(pdiff_status::try_from(i as i32).unwrap(), *s);
    }
    assert_eq!(status_name(pdiff_status::PDIFF_ERR_BUNDLE as i32), "PDIFF_ERR_BUNDLE");
    for unknown in [16, 99, -1, i32::MIN, i32::MAX] {
        assert_eq!(status_name(unknown), "PDIFF_STATUS_UNKNOWN");
        assert_eq!(pdiff_status::try_from(unknown).unwrap_err().status, pdiff_status::PDIFF_ERR_INVALID_ARGUMENT);
    }
    assert_eq!(PDIFF_STATUS_UNKNOWN_NAME.to_str().unwrap(), "PDIFF_STATUS_UNKNOWN");
}

/// `TryFrom<i32>` of an option enum: every variant from its value (`int`), anything else
/// refused with the field and the known values named.
fn check_enum<E>(all: &[E], int: fn(E) -> i32, field: &str, outside: &[i32])
where
    E: Copy + PartialEq + std::fmt::Debug + TryFrom<i32, Error = Failure>,
{
    for &v in all {
        assert_eq!(E::try_from(int(v)).unwrap(), v);
    }
    for &bad in outside {
        let e = E::try_from(bad).unwrap_err();
        assert_eq!(e.status, pdiff_status::PDIFF_ERR_INVALID_ARGUMENT);
        assert!(e.message.starts_with(&format!("{field} is {bad}: not a ")), "{}", e.message);
        for &v in all {
            assert!(e.message.contains(&format!("{v:?} = {}", int(v))), "{} lacks {v:?}", e.message);
        }
    }
}

#[test]
fn option_enums_convert_from_their_int32_fields() {
    check_enum(pdiff_provider::ALL, |e| e as i32, "options.provider", &[3, -1, 42]);
    check_enum(pdiff_whole_loop::ALL, |e| e as i32, "options.whole_loop", &[3, 7, i32::MIN]);
    check_enum(pdiff_sampler_kind::ALL, |e| e as i32, "options.sampler", &[2, -1]);
    #[cfg(feature = "train")]
    {
        check_enum(pdiff_preset::ALL, |e| e as i32, "options.preset", &[4, 7, -3]);
        check_enum(pdiff_reconstruction_weighting::ALL, |e| e as i32, "options.reconstruction_weighting", &[2, i32::MAX]);
        check_enum(pdiff_device::ALL, |e| e as i32, "options.device", &[3, -1]);
    }
    let e = pdiff_provider::try_from(42).unwrap_err();
    assert_eq!(
        e.message,
        "options.provider is 42: not a pdiff_provider value (known: PDIFF_PROVIDER_AUTO = 0, PDIFF_PROVIDER_CPU = 1, PDIFF_PROVIDER_CUDA = 2)"
    );
}

#[test]
fn output_flags_know_force_and_refuse_unknown_bits() {
    assert_eq!(output_flags(0).unwrap(), pdiff_core::output::IfForeign::Refuse);
    assert_eq!(output_flags(PDIFF_OUTPUT_FORCE).unwrap(), pdiff_core::output::IfForeign::Force);
    let e = output_flags(PDIFF_OUTPUT_FORCE | 4).unwrap_err();
    assert_eq!(e.status, pdiff_status::PDIFF_ERR_INVALID_ARGUMENT);
    assert!(e.message.contains("0x5"), "{}", e.message);
}

/// `$call` fails with `$status` and a last error that is "`$name`: `$rest`", the function's
/// name once: every exported function reports under its own name.
macro_rules! fails_as {
    ($name:ident, $call:expr, $status:expr, $rest:expr) => {{
        let _ = unsafe { $call };
        let msg = last_error();
        assert_eq!(msg, format!("{}: {}", stringify!($name), $rest), "message of {}", stringify!($name));
        assert_eq!(msg.matches("pdiff_").count(), 1, "the function name once: {msg}");
        let _ = $status;
    }};
}

/// A status-returning call: also its status.
macro_rules! status_fails_as {
    ($name:ident, $call:expr, $status:expr, $rest:expr) => {{
        let s = unsafe { $call };
        assert_eq!(s, $status, "status of {}", stringify!($name));
        fails_as!($name, $call, $status, $rest);
    }};
}

#[test]
fn every_function_reports_under_its_own_name_once() {
    use pdiff_status::*;
    let mut out = [0f32; 4];
    let dir = CString::new("/nonexistent/pdiff-abi-test").unwrap();
    status_fails_as!(pdiff_sampler_options_default, pdiff_sampler_options_default(null_mut()), PDIFF_ERR_NULL_POINTER, "options is NULL");
    status_fails_as!(pdiff_sample_options_default, pdiff_sample_options_default(null_mut()), PDIFF_ERR_NULL_POINTER, "options is NULL");
    status_fails_as!(pdiff_sampler_open, pdiff_sampler_open(dir.as_ptr(), null(), null_mut()), PDIFF_ERR_NULL_POINTER, "out is NULL");
    let mut s: *mut pdiff_sampler = null_mut();
    status_fails_as!(pdiff_sampler_open, pdiff_sampler_open(null(), null(), &mut s), PDIFF_ERR_NULL_POINTER, "bundle_dir is NULL");
    fails_as!(pdiff_sampler_backend, pdiff_sampler_backend(null()), (), "sampler is NULL");
    fails_as!(pdiff_sampler_backend_detail, pdiff_sampler_backend_detail(null()), (), "sampler is NULL");
    fails_as!(pdiff_sampler_condition_dim, pdiff_sampler_condition_dim(null()), (), "sampler is NULL");
    fails_as!(pdiff_sampler_condition_name, pdiff_sampler_condition_name(null(), 0), (), "sampler is NULL");
    fails_as!(pdiff_sampler_param_count, pdiff_sampler_param_count(null()), (), "sampler is NULL");
    fails_as!(pdiff_sampler_tensor_count, pdiff_sampler_tensor_count(null()), (), "sampler is NULL");
    status_fails_as!(
        pdiff_sampler_tensor_info,
        pdiff_sampler_tensor_info(null(), 0, null_mut(), null_mut(), null_mut(), null_mut()),
        PDIFF_ERR_NULL_POINTER,
        "sampler is NULL"
    );
    status_fails_as!(pdiff_sampler_sample, pdiff_sampler_sample(null(), null(), 1, out.as_mut_ptr(), 4), PDIFF_ERR_NULL_POINTER, "sampler is NULL");
    status_fails_as!(pdiff_sampler_sample_tensors, pdiff_sampler_sample_tensors(null(), null(), 1, null(), 0), PDIFF_ERR_NULL_POINTER, "sampler is NULL");
    status_fails_as!(
        pdiff_sampler_sample_adapter,
        pdiff_sampler_sample_adapter(null(), null(), 0, null_mut(), 0, null_mut()),
        PDIFF_ERR_NULL_POINTER,
        "sampler is NULL"
    );
    status_fails_as!(
        pdiff_sampler_best_of_n,
        pdiff_sampler_best_of_n(null(), null(), 1, None, null_mut(), out.as_mut_ptr(), 4, null_mut(), null_mut()),
        PDIFF_ERR_NULL_POINTER,
        "sampler is NULL"
    );
    status_fails_as!(pdiff_sampler_sample_to_dir, pdiff_sampler_sample_to_dir(null(), null(), 1, dir.as_ptr()), PDIFF_ERR_NULL_POINTER, "sampler is NULL");
    status_fails_as!(
        pdiff_sampler_sample_to_dir_ex,
        pdiff_sampler_sample_to_dir_ex(null(), null(), 1, dir.as_ptr(), 0),
        PDIFF_ERR_NULL_POINTER,
        "sampler is NULL"
    );
    #[cfg(feature = "train")]
    {
        let mut ds: *mut pdiff_dataset = null_mut();
        let mut g: *mut pdiff_generator = null_mut();
        status_fails_as!(pdiff_dataset_load_dir, pdiff_dataset_load_dir(null(), null(), 0, &mut ds), PDIFF_ERR_NULL_POINTER, "dir is NULL");
        status_fails_as!(pdiff_dataset_from_memory, pdiff_dataset_from_memory(null(), 1, null(), 2, &mut ds), PDIFF_ERR_NULL_POINTER, "tensors is NULL");
        status_fails_as!(
            pdiff_dataset_load_dir_conditional,
            pdiff_dataset_load_dir_conditional(dir.as_ptr(), null(), 0, null(), &mut ds),
            PDIFF_ERR_NULL_POINTER,
            "conditions_file is NULL"
        );
        status_fails_as!(
            pdiff_dataset_from_memory_conditional,
            pdiff_dataset_from_memory_conditional(null(), 1, null(), 2, null(), 1, &mut ds),
            PDIFF_ERR_NULL_POINTER,
            "conditions is NULL"
        );
        fails_as!(pdiff_dataset_condition_dim, pdiff_dataset_condition_dim(null()), (), "dataset is NULL");
        fails_as!(pdiff_dataset_k, pdiff_dataset_k(null()), (), "dataset is NULL");
        fails_as!(pdiff_dataset_param_count, pdiff_dataset_param_count(null()), (), "dataset is NULL");
        fails_as!(pdiff_dataset_warning_count, pdiff_dataset_warning_count(null()), (), "dataset is NULL");
        fails_as!(pdiff_dataset_warning, pdiff_dataset_warning(null(), 0), (), "dataset is NULL");
        status_fails_as!(pdiff_train_options_default, pdiff_train_options_default(null_mut()), PDIFF_ERR_NULL_POINTER, "options is NULL");
        status_fails_as!(pdiff_generator_train, pdiff_generator_train(null(), null(), &mut g), PDIFF_ERR_NULL_POINTER, "dataset is NULL");
        status_fails_as!(pdiff_generator_export, pdiff_generator_export(null(), dir.as_ptr()), PDIFF_ERR_NULL_POINTER, "generator is NULL");
        status_fails_as!(pdiff_generator_export_ex, pdiff_generator_export_ex(null(), dir.as_ptr(), 0), PDIFF_ERR_NULL_POINTER, "generator is NULL");
        fails_as!(pdiff_generator_param_count, pdiff_generator_param_count(null()), (), "generator is NULL");
        fails_as!(pdiff_generator_warning_count, pdiff_generator_warning_count(null()), (), "generator is NULL");
        fails_as!(pdiff_generator_warning, pdiff_generator_warning(null(), 0), (), "generator is NULL");
        assert!(ds.is_null() && g.is_null());
    }
    assert!(s.is_null());
}

/// The options of the checks below: CPU, one thread.
fn cpu_sampler() -> *mut pdiff_sampler {
    let mut o =
        pdiff_sampler_options { struct_size: 0, provider: 0, device_index: 0, intra_threads: 0, runtime_library: null(), max_sessions: 0, whole_loop: 0 };
    assert_eq!(unsafe { pdiff_sampler_options_default(&mut o) }, pdiff_status::PDIFF_OK);
    o.provider = pdiff_provider::PDIFF_PROVIDER_CPU as i32;
    o.intra_threads = 1;
    let dir = CString::new(fixture().to_str().unwrap()).unwrap();
    let mut s = null_mut();
    assert_eq!(unsafe { pdiff_sampler_open(dir.as_ptr(), &o, &mut s) }, pdiff_status::PDIFF_OK, "{}", last_error());
    s
}

fn sample_options(seed: u64, steps: usize) -> pdiff_sample_options {
    let mut o = std::mem::MaybeUninit::<pdiff_sample_options>::uninit();
    assert_eq!(unsafe { pdiff_sample_options_default(o.as_mut_ptr()) }, pdiff_status::PDIFF_OK);
    let mut o = unsafe { o.assume_init() };
    o.seed = seed;
    o.ddim_steps = steps;
    o
}

unsafe extern "C" fn record_steps(user_data: *mut c_void, step: usize, total: usize) -> c_int {
    let steps = unsafe { &mut *(user_data as *mut Vec<(usize, usize)>) };
    steps.push((step, total));
    0
}

#[test]
fn sampling_reports_the_engines_clip_count_and_progress() {
    let s = cpu_sampler();
    let engine = Sampler::open(&fixture(), &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    let d = engine.layout().param_count();
    // DDIM with 2 steps leaves the fixture's latents far enough out that some are clipped.
    let (n, seed, steps) = (64, 5, 2);
    let request = SampleRequest::new(n).seed(seed).sampler(SamplerKind::Ddim { steps });
    let expected = engine.sample(&request, &mut |_, _| true).unwrap();
    assert!(expected.clipped.rows > 0, "the check needs clipped latents: {:?}", expected.clipped);

    let mut o = sample_options(seed, steps);
    let mut clipped = pdiff_clip_count { latents: 99, values: 99 };
    let mut seen: Vec<(usize, usize)> = Vec::new();
    o.clipped = &mut clipped;
    o.progress = Some(record_steps);
    o.progress_user_data = &mut seen as *mut _ as *mut c_void;
    let mut out = vec![0f32; n * d];
    assert_eq!(unsafe { pdiff_sampler_sample(s, &o, n, out.as_mut_ptr(), out.len()) }, pdiff_status::PDIFF_OK, "{}", last_error());
    assert_eq!(out.as_slice(), expected.params.as_slice().unwrap());
    assert_eq!((clipped.latents, clipped.values), (expected.clipped.rows, expected.clipped.values));
    assert_eq!(seen, vec![(1, steps), (2, steps)]);
    // A buffer too small: the message names the function once, then the buffer.
    let st = unsafe { pdiff_sampler_sample(s, &o, n, out.as_mut_ptr(), 3) };
    assert_eq!(st, pdiff_status::PDIFF_ERR_BUFFER_TOO_SMALL);
    assert_eq!(last_error(), format!("pdiff_sampler_sample: out_len is 3 floats, {} are needed", n * d));

    // Best of n: the clip count of all n candidates.
    unsafe extern "C" fn zero(_: *mut c_void, _: *const f32, _: usize) -> f64 {
        0.0
    }
    clipped = pdiff_clip_count::default();
    seen.clear();
    let mut best = vec![0f32; d];
    let st = unsafe { pdiff_sampler_best_of_n(s, &o, n, Some(zero), null_mut(), best.as_mut_ptr(), d, null_mut(), null_mut()) };
    assert_eq!(st, pdiff_status::PDIFF_OK, "{}", last_error());
    assert_eq!((clipped.latents, clipped.values), (expected.clipped.rows, expected.clipped.values));
    assert_eq!(seen.last(), Some(&(steps, steps)));
    let st = unsafe { pdiff_sampler_best_of_n(s, &o, n, Some(zero), null_mut(), best.as_mut_ptr(), 1, null_mut(), null_mut()) };
    assert_eq!(st, pdiff_status::PDIFF_ERR_BUFFER_TOO_SMALL);
    assert_eq!(last_error(), format!("pdiff_sampler_best_of_n: out_len is 1 floats, {d} are needed"));

    // A host built against an earlier layout: no callback, no clip count written.
    let mut older = o;
    older.struct_size = std::mem::offset_of!(pdiff_sample_options, progress);
    clipped = pdiff_clip_count { latents: 7, values: 7 };
    seen.clear();
    assert_eq!(unsafe { pdiff_sampler_sample(s, &older, n, out.as_mut_ptr(), out.len()) }, pdiff_status::PDIFF_OK);
    assert_eq!((clipped.latents, clipped.values, seen.len()), (7, 7, 0));
    unsafe { pdiff_sampler_free(s) };
}
