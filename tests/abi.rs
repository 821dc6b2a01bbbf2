//! The C ABI's own machinery, from Rust: the panic boundary every exported function runs in,
//! the status of each error, the output flags. The C ABI as a host uses it is tested by
//! tests/c (C), bindings/cpp and bindings/python.
use pdiff::{call, output_flags, pdiff_last_error, pdiff_status, PDIFF_OUTPUT_FORCE};
use pdiff_core::Error;
use std::ffi::CStr;

#[test]
fn panics_become_status_and_message() {
    let s = call("pdiff_test", || panic!("boom"));
    assert_eq!(s, pdiff_status::PDIFF_ERR_PANIC);
    let msg = unsafe { CStr::from_ptr(pdiff_last_error()) }.to_str().unwrap().to_string();
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
    let msg = unsafe { CStr::from_ptr(pdiff_last_error()) }.to_str().unwrap().to_string();
    assert!(msg.contains("is a regular file"), "a success keeps the last error: {msg}");
}

#[test]
fn output_flags_know_force_and_refuse_unknown_bits() {
    assert_eq!(output_flags(0).unwrap(), pdiff_core::output::IfForeign::Refuse);
    assert_eq!(output_flags(PDIFF_OUTPUT_FORCE).unwrap(), pdiff_core::output::IfForeign::Force);
    let e = output_flags(PDIFF_OUTPUT_FORCE | 4).unwrap_err();
    assert_eq!(e.status, pdiff_status::PDIFF_ERR_INVALID_ARGUMENT);
    assert!(e.message.contains("0x5"), "{}", e.message);
}
