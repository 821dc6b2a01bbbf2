//! report.md and its PNG plots (plotters): accuracy distributions, accuracy versus max IoU to
//! the originals (new versus copied), accuracy against novelty (distance to the nearest
//! original) with every baseline and the critique's yardsticks, and the training loss curves.
//! The verdict lines are derived from the numbers, never written by hand.
use crate::eval::Evaluation;
use crate::results::DemoResults;
use pdiff_core::error::{Error, Result};
use pdiff_core::training::TrainHistory;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

const FONT_CANDIDATES: [&str; 3] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];

/// Register a TrueType font for plot labels once; false when none is found ($PDIFF_FONT or
/// DejaVu Sans from the fonts-dejavu-core package).
pub(crate) fn ensure_font() -> bool {
    static REGISTERED: once_cell::sync::OnceCell<bool> = once_cell::sync::OnceCell::new();
    *REGISTERED.get_or_init(|| {
        let mut paths: Vec<String> = std::env::var("PDIFF_FONT").into_iter().collect();
        paths.extend(FONT_CANDIDATES.iter().map(|s| s.to_string()));
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

pub(crate) fn plot_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::invalid("plot", format!("{}: {e}", path.display()))
}

pub(crate) const GROUP_COLORS: [RGBColor; 5] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189)];

fn groups(points: &[(String, f64, f64)]) -> Vec<String> {
    let mut g: Vec<String> = Vec::new();
    for (name, _, _) in points {
        if !g.contains(name) {
            g.push(name.clone());
        }
    }
    g
}

/// The range of `values` padded by 8% on each side; 0..1 when there is no finite value (an
/// inverted or infinite range would make the plotting library draw forever).
pub(crate) fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// Strip plot of test accuracy per group (originals, generated, noise baselines).
fn plot_accuracy(path: &Path, ev: &Evaluation, title: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let names = groups(&ev.points);
    let y = padded_range(ev.points.iter().map(|p| p.1).chain(std::iter::once(ev.soup)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(names.len() as f64 - 0.5), y)
        .map_err(plot_err(path))?;
    let labels = names.clone();
    chart
        .configure_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .y_desc("test accuracy")
        .draw()
        .map_err(plot_err(path))?;
    for (gi, name) in names.iter().enumerate() {
        let color = GROUP_COLORS[gi % GROUP_COLORS.len()];
        let pts: Vec<(f64, f64)> = ev
            .points
            .iter()
            .filter(|p| &p.0 == name)
            .enumerate()
            // Deterministic jitter so overlapping points stay visible.
            .map(|(i, p)| (gi as f64 + ((i * 37 % 100) as f64 / 100.0 - 0.5) * 0.5, p.1))
            .collect();
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.mix(0.6).filled()))).map_err(plot_err(path))?;
    }
    let n = names.len() as f64;
    chart
        .draw_series(LineSeries::new(vec![(-0.5, ev.soup), (n - 0.5, ev.soup)], BLACK.stroke_width(1)))
        .map_err(plot_err(path))?
        .label(format!("soup {:.4}", ev.soup))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// Accuracy versus max IoU of the misclassified set to any original: one point per model.
fn plot_similarity(path: &Path, ev: &Evaluation, title: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let x = padded_range(ev.points.iter().map(|p| p.2));
    let y = padded_range(ev.points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)
        .map_err(plot_err(path))?;
    chart
        .configure_mesh()
        .x_desc("max IoU of misclassified test images to any original (1 = same mistakes)")
        .y_desc("test accuracy")
        .draw()
        .map_err(plot_err(path))?;
    // Baselines first, so originals and generated models are drawn on top.
    for (gi, name) in groups(&ev.points).iter().enumerate().rev() {
        let color = GROUP_COLORS[gi % GROUP_COLORS.len()];
        chart
            .draw_series(ev.points.iter().filter(|p| &p.0 == name).map(|p| Circle::new((p.2, p.1), 3, color.mix(0.6).filled())))
            .map_err(plot_err(path))?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// Ten distinct colours (matplotlib's tab10) for plots with more groups than [`GROUP_COLORS`].
const MANY_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Accuracy (y) against novelty (x: distance to the nearest original, normalized units, log
/// scale): one point of radius `radius` per entry of `points` (group, accuracy, distance); a
/// group of one point (the soup) is drawn larger.
pub(crate) fn plot_novelty(path: &Path, points: &[(String, f64, f64)], radius: i32, title: &str, x_desc: &str) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let positive = points.iter().map(|p| p.2).filter(|d| d.is_finite() && *d > 0.0);
    let (lo, hi) = positive.fold((f64::MAX, f64::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
    let (lo, hi) = if lo > hi { (0.01, 1.0) } else { (lo / 1.5, (hi * 1.5).max(lo * 2.0)) };
    let y = padded_range(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), y)
        .map_err(plot_err(path))?;
    chart.configure_mesh().x_desc(x_desc).y_desc("test accuracy").draw().map_err(plot_err(path))?;
    // Baselines first, so originals and generated models are drawn on top; a distance of 0 (a
    // copy) at the left edge. The legend in the groups' order, from empty series.
    let names = groups(points);
    for (gi, name) in names.iter().enumerate().rev() {
        let color = MANY_COLORS[gi % MANY_COLORS.len()];
        let group: Vec<(f64, f64)> = points.iter().filter(|p| &p.0 == name).map(|p| (p.2.max(lo), p.1)).collect();
        let size = if group.len() == 1 { radius + 4 } else { radius };
        chart.draw_series(group.iter().map(|&p| Circle::new(p, size, color.mix(0.6).filled()))).map_err(plot_err(path))?;
    }
    for (gi, name) in names.iter().enumerate() {
        let color = MANY_COLORS[gi % MANY_COLORS.len()];
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(plot_err(path))?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// The paragraph that says what the critique's yardsticks are.
/// `seed`: where the random choices came from.
pub(crate) fn yardsticks_intro(draws: usize, seed: &str) -> String {
    format!(
        "Zeng et al. 2025 (\"Generative Modeling of Weights: Generalization or Memorization?\", arXiv:2506.07998) found p-diff's models \
         close to simple recipes built from its training checkpoints. The same recipes on the originals, {draws} models each ({seed}): \
         the **average of {avg}** originals drawn without replacement (of all K when K < {avg}: then every model is the soup), \
         a **gaussian** per parameter with the originals' mean and std, and the originals plus Gaussian **noise** that puts them at the \
         generated models' median distance to their nearest original, and at twice it (the critique's amplitudes, 0.06 and 0.12, are \
         absolute values for its network's tensors; their ratio is kept). Distance: L2 in normalized units (each tensor standardized with the \
         originals' mean and std); max IoU: of a model's misclassified test images to any original's; verdicts: the generated models' median \
         count of correctly classified test images against the yardstick's, \"better\" or \"worse\" at least one image apart, else \"equal\".",
        avg = crate::yardsticks::AVERAGE_OF
    )
}

/// The yardstick section of report.md (table, readings, the accuracy-against-novelty plot).
fn write_yardsticks(md: &mut String, dir: &Path, r: &DemoResults) -> Result<()> {
    let ev = &r.evaluation;
    let _ = writeln!(md, "## The critique's yardsticks\n");
    let Some(y) = &ev.yardsticks else {
        let _ = writeln!(md, "No yardsticks in this result file: it was written before they were measured.\n");
        return Ok(());
    };
    let _ = writeln!(md, "{}\n", yardsticks_intro(y.draws, &format!("seed {}", y.seed)));
    let _ = writeln!(
        md,
        "| models | test accuracy best / median / min | distance to the nearest original (median) | max IoU to an original (median) | correct test images (median) | generated are |\n|---|---|---|---|---|---|"
    );
    let g = &ev.generated;
    let gen_correct = y.baselines.first().map(|b| b.comparison.generated_median_correct.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        md,
        "| generated | {:.4} / {:.4} / {:.4} | {:.4} | {:.4} | {gen_correct} | |",
        g.best, g.median, g.min, y.generated_to_nearest_original.median, y.generated_max_iou_to_originals.median
    );
    for b in &y.baselines {
        let name = match b.sigma_rel {
            Some(s) => format!("{} ({s:.4} x tensor std)", b.name),
            None => b.name.clone(),
        };
        let (a, c) = (&b.accuracy, &b.comparison);
        let _ = writeln!(
            md,
            "| {name} | {:.4} / {:.4} / {:.4} | {:.4} | {:.4} | {} | **{}** ({:+}) |",
            a.best, a.median, a.min, b.distance_to_nearest_original.median, b.max_iou_to_originals.median, c.baseline_correct, c.verdict, c.difference_images
        );
    }
    let _ = writeln!(md);
    for line in y.readings() {
        let _ = writeln!(md, "- {line}.");
    }
    let _ = writeln!(md);
    if ev.novelty_points.is_empty() {
        let _ = writeln!(md, "(Accuracy-against-novelty plot skipped: no per-model evaluation in memory.)\n");
    } else if ensure_font() {
        let title = format!("{}: accuracy against distance to the nearest original", r.task);
        plot_novelty(
            &dir.join("novelty.png"),
            &ev.novelty_points,
            3,
            &title,
            "distance to the nearest original (normalized units, log scale; originals: to the nearest other)",
        )?;
        let _ = writeln!(md, "![accuracy against novelty](novelty.png)\n");
    } else {
        let _ = writeln!(md, "(Accuracy-against-novelty plot skipped: no TrueType font found; install fonts-dejavu-core or set PDIFF_FONT.)\n");
    }
    Ok(())
}

/// Loss curves of autoencoder and diffusion training (log scale).
pub(crate) fn plot_losses(path: &Path, h: &TrainHistory) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let (left, right) = root.split_horizontally(500);
    for (area, name, losses) in [(left, "autoencoder loss (MSE)", &h.ae_loss), (right, "diffusion loss (MSE)", &h.diffusion_loss)] {
        if losses.is_empty() {
            continue;
        }
        let lo = losses.iter().cloned().fold(f32::MAX, f32::min).max(1e-12) as f64;
        let hi = losses.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..losses.len() as f64, (lo * 0.8..hi * 1.2).log_scale())
            .map_err(plot_err(path))?;
        chart.configure_mesh().x_desc("step").draw().map_err(plot_err(path))?;
        chart.draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &l)| (i as f64, (l as f64).max(1e-12))), &BLUE)).map_err(plot_err(path))?;
    }
    root.present().map_err(plot_err(path))
}

/// Write report.md (+ accuracy.png, similarity.png, novelty.png, losses.png) into `dir`.
pub fn write(dir: &Path, r: &DemoResults, history: Option<&TrainHistory>) -> Result<()> {
    let ev = &r.evaluation;
    let mut md = String::new();
    let _ = writeln!(md, "# p-diff report: {}\n", r.task);
    let _ = writeln!(
        md,
        "D = {} parameters, K = {} originals, N = {} generated; preset `{}`, trained on {} ({} libtorch threads), sampled with {} on {}.\n",
        r.num_params, r.k, r.n_generated, r.preset, r.device, r.torch_threads, r.sampler, r.backend
    );
    if r.preset_auto {
        let _ = writeln!(
            md,
            "The preset was chosen automatically for D = {}: `compact` below {} parameters, `chunked` from there.\n",
            r.num_params,
            pdiff_core::model::AUTO_CHUNKED_MIN_PARAMS
        );
    }
    if let Some(p) = &r.peak_rss_mib {
        let mib = |v: Option<f64>| v.map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            md,
            "Peak resident memory (MiB, per stage): collect {}, train {}, sample {}, evaluate {}; the whole demo {}.\n",
            mib(p.collect),
            mib(p.train),
            mib(p.sample),
            mib(p.evaluate),
            mib(p.demo)
        );
    }
    let _ = writeln!(md, "## Health\n");
    let warnings: Vec<String> = r.warnings.iter().cloned().chain(r.latent_clipping.warning()).collect();
    if warnings.is_empty() {
        let _ = writeln!(md, "No warning: enough checkpoints, none misaligned, a faithful autoencoder, no generated latent clipped.");
    }
    for w in &warnings {
        let _ = writeln!(md, "- warning: {w}");
    }
    let ratio = if r.checkpoint_variance > 0.0 { format!("{:.1}%", 100.0 * r.reconstruction_mse / r.checkpoint_variance) } else { "-".into() };
    let _ = writeln!(
        md,
        "\nReconstruction MSE {:.2e} against a spread of the checkpoints across K of {:.2e} (normalized units): {ratio}. {}.\n",
        r.reconstruction_mse,
        r.checkpoint_variance,
        r.latent_clipping.sentence()
    );
    let _ = writeln!(md, "## Test accuracy\n\n| models | best | mean | median | min | std |\n|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, s: &crate::eval::Summary| {
        let _ = writeln!(md, "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |", s.best, s.mean, s.median, s.min, s.std);
    };
    row(&mut md, "originals", &ev.originals);
    row(&mut md, "generated", &ev.generated);
    for nb in &ev.noise_baselines {
        row(&mut md, &format!("originals + noise {} x tensor std", nb.sigma_rel), &nb.accuracy);
    }
    let _ = writeln!(md, "| soup (uniform average of the originals) | {:.4} | | | | |", ev.soup);
    let _ = writeln!(md, "| generated, best on TRAIN ({:.4}), on TEST | {:.4} | | | | |\n", ev.selected_on_train.train, ev.selected_on_train.test);
    let _ = writeln!(md, "## Generated against the baselines\n");
    let test_images = ev.comparisons.first().map(|c| c.test_images).unwrap_or(0);
    let _ = writeln!(
        md,
        "Generated median test accuracy {:.4}. Verdicts compare counts of correctly classified test images (of {test_images}): \
         \"better\" or \"worse\" when they differ by at least one image, else \"equal\" (a median of an even number of models \
         can fall halfway between two counts).\n",
        ev.generated.median
    );
    let _ = writeln!(md, "| baseline | its accuracy | correct images | generated median | difference (images) | generated are |\n|---|---|---|---|---|---|");
    for c in &ev.comparisons {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {} | {} | {:+} | **{}** |",
            c.baseline, c.baseline_accuracy, c.baseline_correct, c.generated_median_correct, c.difference_images, c.verdict
        );
    }
    let s = &ev.similarity;
    let _ = writeln!(md, "\n## Memorization: IoU of misclassified test images\n");
    let _ = writeln!(
        md,
        "| pairs | mean IoU |\n|---|---|\n| original - original | {:.4} |\n| generated - generated | {:.4} |\n| original - generated | {:.4} |\n",
        s.original_original_mean_iou, s.generated_generated_mean_iou, s.original_generated_mean_iou
    );
    let _ = writeln!(md, "| per model: max IoU to any original | median | min | max |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| original (to the other originals) | {:.4} | {:.4} | {:.4} |",
        s.original_max_iou_to_other_originals.median, s.original_max_iou_to_other_originals.min, s.original_max_iou_to_other_originals.best
    );
    let _ = writeln!(
        md,
        "| generated | {:.4} | {:.4} | {:.4} |",
        s.generated_max_iou_to_originals.median, s.generated_max_iou_to_originals.min, s.generated_max_iou_to_originals.best
    );
    for nb in &ev.noise_baselines {
        let m = &nb.max_iou_to_originals;
        let _ = writeln!(md, "| original + noise {} | {:.4} | {:.4} | {:.4} |", nb.sigma_rel, m.median, m.min, m.best);
    }
    let novelty = if s.generated_max_iou_to_originals.median >= s.original_max_iou_to_other_originals.median {
        "the generated models make the same mistakes as some original at least as closely as the originals do among themselves: by this measure they are copies or averages of the training checkpoints, not new solutions"
    } else {
        "the generated models' mistakes overlap less with any original than the originals' do with each other: by this measure they differ from every training checkpoint"
    };
    let _ = writeln!(md, "\nReading: {novelty}.\n");
    let nv = &r.novelty;
    let _ = writeln!(md, "## Novelty without a task: distance to the nearest original\n");
    let _ = writeln!(md, "L2 distance over the {} parameters in normalized units (each tensor standardized with the originals' mean and std).\n", r.num_params);
    let _ = writeln!(md, "| distance | median | min | max |\n|---|---|---|---|");
    for (name, d) in [
        ("generated to the nearest original", &nv.generated_to_nearest_original),
        ("original to the nearest other original", &nv.original_to_nearest_other_original),
        ("original to original (every pair)", &nv.original_to_original),
    ] {
        let _ = writeln!(md, "| {name} | {:.4} | {:.4} | {:.4} |", d.median, d.min, d.max);
    }
    let _ = writeln!(md, "\nReading: {}.\n", nv.sentence());
    write_yardsticks(&mut md, dir, r)?;
    // The per-model points are not part of results.json: a report rendered again from that file
    // (no evaluation in memory) has no plots.
    if ev.points.is_empty() {
        let _ = writeln!(md, "(Plots skipped: no per-model evaluation in memory; they are drawn by the run that evaluates the models.)\n");
    } else if ensure_font() {
        let title = format!("{}: test accuracy", r.task);
        plot_accuracy(&dir.join("accuracy.png"), ev, &title)?;
        plot_similarity(&dir.join("similarity.png"), ev, &format!("{}: accuracy vs similarity to the originals", r.task))?;
        let _ = writeln!(md, "![accuracy](accuracy.png)\n\n![similarity](similarity.png)\n");
        if let Some(h) = history {
            plot_losses(&dir.join("losses.png"), h)?;
            let _ = writeln!(md, "![losses](losses.png)\n");
        }
    } else {
        let _ = writeln!(md, "(Plots skipped: no TrueType font found; install fonts-dejavu-core or set PDIFF_FONT.)\n");
    }
    let t = &r.timings_s;
    let _ = writeln!(
        md,
        "## Timings (s)\n\ncollect {:.1}, autoencoder {:.1}, diffusion {:.1}, sample {:.2}, evaluate {:.1}.",
        t.collect, t.train_autoencoder, t.train_diffusion, t.sample, t.evaluate
    );
    pdiff_core::files::write_atomic(&dir.join("report.md"), md.as_bytes())
}
