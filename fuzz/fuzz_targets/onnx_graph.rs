//! The ONNX loading path of a Sampler (ONNX Runtime session from bytes) on arbitrary bytes:
//! malformed graphs must come back as errors. Needs ONNX Runtime ($PDIFF_ORT_LIB): before the
//! first input, the runtime is loaded and must accept a known-good graph (else every input
//! would merely be "an error" and nothing would be tested); afterwards an error must be the
//! graph's rejection, never the runtime missing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_fuzz::{init_with_runtime, is_runtime_unavailable, runtime_options, verbose};

fuzz_target!(init: init_with_runtime(), |data: &[u8]| {
    let outcome = pdiff_core::runtime::load_graph(data, &runtime_options());
    if let Err(e) = &outcome {
        assert!(!is_runtime_unavailable(e), "ONNX Runtime became unavailable: {e}");
    }
    if verbose() {
        match outcome {
            Ok(()) => eprintln!("onnx_graph: loaded"),
            Err(e) => eprintln!("onnx_graph: rejected: {e}"),
        }
    }
});
