//! Conditional generation: a conditional generator that generates each condition's parameters,
//! classifier-free guidance, and the exported graphs (denoiser.onnx with a condition input,
//! sampler.onnx) agreeing with tch. Condition files are pdiff-core's
//! (crates/core/tests/conditional.rs).
mod common;
use ndarray::Array2;
use pdiff_core::diffusion::{Conditioning, SamplerKind};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::model::Preset;
use pdiff_core::params::{ConditionSpec, Conditions, Layout, ParamSet};
use pdiff_core::runtime::{Provider, RuntimeOptions, Sampler};
use pdiff_core::training::{DeviceChoice, TrainConfig};
use pdiff_train::Generator;

/// Two tasks whose checkpoints sit around two different points (A and B), conditioned on
/// (1, 0) and (0, 1): the generator must put each condition's samples near its own point.
fn two_task_set() -> (ParamSet, Vec<f32>, Vec<f32>) {
    let layout = Layout::from_shapes(&[("net.w", vec![4, 6]), ("net.b", vec![4])]).unwrap();
    let d = layout.param_count();
    let a: Vec<f32> = (0..d).map(|j| (j as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..d).map(|j| (j as f32 * 0.37).sin() + if j % 2 == 0 { 0.6 } else { -0.6 }).collect();
    let (mut data, mut cond) = (Vec::new(), Vec::new());
    for i in 0..24 {
        let (base, c) = if i % 2 == 0 { (&a, [1.0, 0.0]) } else { (&b, [0.0, 1.0]) };
        data.extend(base.iter().enumerate().map(|(j, v)| v + 0.01 * ((i * 5 + j * 3) as f32 * 0.71).sin()));
        cond.extend_from_slice(&c);
    }
    let set = ParamSet::from_rows(layout, data, (0..24).map(|i| format!("m{i}")).collect()).unwrap();
    let spec = ConditionSpec { dim: 2, names: Some(vec!["task_a".into(), "task_b".into()]) };
    (set.with_conditions(Conditions::new(spec, cond).unwrap()).unwrap(), a, b)
}

#[test]
fn a_conditional_generator_generates_each_condition() {
    common::single_threaded_torch();
    let (set, a, b) = two_task_set();
    let mut c = TrainConfig::new(Preset::Compact);
    c.ae_steps = 300;
    c.diffusion_steps = 1500;
    c.batch_size = 12;
    c.device = DeviceChoice::Cpu;
    let g = {
        let _guard = common::torch_lock();
        Generator::train(&set, &c, &mut |_| true).unwrap()
    };
    assert_eq!(g.condition.as_ref().map(|c| c.dim), Some(2));
    let kind = SamplerKind::Ddim { steps: 20 };
    let sample = |values: &[f32], guidance: f32| {
        let cond = Conditioning { values, guidance };
        g.sample(&SampleRequest::new(32).seed(3).sampler(kind).condition(cond), &mut no_progress).unwrap().params
    };
    // Each condition's samples land at its own task's point (nearer to it than to the other).
    let on_own = |rows: &Array2<f32>, own: &[f32], other: &[f32]| {
        let d = |r: ndarray::ArrayView1<f32>, p: &[f32]| r.iter().zip(p).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
        rows.rows().into_iter().filter(|r| d(*r, own) < d(*r, other)).count()
    };
    let (to_a, to_b) = (sample(&[1.0, 0.0], 1.0), sample(&[0.0, 1.0], 1.0));
    let (ra, rb) = (on_own(&to_a, &a, &b), on_own(&to_b, &b, &a));
    assert!(ra >= 28 && rb >= 28, "of 32 samples, {ra} conditioned on A are nearer A, {rb} conditioned on B nearer B");
    // Guidance > 1 pushes further from the unconditional model: at least as faithful.
    let (sa, sb) = (on_own(&sample(&[1.0, 0.0], 3.0), &a, &b), on_own(&sample(&[0.0, 1.0], 3.0), &b, &a));
    assert!(sa >= ra.min(30) && sb >= rb.min(30), "guidance 3: {sa} and {sb} of 32 (guidance 1: {ra}, {rb})");
    // No condition: the unconditional model, which gives both tasks.
    let none = g.sample(&SampleRequest::new(32).seed(3).sampler(kind), &mut no_progress).unwrap().params;
    let na = on_own(&none, &a, &b);
    assert!((4..=28).contains(&na), "without a condition {na} of 32 samples are A's");
    // One condition per row: rows 0, 2, .. get A, rows 1, 3, .. get B.
    let per_row: Vec<f32> = (0..32).flat_map(|i| if i % 2 == 0 { [1.0, 0.0] } else { [0.0, 1.0] }).collect();
    let mixed = sample(&per_row, 1.0);
    for i in [0usize, 2] {
        assert_eq!(mixed.row(i), to_a.row(i), "row {i} conditioned on A alone or among others");
    }
    // Errors: a condition of the wrong size, a non-finite guidance, a condition for an
    // unconditional backend.
    let bad = Conditioning { values: &[1.0, 0.0, 0.0], guidance: 1.0 };
    let r = g.sample(&SampleRequest::new(4).seed(3).sampler(kind).condition(bad), &mut no_progress);
    assert!(r.unwrap_err().to_string().contains("3 values: expected C = 2"));
    let nan = Conditioning { values: &[1.0, 0.0], guidance: f32::NAN };
    let r = g.sample(&SampleRequest::new(4).seed(3).sampler(kind).condition(nan), &mut no_progress);
    assert!(r.unwrap_err().to_string().contains("guidance"));

    // The bundle: the manifest declares the condition; ONNX Runtime gives tch's samples, step by
    // step and as one graph, for guidance 1 and 2 and with no condition.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let m = g.export_bundle(&bundle).unwrap();
    assert_eq!(m.condition, g.condition);
    let cpu = RuntimeOptions { provider: Provider::Cpu, intra_threads: Some(1), ..Default::default() };
    let step = Sampler::open(&bundle, &cpu).unwrap();
    let whole = Sampler::open(&bundle, &RuntimeOptions { whole_loop: Some(true), ..cpu.clone() }).unwrap();
    assert_eq!(step.condition_dim(), Some(2));
    for (values, guidance) in [(Some(&[1.0f32, 0.0][..]), 1.0f32), (Some(&[0.0, 1.0][..]), 2.0), (None, 1.0)] {
        let cond = values.map(|values| Conditioning { values, guidance });
        let t = g.sample(&SampleRequest { condition: cond.as_ref().copied(), ..SampleRequest::new(6).seed(5).sampler(kind) }, &mut no_progress).unwrap().params;
        let s =
            step.sample(&SampleRequest { condition: cond.as_ref().copied(), ..SampleRequest::new(6).seed(5).sampler(kind) }, &mut no_progress).unwrap().params;
        let w =
            whole.sample(&SampleRequest { condition: cond.as_ref().copied(), ..SampleRequest::new(6).seed(5).sampler(kind) }, &mut no_progress).unwrap().params;
        let scale = t.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = |x: &Array2<f32>, y: &Array2<f32>| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale;
        assert!(diff(&t, &s) < 1e-3, "{values:?} g {guidance}: tch vs ONNX Runtime {}", diff(&t, &s));
        assert!(diff(&s, &w) <= 1e-5, "{values:?} g {guidance}: step loop vs sampler.onnx {}", diff(&s, &w));
    }
    // An unconditional generator refuses a condition.
    let fixture = pdiff_test_support::fixture();
    let plain = Sampler::open(&fixture, &cpu).unwrap();
    assert_eq!(plain.condition_dim(), None);
    let err =
        plain.sample(&SampleRequest::new(2).seed(0).sampler(kind).condition(Conditioning { values: &[1.0], guidance: 1.0 }), &mut no_progress).unwrap_err();
    assert!(err.to_string().contains("unconditional"), "{err}");
}
