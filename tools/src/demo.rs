//! The end-to-end job on a reference task: collect K checkpoints, train a generator, generate
//! N models, evaluate them against the originals and the soup, write results.json.
//!
//! OUT is one output of kind demo: everything is written into a staging directory and put in
//! place at the end (`output::OutputDir`), so a failed or cancelled demo leaves OUT as it was,
//! a previous demo is replaced whole, and files pdiff did not write are refused (or kept, with
//! force). Its parts are outputs of their own kinds (checkpoints, bundle, samples), so that the
//! single commands can later replace them.
use crate::eval::{evaluate_all, novelty};
use crate::results::{DemoResults, LatentClipping, PeakRss, Timings};
use crate::zoo;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::error::Result;
use pdiff_core::generate::{ModelSource, SampleRequest};
use pdiff_core::output::{IfForeign, OutputDir, OutputKind};
use pdiff_core::params::ParamSet;
use pdiff_core::training::{Progress, TrainConfig};
use pdiff_train::{device_name, Generator};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub task: String,
    pub out_dir: PathBuf,
    /// What to do when OUT holds files pdiff did not write.
    pub if_foreign: IfForeign,
    pub data_dir: Option<PathBuf>,
    pub k: usize,
    pub n: usize,
    pub sampler: SamplerKind,
    pub sample_seed: u64,
    pub train: TrainConfig,
    /// Generate through the exported bundle with ONNX Runtime (the product path), or with
    /// the in-memory tch networks (`None`).
    pub runtime: Option<pdiff_core::runtime::RuntimeOptions>,
}

/// Progress of the whole job: (stage, done, total, loss); return false to cancel.
pub type DemoProgress<'a> = dyn FnMut(&str, usize, usize, Option<f64>) -> bool + 'a;

pub fn run(opts: &DemoOptions, progress: &mut DemoProgress<'_>) -> Result<DemoResults> {
    // OUT first: a refusal comes before anything is loaded or computed.
    let output = OutputDir::begin(&opts.out_dir, OutputKind::Demo, opts.if_foreign)?;
    let task = zoo::task(&opts.task, opts.data_dir.as_deref())?;
    let out = output.path();

    // 1. Collect the K originals.
    let mut rss = PeakRss::default();
    let stage_peak = || {
        let peak = crate::bench::peak_rss_mib();
        crate::bench::reset_peak_rss();
        peak
    };
    crate::bench::reset_peak_rss();
    let t0 = Instant::now();
    let ckpt_dir = out.join("checkpoints");
    pdiff_core::output::write_output_dir(&ckpt_dir, OutputKind::Checkpoints, IfForeign::Refuse, |tmp| {
        task.collect(tmp, opts.k, opts.train.seed, &mut |i, n| progress("collect", i, n, None)).map(|_| ())
    })?;
    let collect_s = t0.elapsed().as_secs_f64();
    rss.collect = stage_peak();

    // 2. Train the generator.
    let set = ParamSet::load_dir(&ckpt_dir, &task.selection())?;
    let mut g = Generator::train(&set, &opts.train, &mut |p: &Progress| progress(p.stage.name(), p.step, p.total, Some(p.loss)))?;
    // The bundle names its checkpoints where they will be once OUT is in place.
    let final_ckpt_dir = opts.out_dir.join("checkpoints");
    g.sources = set.sources.iter().map(|s| final_ckpt_dir.join(Path::new(s).file_name().unwrap_or_default()).display().to_string()).collect();
    let gen_dir = out.join("generator");
    g.export_bundle(&gen_dir)?;
    rss.train = stage_peak();

    // 3. Generate N models (with how many of their latents the decoder had to clip).
    let mut on_step = |i, n| progress("sample", i, n, None);
    let t0 = Instant::now();
    let request = SampleRequest::new(opts.n).seed(opts.sample_seed).sampler(opts.sampler);
    let (samples, backend) = match &opts.runtime {
        Some(rt) => {
            let sampler = pdiff_core::runtime::Sampler::open(&gen_dir, rt)?;
            (sampler.sample(&request, &mut on_step)?, sampler.backend_name().to_string())
        }
        None => (g.sample(&request, &mut on_step)?, "tch".to_string()),
    };
    let sample_s = t0.elapsed().as_secs_f64();
    let latent_clipping = LatentClipping { generated: opts.n, latent_dim: g.latent_dim(), clipped: samples.clipped };
    let d = set.layout.param_count();
    let rows = samples.params.into_raw_vec_and_offset().0;
    pdiff_core::generate::write_models(&set.layout, &rows, &out.join("generated"), IfForeign::Refuse)?;
    rss.sample = stage_peak();

    // 4. Evaluate (originals, soup, generated, noise baselines, memorization, the critique's
    //    yardsticks) and report.
    let t0 = Instant::now();
    let ev = evaluate_all(task.as_ref(), &set, &rows, opts.train.seed, &mut |i, n| {
        progress("evaluate", i, n, None);
    })?;
    let evaluate_s = t0.elapsed().as_secs_f64();
    let novelty = novelty(&set, &rows);
    rss.evaluate = stage_peak();
    rss.demo = [rss.collect, rss.train, rss.sample, rss.evaluate].into_iter().flatten().reduce(f64::max);

    let results = DemoResults {
        task: opts.task.clone(),
        num_params: d,
        k: set.k(),
        n_generated: opts.n,
        device: device_name(g.device),
        torch_threads: pdiff_train::training_threads(&g.config),
        preset: g.config.preset.to_string(),
        preset_auto: g.config.preset_auto,
        sampler: opts.sampler.label(),
        backend,
        evaluation: ev,
        timings_s: Timings {
            collect: collect_s,
            train_autoencoder: g.history.ae_seconds,
            train_diffusion: g.history.diffusion_seconds,
            sample: sample_s,
            evaluate: evaluate_s,
        },
        reconstruction_mse: g.history.final_reconstruction_mse,
        checkpoint_variance: g.history.checkpoint_variance,
        warnings: g.warnings.clone(),
        latent_clipping,
        novelty,
        seed: opts.train.seed,
        peak_rss_mib: Some(rss),
    };
    crate::report::write(out, &results, Some(&g.history))?;
    let json = serde_json::to_vec_pretty(&results).expect("serializable");
    pdiff_core::files::write_atomic(&out.join("results.json"), &json)?;
    output.commit()?;
    Ok(results)
}
