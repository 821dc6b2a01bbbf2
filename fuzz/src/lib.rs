//! What the fuzz targets share: proof that ONNX Runtime is really there ([`require_runtime`]),
//! and the input format of the `bundle_dir` target ([`bundle_input`]).
use pdiff_core::runtime::{Provider, RuntimeOptions};

pub mod bundle_input;

/// A graph ONNX Runtime must accept: the decoder of the committed fixture bundle.
const KNOWN_GOOD_GRAPH: &[u8] = include_bytes!("../../tests/fixtures/tiny-bundle/decoder.onnx");

/// Options of every session the targets open: CPU, one intra-op thread (the fuzzer runs one
/// input at a time; a thread pool per session would only add start-up cost).
pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..RuntimeOptions::default() }
}

/// Load ONNX Runtime ($PDIFF_ORT_LIB, ...) and check that it works by loading a known-good
/// graph; panic otherwise. Called once, before the first input (the targets' `init`): if the
/// runtime itself could not be loaded, every input would come back as an error and a target
/// that accepts errors would test nothing while looking green.
pub fn require_runtime() {
    let library = pdiff_core::runtime::init(None).unwrap_or_else(|e| panic!("ONNX Runtime is not loaded, so this target would test nothing: {e}"));
    if let Err(e) = pdiff_core::runtime::load_graph(KNOWN_GOOD_GRAPH, &runtime_options()) {
        panic!("ONNX Runtime ({}) loaded but rejects the fixture's decoder.onnx: {e}", library.display());
    }
}

/// Whether `e` says that the runtime itself is missing or unusable, rather than that the input
/// was rejected. After [`require_runtime`] this must never happen: a target panics on it.
pub fn is_runtime_unavailable(e: &pdiff_core::Error) -> bool {
    match e {
        pdiff_core::Error::Runtime(m) => {
            m.starts_with("ONNX Runtime library not found") || m.starts_with("cannot load ") || m.contains("ONNX Runtime is not initialized")
        }
        _ => false,
    }
}

/// `PDIFF_FUZZ_VERBOSE=1`: the targets print each input's outcome on stderr (scripts/fuzz.sh
/// uses it to check that the committed seeds reach sampling).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PDIFF_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}
