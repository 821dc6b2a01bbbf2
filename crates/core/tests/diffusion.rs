//! The noise schedule (closed forms, validation) and the shared sampler loop: DDPM and DDIM
//! against an f64 reference of the same trajectory, determinism per seed, cancel and errors.
//! The denoiser here is a deterministic stand-in; no libtorch or ONNX Runtime is needed.
use ndarray::{Array2, ArrayView2};
use pdiff_core::diffusion::{count_outside_clip, ddim_timesteps, sample_latents, ClipCount, CondInput, DenoiserBackend, SamplerKind, Schedule};
use pdiff_core::Error;
use pdiff_test_support::*;
use std::cell::RefCell;

#[test]
fn schedule_tables_match_closed_forms() {
    let s = Schedule::default();
    assert_eq!((s.kind.as_str(), s.beta_start, s.beta_end, s.timesteps), ("linear", 1e-4, 2e-2, 1000));
    s.validate().unwrap();
    let tab = s.tables();
    assert_eq!(tab.betas.len(), 1000);
    assert_eq!(tab.alphas.len(), 1000);
    assert_eq!(tab.alpha_bars.len(), 1000);
    assert_eq!(tab.posterior_variance.len(), 1000);

    // beta_i = 1e-4 + (2e-2 - 1e-4) * i / 999
    assert_eq!(tab.betas[0], 1e-4);
    assert!((tab.betas[999] - 2e-2).abs() < 1e-17, "{}", tab.betas[999]);
    assert!((tab.betas[500] - (1e-4 + 0.0199 * 500.0 / 999.0)).abs() < 1e-17, "{}", tab.betas[500]);
    for i in 1..1000 {
        let step = tab.betas[i] - tab.betas[i - 1];
        assert!((step - 0.0199 / 999.0).abs() < 1e-15, "beta step at {i}: {step}");
    }

    // alpha_bar_t = prod_{i <= t} (1 - beta_i), recomputed from the closed-form betas.
    let mut acc = 1.0f64;
    for t in 0..1000 {
        let beta = 1e-4 + (2e-2 - 1e-4) * t as f64 / 999.0;
        acc *= 1.0 - beta;
        assert!((tab.alphas[t] - (1.0 - beta)).abs() < 1e-15, "alpha {t}");
        assert!((tab.alpha_bars[t] - acc).abs() <= 1e-12 * acc, "alpha_bar {t}: {} vs {acc}", tab.alpha_bars[t]);
    }
    // Known value of the DDPM linear schedule: alpha_bar_T ~ 4.04e-5.
    assert!((tab.alpha_bars[999] - 4.0358e-5).abs() < 1e-8, "{}", tab.alpha_bars[999]);
    assert!(tab.alpha_bars.windows(2).all(|w| w[1] < w[0]), "alpha_bar must decrease strictly");

    assert_eq!(tab.posterior_variance[0], 0.0);
    for t in 1..1000 {
        let pv = tab.betas[t] * (1.0 - tab.alpha_bars[t - 1]) / (1.0 - tab.alpha_bars[t]);
        assert!((tab.posterior_variance[t] - pv).abs() <= 1e-14 * pv, "posterior variance {t}");
        assert!(tab.posterior_variance[t] > 0.0 && tab.posterior_variance[t] <= tab.betas[t]);
    }

    // DDIM sequence: T / S spaced, ascending, from 0.
    assert_eq!(ddim_timesteps(1000, 50), (0..50).map(|i| i * 20).collect::<Vec<_>>());
    assert_eq!(ddim_timesteps(1000, 3), vec![0, 333, 666]);
    assert_eq!(ddim_timesteps(1000, 1), vec![0]);
    // More steps than timesteps: clamped to every timestep; 0 steps: clamped to 1.
    assert_eq!(ddim_timesteps(10, 50), (0..10).collect::<Vec<_>>());
    assert_eq!(ddim_timesteps(10, 0), vec![0]);
}

#[test]
fn schedule_validate_rejects_bad_values() {
    let bad = |f: &dyn Fn(&mut Schedule)| {
        let mut s = Schedule::default();
        f(&mut s);
        invalid_err(s.validate())
    };
    let (field, msg) = bad(&|s| s.kind = "cosine".into());
    assert_eq!(field, "schedule.kind");
    assert!(msg.contains("cosine"), "{msg}");
    assert_eq!(bad(&|s| s.timesteps = 1).0, "schedule.timesteps");
    assert_eq!(bad(&|s| s.timesteps = 0).0, "schedule.timesteps");
    let (field, msg) = bad(&|s| (s.beta_start, s.beta_end) = (0.02, 1e-4));
    assert_eq!(field, "schedule.beta");
    assert!(msg.contains("0.02"), "{msg}");
    assert_eq!(bad(&|s| s.beta_start = 0.0).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_start = -1e-4).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_end = 1.0).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_end = f64::NAN).0, "schedule.beta");
    assert_eq!(bad(&|s| s.beta_start = f64::NAN).0, "schedule.beta");

    // The sampler refuses a bad schedule before calling the backend.
    let s = Schedule { kind: "quadratic".into(), ..Default::default() };
    let calls = RefCell::new(Vec::new());
    let r = sample_latents(&Linear { d: 2, calls: &calls }, &s, SamplerKind::Ddpm, None, 0, 0..1, &mut |_, _| true);
    assert_eq!(invalid_err(r).0, "schedule.kind");
    assert!(calls.borrow().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. Samplers
// ---------------------------------------------------------------------------------------------

/// A deterministic stand-in for the denoiser: eps = 0.1 x + 0.001 t. Records every call's
/// input so the test can rebuild the trajectory independently.
struct Linear<'a> {
    d: usize,
    calls: &'a RefCell<Vec<(Array2<f32>, Vec<i64>)>>,
}

impl DenoiserBackend for Linear<'_> {
    fn latent_dim(&self) -> usize {
        self.d
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64], _cond: Option<CondInput<'_>>) -> pdiff_core::Result<Array2<f32>> {
        self.calls.borrow_mut().push((x.to_owned(), t.to_vec()));
        Ok(Array2::from_shape_fn(x.dim(), |(i, j)| 0.1 * x[[i, j]] + 0.001 * t[i] as f32))
    }
}

/// Returns a wrongly shaped prediction.
struct Broken;
impl DenoiserBackend for Broken {
    fn latent_dim(&self) -> usize {
        3
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, _t: &[i64], _cond: Option<CondInput<'_>>) -> pdiff_core::Result<Array2<f32>> {
        Ok(Array2::zeros((x.nrows(), 2)))
    }
}

/// What the denoiser was called with: (x, t) per call.
type Calls = Vec<(Array2<f32>, Vec<i64>)>;

/// The latents, the denoiser's calls and the progress reports of one sampling run.
fn run(kind: SamplerKind, n: usize, d: usize, seed: u64) -> (Array2<f32>, Calls, Vec<(usize, usize)>) {
    let calls = RefCell::new(Vec::new());
    let mut steps = Vec::new();
    let out = sample_latents(&Linear { d, calls: &calls }, &Schedule::default(), kind, None, seed, 0..n, &mut |done, total| {
        steps.push((done, total));
        true
    })
    .unwrap();
    (out, calls.into_inner(), steps)
}

/// The documented noise streams (docs/bundle-format.md): row i draws from ChaCha8 seeded with
/// the seed, on stream i.
fn row_streams(seed: u64, rows: std::ops::Range<usize>) -> Vec<rand_chacha::ChaCha8Rng> {
    rows.map(|r| {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        rng.set_stream(r as u64);
        rng
    })
    .collect()
}

/// The next d standard normals of each row's stream, row-major.
fn gaussian_f64(rngs: &mut [rand_chacha::ChaCha8Rng], d: usize) -> Vec<f64> {
    use rand_distr::Distribution;
    rngs.iter_mut()
        .flat_map(|rng| {
            (0..d)
                .map(move |_| {
                    let z: f32 = rand_distr::StandardNormal.sample(rng);
                    z as f64
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn max_rel_err(a: &Array2<f32>, reference: &[f64]) -> f64 {
    a.iter().zip(reference).map(|(&x, &r)| (x as f64 - r).abs() / r.abs().max(1.0)).fold(0.0, f64::max)
}

#[test]
fn ddim_is_deterministic_and_matches_reference() {
    let (n, d) = (3, 5);
    let kind = SamplerKind::Ddim { steps: 10 };
    let (a, calls, steps) = run(kind, n, d, 42);
    let (b, _, _) = run(kind, n, d, 42);
    let (c, _, _) = run(kind, n, d, 43);
    assert_eq!(a.dim(), (n, d));
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(bits(a.as_slice().unwrap()), bits(b.as_slice().unwrap()), "same seed must give identical latents");
    assert!(a.iter().zip(c.iter()).all(|(x, y)| x != y), "a different seed must change every value");

    // Progress: one report per step, (1..=10, 10); timesteps visited 900, 800, ..., 0.
    assert_eq!(steps, (1..=10).map(|i| (i, 10)).collect::<Vec<_>>());
    let ts: Vec<i64> = calls.iter().map(|c| c.1[0]).collect();
    assert_eq!(ts, (0..10).rev().map(|i| i * 100).collect::<Vec<_>>());
    assert!(calls.iter().all(|c| c.1.len() == n && c.1.iter().all(|&t| t == c.1[0]) && c.0.dim() == (n, d)));

    // The start is N(0, 1) noise: row i from ChaCha8 seeded with the seed, on stream i.
    let x_t = gaussian_f64(&mut row_streams(42, 0..n), d);
    assert_eq!(calls[0].0.iter().map(|&v| v as f64).collect::<Vec<_>>(), x_t);

    // Independent f64 DDIM (eta = 0) with the same eps model.
    let tab = Schedule::default().tables();
    let seq: Vec<usize> = (0..10).map(|i| i * 100).collect();
    let mut x = x_t;
    for i in (0..seq.len()).rev() {
        let t = seq[i];
        let ab = tab.alpha_bars[t];
        let ab_prev = if i == 0 { 1.0 } else { tab.alpha_bars[seq[i - 1]] };
        for v in x.iter_mut() {
            let eps = 0.1 * *v + 0.001 * t as f64;
            let x0 = (*v - (1.0 - ab).sqrt() * eps) / ab.sqrt();
            *v = ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * eps;
        }
    }
    let err = max_rel_err(&a, &x);
    assert!(err < 2e-5, "DDIM differs from the f64 reference by {err}");
}

#[test]
fn ddpm_is_deterministic_and_matches_reference() {
    let (n, d) = (2, 4);
    let (a, calls, steps) = run(SamplerKind::Ddpm, n, d, 7);
    let (b, _, _) = run(SamplerKind::Ddpm, n, d, 7);
    let (c, _, _) = run(SamplerKind::Ddpm, n, d, 8);
    assert_eq!(a.dim(), (n, d));
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(bits(a.as_slice().unwrap()), bits(b.as_slice().unwrap()));
    assert!(a.iter().zip(c.iter()).all(|(x, y)| x != y));
    assert_eq!(steps.len(), 1000);
    assert_eq!(steps[0], (1, 1000));
    assert_eq!(steps[999], (1000, 1000));
    let ts: Vec<i64> = calls.iter().map(|c| c.1[0]).collect();
    assert_eq!(ts, (0..1000).rev().collect::<Vec<i64>>());

    // Independent f64 ancestral DDPM with the same noise stream: x_T, then one fresh N(0, I)
    // draw per step t > 0 (none at t = 0).
    let tab = Schedule::default().tables();
    let mut rngs = row_streams(7, 0..n);
    let mut x = gaussian_f64(&mut rngs, d);
    for t in (0..1000usize).rev() {
        let coef = tab.betas[t] / (1.0 - tab.alpha_bars[t]).sqrt();
        for v in x.iter_mut() {
            let eps = 0.1 * *v + 0.001 * t as f64;
            *v = (*v - coef * eps) / tab.alphas[t].sqrt();
        }
        if t > 0 {
            let z = gaussian_f64(&mut rngs, d);
            let sigma = tab.posterior_variance[t].sqrt();
            for (v, z) in x.iter_mut().zip(z) {
                *v += sigma * z;
            }
        }
    }
    let err = max_rel_err(&a, &x);
    assert!(err < 5e-5, "DDPM differs from the f64 reference by {err}");

    // DDPM and DDIM are different processes.
    let (ddim, _, _) = run(SamplerKind::Ddim { steps: 10 }, n, d, 7);
    assert_ne!(bits(a.as_slice().unwrap()), bits(ddim.as_slice().unwrap()));
}

/// Row i of a batch depends only on the seed and i: sampled alone, in a chunk or among more
/// rows, it is bit for bit the same (what chunked sampling and best-of-N rely on).
#[test]
fn rows_do_not_depend_on_the_batch() {
    let d = 3;
    for kind in [SamplerKind::Ddim { steps: 10 }, SamplerKind::Ddpm] {
        let (all, _, _) = run(kind, 7, d, 5);
        for rows in [0..1, 2..5, 6..7, 0..7] {
            let calls = RefCell::new(Vec::new());
            let part = sample_latents(&Linear { d, calls: &calls }, &Schedule::default(), kind, None, 5, rows.clone(), &mut |_, _| true).unwrap();
            let want = all.slice(ndarray::s![rows.clone(), ..]).to_owned();
            assert_eq!(bits(part.as_slice().unwrap()), bits(want.as_slice().unwrap()), "{kind:?} rows {rows:?}");
        }
    }
}

#[test]
fn sampler_cancel_and_errors() {
    let calls = RefCell::new(Vec::new());
    let den = Linear { d: 4, calls: &calls };
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim { steps: 20 }] {
        calls.borrow_mut().clear();
        let mut seen = 0;
        let r = sample_latents(&den, &Schedule::default(), kind, None, 1, 0..2, &mut |done, _| {
            seen = done;
            done < 3
        });
        assert!(matches!(r, Err(Error::Cancelled)), "{kind:?}: {r:?}");
        assert_eq!(seen, 3, "{kind:?}: cancelled after the third step");
        assert_eq!(calls.borrow().len(), 3, "{kind:?}: no denoiser call after the cancel");
    }
    // Bad arguments.
    assert_eq!(invalid_err(sample_latents(&den, &Schedule::default(), SamplerKind::Ddpm, None, 1, 0..0, &mut |_, _| true)).0, "n");
    assert_eq!(invalid_err(sample_latents(&den, &Schedule::default(), SamplerKind::Ddim { steps: 0 }, None, 1, 0..1, &mut |_, _| true)).0, "steps");
    assert_eq!(SamplerKind::parse("ddim", 25).unwrap(), SamplerKind::Ddim { steps: 25 });
    assert_eq!(SamplerKind::parse("ddpm", 0).unwrap(), SamplerKind::Ddpm);
    assert_eq!(invalid_err(SamplerKind::parse("ddim", 0)).0, "steps");
    assert_eq!(invalid_err(SamplerKind::parse("euler", 10)).0, "sampler");
    // A backend returning the wrong shape is reported, not silently broadcast.
    match sample_latents(&Broken, &Schedule::default(), SamplerKind::Ddim { steps: 2 }, None, 0, 0..2, &mut |_, _| true) {
        Err(Error::Runtime(m)) => assert!(m.contains("[2, 3]"), "{m}"),
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
}

#[test]
fn latents_outside_the_clip_bounds_are_counted() {
    let clip = [1.0f32, 2.0, 0.5];
    let z = ndarray::arr2(&[
        [0.0f32, 0.0, 0.0],   // inside
        [1.0, -2.0, 0.5],     // on the bounds: inside (the decoder leaves them unchanged)
        [1.01, 0.0, 0.0],     // one value outside
        [-3.0, 2.5, -0.6],    // three
        [f32::NAN, 0.0, 0.0], // a non-finite value counts as outside
    ]);
    assert_eq!(count_outside_clip(z.view(), &clip).unwrap(), ClipCount { rows: 3, values: 5 });
    assert_eq!(count_outside_clip(z.slice(ndarray::s![..2, ..]), &clip).unwrap(), ClipCount::default());
    let (field, msg) = invalid_err(count_outside_clip(z.view(), &clip[..2]));
    assert_eq!(field, "latents");
    assert!(msg.contains("3 dimensions") && msg.contains("2 clip bounds"), "{msg}");
}
