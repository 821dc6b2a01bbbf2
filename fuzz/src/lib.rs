//! What the fuzz targets share: the address-space limit that makes an unchecked allocation a
//! crash ([`limit_address_space`]), proof that ONNX Runtime is really there ([`require_runtime`]),
//! and the input format of the `bundle_dir` target ([`bundle_input`]).
use pdiff_core::runtime::{Provider, RuntimeOptions};

pub mod bundle_input;

/// The environment variable that sets [`limit_address_space`]'s limit, in MiB.
pub const ADDRESS_SPACE_VAR: &str = "PDIFF_FUZZ_ADDRESS_SPACE_MB";

/// With `PDIFF_FUZZ_ADDRESS_SPACE_MB=N`, limit this process's address space to N MiB
/// (`setrlimit(RLIMIT_AS)`, the soft limit), as `ulimit -v` would for a host: an allocation
/// beyond it then fails. The library's large allocations are fallible and become an error
/// (`Error::OutOfMemory`, `PDIFF_ERR_OUT_OF_MEMORY`); an unchecked one aborts the process
/// ("memory allocation of N bytes failed"), which libFuzzer reports as a crash: a finding. Every
/// target calls it first thing (its `init`); without the variable it does nothing.
///
/// Only for a build without sanitizer (`cargo fuzz build -s none`, scripts/fuzz.sh's second
/// run): AddressSanitizer reserves terabytes of shadow memory, so a limit that small cannot hold
/// an ASan process. Panics when the variable is not a positive number, or when the process
/// already maps more than half the limit (a sanitizer's shadow memory, most likely), rather than
/// run a fuzzer in which every allocation fails.
pub fn limit_address_space() {
    let Some(value) = std::env::var_os(ADDRESS_SPACE_VAR) else { return };
    let mb: u64 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&mb| mb > 0)
        .unwrap_or_else(|| panic!("{ADDRESS_SPACE_VAR}={value:?}: expected a positive number of MiB"));
    let limit = mb << 20;
    let mapped = mapped_bytes().unwrap_or_else(|| panic!("{ADDRESS_SPACE_VAR}: cannot read VmSize from /proc/self/status"));
    assert!(
        mapped < limit / 2,
        "{ADDRESS_SPACE_VAR}={mb}: this process already maps {} MiB (AddressSanitizer's shadow memory?); \
         the address-space limit needs a build without sanitizer (cargo fuzz build -s none)",
        mapped >> 20
    );
    let mut rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_AS, &mut rlimit), 0, "getrlimit(RLIMIT_AS): {}", std::io::Error::last_os_error());
        rlimit.rlim_cur = limit.min(rlimit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_AS, &rlimit), 0, "setrlimit(RLIMIT_AS, {mb} MiB): {}", std::io::Error::last_os_error());
    }
    if verbose() {
        eprintln!("address space limited to {mb} MiB ({} MiB mapped at start)", mapped >> 20);
    }
}

/// The process's mapped address space (VmSize), in bytes.
fn mapped_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.trim_start_matches("VmSize:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib << 10)
}

/// A graph ONNX Runtime must accept: the decoder of the committed fixture bundle.
const KNOWN_GOOD_GRAPH: &[u8] = include_bytes!("../../tests/fixtures/tiny-bundle/decoder.onnx");

/// Options of every session the targets open: CPU, one intra-op thread (the fuzzer runs one
/// input at a time; a thread pool per session would only add start-up cost).
pub fn runtime_options() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..RuntimeOptions::default() }
}

/// The `init` of the targets that need ONNX Runtime: [`limit_address_space`] (the runtime is
/// loaded under the limit, as in a host that has one), then [`require_runtime`].
pub fn init_with_runtime() {
    limit_address_space();
    require_runtime();
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
        pdiff_core::Error::Runtime(m) => says_runtime_unavailable(m),
        _ => false,
    }
}

/// [`is_runtime_unavailable`] for an error as the C ABI reports it: `message` is
/// `pdiff_last_error()` ("pdiff_sampler_open: onnx runtime: cannot load ...") of a call that
/// returned PDIFF_ERR_RUNTIME.
pub fn c_error_says_runtime_unavailable(message: &str) -> bool {
    message.split_once(": onnx runtime: ").is_some_and(|(_, m)| says_runtime_unavailable(m))
}

fn says_runtime_unavailable(m: &str) -> bool {
    m.starts_with("ONNX Runtime library not found") || m.starts_with("cannot load ") || m.contains("ONNX Runtime is not initialized")
}

/// Where the targets write their files: tmpfs when there is one (cheapest).
pub fn scratch_root() -> &'static std::path::Path {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Box::leak(std::env::temp_dir().into_boxed_path())
    }
}

/// `PDIFF_FUZZ_VERBOSE=1`: the targets print each input's outcome on stderr (scripts/fuzz.sh
/// uses it to check that the committed seeds reach sampling).
pub fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PDIFF_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}
