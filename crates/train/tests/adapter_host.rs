//! The Rust host of ONNX Runtime adapters (pdiff-core's `AdapterHost`, on the `ort` crate's
//! `Adapter`) on a small host model over the fixture bundle's tensors: the model exposed by
//! `onnx::expose`, adapters made by `sample_adapter`, every one active in turn in ONE session,
//! each giving its model's output (as a session over that model's own initializers does, and as
//! the host's arithmetic says). Damaged adapters are refused by ONNX Runtime, the host lives on.
use pdiff_core::adapter::NameMap;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::params::Layout;
use pdiff_core::runtime::{AdapterHost, Provider, RuntimeOptions, Sampler};
use pdiff_test_support::fixture;
use pdiff_train::onnx::expose::{expose, with_values};
use pdiff_train::onnx::graph::{attr, Attr, Dim, GraphBuilder};
use pdiff_train::onnx::proto::tensor_proto::DataType;
use prost::Message;

fn cpu() -> RuntimeOptions {
    RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() }
}

/// y = relu(x net.w^T + net.b) head.w^T with the layout's tensors as initializers (any values).
fn host_model(layout: &Layout) -> Vec<u8> {
    let mut b = GraphBuilder::default();
    let x = b.input("x", DataType::Float, &[Dim::Named("n"), Dim::Fixed(20)]);
    let init = |b: &mut GraphBuilder, name: &str| {
        let t = layout.get(name).unwrap();
        let values: Vec<f32> = (0..t.numel()).map(|i| (i as f32 * 0.37).sin()).collect();
        b.f32_named(name, &t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), &values)
    };
    let (w, bias, head) = (init(&mut b, "net.w"), init(&mut b, "net.b"), init(&mut b, "head.w"));
    let h = b.node("Gemm", &[&x, &w, &bias], vec![attr("transB", Attr::Int(1))], None);
    let r = b.op("Relu", &[&h]);
    b.node("Gemm", &[&r, &head], vec![attr("transB", Attr::Int(1))], Some("y"));
    b.output("y", DataType::Float, &[Dim::Named("n"), Dim::Fixed(3)]);
    b.finish("host", "a host over the fixture's tensors").encode_to_vec()
}

fn reference(layout: &Layout, flat: &[f32], x: &[f32]) -> Vec<f32> {
    let t = |n: &str| {
        let s = layout.get(n).unwrap();
        &flat[s.offset..s.offset + s.numel()]
    };
    let (w, b, head) = (t("net.w"), t("net.b"), t("head.w"));
    x.chunks(20)
        .flat_map(|row| {
            let h: Vec<f32> = (0..6).map(|j| (row.iter().zip(&w[j * 20..(j + 1) * 20]).map(|(a, b)| a * b).sum::<f32>() + b[j]).max(0.0)).collect();
            (0..3).map(move |k| h.iter().zip(&head[k * 6..(k + 1) * 6]).map(|(a, b)| a * b).sum::<f32>()).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_adapter_in_one_session_gives_its_model() {
    let s = Sampler::open(&fixture(), &cpu()).unwrap();
    let layout = s.layout().clone();
    let plain = host_model(&layout);
    let exposed = expose(&plain, "host.onnx", &layout, &NameMap::default(), s.bundle_sha256().unwrap()).unwrap();
    assert_eq!(exposed.added, ["net.w", "net.b", "head.w"]);
    let host = AdapterHost::open(&exposed.bytes, "host (exposed)", &cpu()).unwrap();
    let x: Vec<f32> = (0..5 * 20).map(|i| (i as f32 * 0.11).cos()).collect();
    let kind = SamplerKind::Ddim { steps: 10 };
    let n = 6;
    let models = s.sample(&SampleRequest::new(n).seed(3).sampler(kind), &mut no_progress).unwrap().params;
    // Without an adapter: the model's own initializers.
    let own = AdapterHost::open(&plain, "host", &cpu()).unwrap().run(&x, &[5, 20], None).unwrap();
    assert_eq!(host.run(&x, &[5, 20], None).unwrap(), own);
    let mut outputs = Vec::new();
    for i in 0..n {
        let (bytes, _) = s.sample_adapter(&SampleRequest::new(1).seed(3).sampler(kind).starting_at(i), &NameMap::default(), &mut no_progress).unwrap();
        let adapter = host.load_adapter(&bytes, &format!("model {i}")).unwrap();
        let got = host.run(&x, &[5, 20], Some(&adapter)).unwrap();
        let row = models.row(i);
        let row = row.as_slice().unwrap();
        let per_model = with_values(&plain, "host.onnx", &layout, &NameMap::default(), row).unwrap();
        let want = AdapterHost::open(&per_model, "host (model)", &cpu()).unwrap().run(&x, &[5, 20], None).unwrap();
        for ((g, w), r) in got.iter().zip(&want).zip(reference(&layout, row, &x)) {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "model {i}: adapter {g}, session per model {w}");
            assert!((g - r).abs() <= 1e-4 * r.abs().max(1.0), "model {i}: adapter {g}, arithmetic {r}");
        }
        outputs.push(got);
    }
    assert_ne!(outputs[0], outputs[1], "two models, two outputs");
    // The same adapter again, after the others: the same output.
    let (bytes, _) = s.sample_adapter(&SampleRequest::new(1).seed(3).sampler(kind), &NameMap::default(), &mut no_progress).unwrap();
    assert_eq!(host.run(&x, &[5, 20], Some(&host.load_adapter(&bytes, "model 0").unwrap())).unwrap(), outputs[0]);

    // Damaged adapters: ONNX Runtime's own refusal, as an error; the session keeps working.
    for (what, bad) in [("truncated", bytes[..bytes.len() / 2].to_vec()), ("identifier", [&bytes[..4], b"ORTM", &bytes[8..]].concat())] {
        let e = host.load_adapter(&bad, what).err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.to_string().contains(what), "{e}");
    }
    assert_eq!(host.run(&x, &[5, 20], None).unwrap(), own);
}
