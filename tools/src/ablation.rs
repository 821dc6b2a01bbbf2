//! Ablations of the paper on a reference task: the number of training checkpoints K, and the
//! autoencoder's noise augmentation (none, input only, latent only, both). Every variant trains
//! a generator, samples N models and reports their test accuracy and how closely their mistakes
//! match the originals (max IoU), with the health checks of each generator (warnings,
//! reconstruction error against the checkpoints' spread, generated latents clipped).
use crate::eval::{accuracies, evaluate_rows, max_iou_to, Summary};
use crate::zoo::Task;
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::error::{Error, Result};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::params::{list_checkpoints, ParamSet};
use pdiff_core::training::TrainConfig;
use pdiff_train::Generator;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AblationRow {
    pub study: String,
    pub k: usize,
    /// Generated models per variant.
    #[serde(default)]
    pub n: usize,
    pub input_noise: f64,
    pub latent_noise: f64,
    pub generated: Summary,
    pub generated_max_iou_to_originals: Summary,
    /// Originals used for training: their accuracy and soup, for reference.
    pub originals: Summary,
    pub soup: f64,
    pub train_seconds: f64,
    /// Reconstruction MSE / the checkpoints' spread across K (`TrainHistory::reconstruction_ratio`).
    #[serde(default)]
    pub reconstruction_ratio: Option<f64>,
    /// Generated latents (of N) with a value outside the training range.
    #[serde(default)]
    pub latents_clipped: usize,
    /// The generator's health warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
}

pub const K_VALUES: [usize; 4] = [2, 10, 50, 200];
pub const NOISE_VARIANTS: [(&str, f64, f64); 4] = [("none", 0.0, 0.0), ("input only", 0.001, 0.0), ("latent only", 0.0, 0.1), ("both", 0.001, 0.1)];

fn variant(task: &dyn Task, set: &ParamSet, config: &TrainConfig, n: usize, study: &str) -> Result<AblationRow> {
    let g = Generator::train(set, config, &mut |_| true)?;
    let samples = g.sample(&SampleRequest::new(n).seed(7).sampler(SamplerKind::Ddim { steps: 50 }), &mut no_progress)?;
    let (gen, clipped) = (samples.params, samples.clipped);
    let orig = evaluate_rows(task, &set.layout, &set.data, false)?;
    let ev = evaluate_rows(task, &set.layout, gen.as_slice().expect("standard layout"), false)?;
    Ok(AblationRow {
        study: study.into(),
        k: set.k(),
        n,
        input_noise: config.input_noise,
        latent_noise: config.latent_noise,
        generated: Summary::of(&accuracies(&ev)),
        generated_max_iou_to_originals: Summary::of(&max_iou_to(&ev, &orig, false)),
        originals: Summary::of(&accuracies(&orig)),
        soup: evaluate_rows(task, &set.layout, &set.mean_row(), false)?[0].accuracy,
        train_seconds: g.history.ae_seconds + g.history.diffusion_seconds,
        reconstruction_ratio: g.history.reconstruction_ratio(),
        latents_clipped: clipped.rows,
        warnings: g.warnings.clone(),
    })
}

/// Run both studies on the checkpoints in `ckpt_dir` (the first K files for the K study).
pub fn run(task: &dyn Task, ckpt_dir: &Path, base: &TrainConfig, n: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<Vec<AblationRow>> {
    let files = list_checkpoints(ckpt_dir)?;
    let kmax = *K_VALUES.last().unwrap();
    if files.len() < kmax {
        return Err(Error::invalid("checkpoints", format!("{} files in {}, the K study needs {kmax}", files.len(), ckpt_dir.display())));
    }
    task.load_base(&files[0])?;
    let total = K_VALUES.len() + NOISE_VARIANTS.len() - 1;
    let mut rows = Vec::new();
    for (i, &k) in K_VALUES.iter().enumerate() {
        progress(i, total);
        let set = ParamSet::load(&files[..k], &task.selection())?;
        rows.push(variant(task, &set, base, n, "K")?);
    }
    let full = ParamSet::load(&files[..kmax], &task.selection())?;
    for (i, (name, input, latent)) in NOISE_VARIANTS.iter().enumerate() {
        let mut c = base.clone();
        c.input_noise = *input;
        c.latent_noise = *latent;
        // The K = 200 run of the K study already is the "both" variant with these defaults.
        if let Some(same) = rows.iter().find(|r| r.study == "K" && r.k == kmax && r.input_noise == *input && r.latent_noise == *latent) {
            let mut r = same.clone();
            r.study = format!("noise: {name}");
            rows.push(r);
            continue;
        }
        progress(K_VALUES.len() + i, total);
        rows.push(variant(task, &full, &c, n, &format!("noise: {name}"))?);
    }
    progress(total, total);
    Ok(rows)
}

pub fn markdown(task: &str, rows: &[AblationRow]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Ablations on {task}\n");
    let _ = writeln!(md, "N = 100 generated models per variant (DDIM-50, seed 7); test accuracy; max IoU of each generated model's misclassified test images to any training original. K = 1 is not run: the library refuses fewer than 2 checkpoints (a single checkpoint defines no distribution and no latent statistics).\n");
    let _ = writeln!(md, "| study | K | input noise | latent noise | originals median | soup | generated median | generated min | generated std | max IoU median | reconstruction / spread | latents clipped | train s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} of {n} | {:.1} |",
            r.study,
            r.k,
            r.input_noise,
            r.latent_noise,
            r.originals.median,
            r.soup,
            r.generated.median,
            r.generated.min,
            r.generated.std,
            r.generated_max_iou_to_originals.median,
            r.reconstruction_ratio.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
            r.latents_clipped,
            r.train_seconds,
            n = r.n
        );
    }
    let mut warned: Vec<(&str, usize, &String)> = Vec::new();
    for r in rows {
        for w in &r.warnings {
            warned.push((&r.study, r.k, w));
        }
    }
    if !warned.is_empty() {
        let _ = writeln!(md, "\nWarnings:\n");
        for (study, k, w) in warned {
            let _ = writeln!(md, "- {study}, K = {k}: {w}");
        }
    }
    md
}
