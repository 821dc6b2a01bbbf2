//! A whole bundle directory from arbitrary bytes, end to end: write pdiff.json, decoder.onnx and
//! denoiser.onnx (format: pdiff_fuzz::bundle_input), open them with `Sampler::open` as a host
//! would, and sample a few models. Any error is fine; a panic, crash, or a result that breaks
//! the API's promises (shape, layout) is a bug. Needs ONNX Runtime ($PDIFF_ORT_LIB): checked
//! once up front.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::output::IfForeign;
use pdiff_core::runtime::Sampler;
use pdiff_fuzz::bundle_input::{BundleInput, WRITE_FILES};
use pdiff_fuzz::{is_runtime_unavailable, require_runtime, runtime_options, verbose};
use std::path::Path;

/// Bundles are written where writing is cheapest: tmpfs when there is one.
fn scratch_root() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        Box::leak(std::env::temp_dir().into_boxed_path())
    }
}

fn run(input: &BundleInput, dir: &Path) -> pdiff_core::Result<String> {
    let sampler = Sampler::open(dir, &runtime_options())?;
    let kind = input.sampler();
    let seed = 7;
    let params = sampler.sample(&SampleRequest::new(input.n).seed(seed).sampler(kind), &mut no_progress)?.params;
    // What a host relies on: [n, D] with D the manifest's param_count, split by the layout into
    // tensors of their declared sizes.
    let d = sampler.manifest().param_count;
    assert_eq!(params.dim(), (input.n, d), "sample() returned a shape other than [n, D]");
    for row in params.rows() {
        let row = row.as_slice().expect("standard layout");
        let mut covered = 0;
        for (t, v) in sampler.layout().split(row) {
            assert_eq!(v.len(), t.numel(), "tensor '{}'", t.name);
            covered += v.len();
        }
        assert_eq!(covered, d, "the layout does not cover D");
    }
    if input.flags & WRITE_FILES != 0 {
        let written =
            sampler.sample_to_dir(&SampleRequest::new(input.n).seed(seed).sampler(kind), &dir.join("generated"), IfForeign::Refuse, &mut no_progress)?.0;
        assert_eq!(written.len(), input.n, "sample_to_dir wrote {} files for n = {}", written.len(), input.n);
    }
    Ok(format!("sampled [{}, {d}] with {kind:?}", input.n))
}

fuzz_target!(init: require_runtime(), |data: &[u8]| {
    let input = BundleInput::decode(data);
    let dir = tempfile::Builder::new().prefix("pdiff-fuzz-bundle").tempdir_in(scratch_root()).expect("a scratch directory");
    input.write(dir.path()).expect("writing the bundle files");
    let outcome = run(&input, dir.path());
    if let Err(e) = &outcome {
        assert!(!is_runtime_unavailable(e), "ONNX Runtime became unavailable: {e}");
    }
    if verbose() {
        match outcome {
            Ok(what) => eprintln!("bundle_dir: {what}"),
            Err(e) => eprintln!("bundle_dir: error: {e}"),
        }
    }
});
