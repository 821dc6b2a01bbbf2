//! The exported ONNX graphs: run by ONNX Runtime they agree with the tch networks for every
//! preset (the shared sampler loop gives the same parameters on both backends); graphs another
//! tool could write, each wrong in one way, are refused naming the file and the tensor; the
//! fixture bundle of pdiff-core's tests is regenerated here.
mod common;
use ndarray::Array2;
use pdiff_core::diffusion::{DecoderBackend, DenoiserBackend, SamplerKind};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::model::{AutoencoderConfig, ConvSpec, DenoiserConfig, Preset};
use pdiff_core::params::{Layout, ParamSet};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::training::{DeviceChoice, TrainConfig};
use pdiff_test_support::{copy_fixture, fixture, max_rel_diff};
use pdiff_train::Generator;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
}

fn synthetic_set(k: usize) -> ParamSet {
    let layout = Layout::from_shapes(&[("net.w", vec![6, 20]), ("net.b", vec![6]), ("head.w", vec![3, 6])]).unwrap();
    let d = layout.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let base: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut data = Vec::with_capacity(k * d);
    for _ in 0..k {
        data.extend(base.iter().map(|b| b + rng.random_range(-0.05..0.05)));
    }
    ParamSet::from_rows(layout, data, (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap()
}

fn train(preset: Preset) -> Generator {
    // One libtorch thread per test: the tests run in parallel on a 2-core machine.
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(preset);
    c.ae_steps = 10;
    c.diffusion_steps = 10;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    Generator::train(&synthetic_set(6), &c, &mut |_| true).unwrap()
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-2.0..2.0))
}

fn check_preset(preset: Preset) {
    let g = train(preset);
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    g.export_bundle(&bundle).unwrap();
    let sampler = Sampler::open(&bundle, &RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }).unwrap();
    assert_eq!(sampler.backend_name(), "onnxruntime-cpu");
    let d = g.latent_dim();

    // Denoiser and decoder on random inputs, several batch sizes (dynamic batch dimension).
    for (b, seed) in [(1usize, 3u64), (5, 4), (17, 5)] {
        let x = random(b, d, seed);
        let t: Vec<i64> = (0..b as i64).map(|i| (i * 97) % 1000).collect();
        let eps_tch = g.predict_noise(x.view(), &t, None).unwrap();
        let eps_ort = sampler.predict_noise(x.view(), &t, None).unwrap();
        let r = max_rel_diff(&eps_tch, &eps_ort);
        assert!(r < 1e-4, "{preset}: denoiser relative difference {r}");
        let p_tch = g.decode(x.view()).unwrap();
        let p_ort = sampler.decode(x.view()).unwrap();
        let r = max_rel_diff(&p_tch, &p_ort);
        assert!(r < 1e-4, "{preset}: decoder relative difference {r}");
        assert_eq!(p_ort.ncols(), g.layout.param_count());
    }

    // The same seed gives the same parameters on both backends (shared sampler loop).
    for kind in [SamplerKind::Ddim { steps: 20 }, SamplerKind::Ddpm] {
        let a = g.sample(&SampleRequest::new(4).seed(11).sampler(kind), &mut no_progress).unwrap().params;
        let b = sampler.sample(&SampleRequest::new(4).seed(11).sampler(kind), &mut no_progress).unwrap().params;
        let r = max_rel_diff(&a, &b);
        assert!(r < 1e-3, "{preset} {kind:?}: generated parameters differ by {r}");
    }

    // sampler.onnx (the whole DDIM loop in one graph) gives the step-by-step loop's parameters.
    let whole = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).unwrap();
    assert!(whole.runs_whole_loop() && !sampler.runs_whole_loop());
    for steps in [1, 20] {
        let kind = SamplerKind::Ddim { steps };
        let a = sampler.sample(&SampleRequest::new(4).seed(5).sampler(kind), &mut no_progress).unwrap().params;
        let b = whole.sample(&SampleRequest::new(4).seed(5).sampler(kind), &mut no_progress).unwrap().params;
        let r = max_rel_diff(&a, &b);
        assert!(r <= 1e-5, "{preset} DDIM-{steps}: sampler.onnx differs from the step loop by {r}");
    }
}

#[test]
fn compact_preset_onnx_matches_tch() {
    check_preset(Preset::Compact);
}

#[test]
fn chunked_preset_onnx_matches_tch() {
    check_preset(Preset::Chunked);
}

#[test]
fn paper_preset_onnx_matches_tch() {
    check_preset(Preset::Paper);
}

/// Rewrite tests/fixtures/tiny-bundle (run by hand when the bundle format changes):
/// `cargo test --release -p pdiff-train --test onnx_graphs -- --ignored regenerate_fixture_bundle`.
#[test]
#[ignore]
fn regenerate_fixture_bundle() {
    tch::set_num_threads(1);
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 200;
    c.diffusion_steps = 300;
    c.batch_size = 4;
    c.device = DeviceChoice::Cpu;
    c.autoencoder = Some(AutoencoderConfig {
        encoder: vec![ConvSpec { channels: 4, kernel: 8, stride: 8, padding: 0 }, ConvSpec { channels: 8, kernel: 8, stride: 8, padding: 0 }],
        decoder_channels: vec![4, 1],
        final_kernel: None,
        latent_dim: 16,
        chunked: None,
    });
    c.denoiser = Some(DenoiserConfig::Mlp { hidden: 32, blocks: 1, time_dim: 16 });
    let g = Generator::train(&synthetic_set(12), &c, &mut |_| true).unwrap();
    g.export_bundle(&fixture()).unwrap();
}

/// A copy of the fixture whose file `file` was changed by `edit` (ONNX protobuf) and whose
/// manifest was changed by `edit_manifest`, with the hashes recomputed: a bundle another tool
/// could have written, consistent in itself but not what this library writes.
fn foreign_bundle(
    dir: &Path,
    file: &str,
    edit: impl FnOnce(&mut pdiff_train::onnx::proto::ModelProto),
    edit_manifest: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    use prost::Message;
    let b = copy_fixture(&dir.join("bundle"));
    let path = b.join(file);
    let mut model = pdiff_train::onnx::proto::ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    edit(&mut model);
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let mpath = b.join("pdiff.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    edit_manifest(&mut m);
    for f in ["decoder.onnx", "denoiser.onnx", "sampler.onnx"] {
        m["sha256"][f] = serde_json::json!(pdiff_core::bundle::sha256_hex(&std::fs::read(b.join(f)).unwrap()));
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    b
}

/// Rename a graph output (and the node output that produces it).
fn rename_output(model: &mut pdiff_train::onnx::proto::ModelProto, from: &str, to: &str) {
    let g = model.graph.as_mut().unwrap();
    for o in g.output.iter_mut().filter(|o| o.name.as_deref() == Some(from)) {
        o.name = Some(to.into());
    }
    for n in &mut g.node {
        for o in n.output.iter_mut().filter(|o| o.as_str() == from) {
            *o = to.into();
        }
    }
}

#[test]
fn foreign_graphs_are_refused_with_names() {
    use pdiff_train::onnx::proto::tensor_proto::DataType;
    let open = |b: &Path| Sampler::open(b, &cpu()).err().expect("a foreign bundle must be refused");
    let check = |err: pdiff_core::Error, words: &[&str]| {
        let text = err.to_string();
        assert!(matches!(err, pdiff_core::Error::Bundle { .. }), "{text}");
        for w in words {
            assert!(text.contains(w), "{text:?} lacks {w:?}");
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut next = || {
        n += 1;
        let d = tmp.path().join(format!("case{n}"));
        std::fs::create_dir(&d).unwrap();
        d
    };
    // The denoiser's output renamed: the sampler would look for 'eps'.
    let b = foreign_bundle(&next(), "denoiser.onnx", |m| rename_output(m, "eps", "noise"), |_| {});
    check(open(&b), &["denoiser.onnx", "output 'eps' is missing", "'noise'"]);
    // The decoder's input renamed.
    let b = foreign_bundle(
        &next(),
        "decoder.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            g.input[0].name = Some("latent".into());
            for node in &mut g.node {
                for i in node.input.iter_mut().filter(|i| i.as_str() == "z") {
                    *i = "latent".into();
                }
            }
        },
        |_| {},
    );
    check(open(&b), &["decoder.onnx", "input 'z' is missing", "'latent'"]);
    // The timestep input declared int32.
    let b = foreign_bundle(
        &next(),
        "denoiser.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            let t = g.input.iter_mut().find(|i| i.name.as_deref() == Some("t")).unwrap();
            if let Some(pdiff_train::onnx::proto::type_proto::Value::TensorType(tt)) = t.r#type.as_mut().unwrap().value.as_mut() {
                tt.elem_type = Some(DataType::Int32 as i32);
            }
        },
        |_| {},
    );
    check(open(&b), &["denoiser.onnx", "input 't'", "Int32", "expected Int64"]);
    // The manifest's parameter width disagrees with the decoder's output (the last tensor, head.w
    // [3, 6], one column narrower; the manifest consistent in itself): [B, 144] from the graph,
    // D = 141 in the manifest.
    let b = foreign_bundle(
        &next(),
        "decoder.onnx",
        |_| {},
        |m| {
            let last = m["layout"].as_array_mut().unwrap().last_mut().unwrap();
            assert_eq!(last["shape"], serde_json::json!([3, 6]));
            last["shape"] = serde_json::json!([3, 5]);
            m["param_count"] = serde_json::json!(141);
        },
    );
    check(open(&b), &["decoder.onnx", "output 'params' has size 144 on axis 1", "the manifest says 141"]);
    // An extra required input the sampler does not feed.
    let b = foreign_bundle(
        &next(),
        "denoiser.onnx",
        |m| {
            let g = m.graph.as_mut().unwrap();
            let mut extra = g.input[0].clone();
            extra.name = Some("temperature".into());
            g.input.push(extra);
        },
        |_| {},
    );
    check(open(&b), &["denoiser.onnx", "unexpected input 'temperature'"]);
    // sampler.onnx is checked too when it is used.
    let b = foreign_bundle(&next(), "sampler.onnx", |m| rename_output(m, "params", "weights"), |_| {});
    Sampler::open(&b, &cpu()).expect("auto on the CPU does not use sampler.onnx");
    check(Sampler::open(&b, &RuntimeOptions { whole_loop: Some(true), ..cpu() }).err().unwrap(), &["sampler.onnx", "output 'params' is missing", "'weights'"]);
}

/// decoder.onnx and denoiser.onnx hold no node whose output ONNX Runtime keeps in host memory
/// (Shape, Size): their consumers would be placed on the CPU ("CPU-preferred" nodes), and a
/// required CUDA provider, which disables the CPU fallback, would refuse the graph. (sampler.onnx
/// has such bookkeeping for its Loop and is opened with the fallback on: src/runtime/session.rs.)
#[test]
fn strict_cuda_graphs_hold_no_shape_nodes() {
    use prost::Message;
    for file in ["decoder.onnx", "denoiser.onnx"] {
        let bytes = std::fs::read(fixture().join(file)).unwrap();
        let model = pdiff_train::onnx::proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let ops: Vec<&str> = model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap_or("")).collect();
        assert!(ops.len() > 5, "{file}: {ops:?}");
        for op in ["Shape", "Size"] {
            assert!(!ops.contains(&op), "{file} has a {op} node: {ops:?}");
        }
    }
}
