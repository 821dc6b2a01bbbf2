//! The ONNX loading path of a Sampler (ONNX Runtime session from bytes) on arbitrary bytes:
//! malformed graphs must come back as errors. Needs $PDIFF_ORT_LIB or the project venv.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pdiff::runtime::load_graph(data, &pdiff::runtime::RuntimeOptions::default());
});
