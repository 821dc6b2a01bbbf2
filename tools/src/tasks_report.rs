//! report.md and plots of `pdiff demo --task mnist-tasks`: per held-out task, generated against
//! the scratch models, the nearest seen task's checkpoints and the generator without condition;
//! accuracy against the Hamming distance to the nearest seen task; the critique's yardsticks and
//! their accuracy-against-novelty plot; the ablations; verdicts against the targets, computed
//! from the numbers.
use crate::report::{ensure_font, padded_range, plot_err, plot_losses, plot_novelty, yardsticks_intro, GROUP_COLORS};
use crate::tasks_demo::TasksResults;
use pdiff_core::error::Result;
use pdiff_core::training::TrainHistory;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::Path;

/// Points: one series per baseline, x = held-out task index.
fn plot_heldout(path: &Path, r: &TasksResults) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let series: [(&str, Vec<f64>); 4] = [
        ("generated (median)", r.heldout.iter().map(|h| h.generated.median).collect()),
        ("scratch (median)", r.heldout.iter().map(|h| h.scratch.median).collect()),
        ("nearest seen task (median)", r.heldout.iter().map(|h| h.nearest_seen.accuracy.median).collect()),
        ("no condition (median)", r.heldout.iter().map(|h| h.unconditional.median).collect()),
    ];
    let y = padded_range(series.iter().flat_map(|(_, v)| v.iter().copied()).chain(r.heldout.iter().map(|h| h.generated.min)));
    let n = r.heldout.len();
    let codes: Vec<String> = r.heldout.iter().map(|h| h.code.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("mnist-tasks: held-out tasks, test accuracy", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y)
        .map_err(plot_err(path))?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| codes.get(x.round() as usize).cloned().unwrap_or_default())
        .x_desc("held-out task (code: digit d in the task when character d is 1)")
        .y_desc("test accuracy")
        .draw()
        .map_err(plot_err(path))?;
    // Generated: the range of the N models as a bar behind the medians.
    chart
        .draw_series(r.heldout.iter().enumerate().map(|(i, h)| {
            PathElement::new(vec![(i as f64 - 0.15, h.generated.min), (i as f64 - 0.15, h.generated.best)], GROUP_COLORS[0].mix(0.5).stroke_width(3))
        }))
        .map_err(plot_err(path))?;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = GROUP_COLORS[si % GROUP_COLORS.len()];
        let dx = -0.15 + 0.1 * si as f64;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| Circle::new((i as f64 + dx, v), 5, color.filled())))
            .map_err(plot_err(path))?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err(path))?;
    root.present().map_err(plot_err(path))
}

/// Median accuracy of the generated models per task against the Hamming distance from the task
/// to the nearest seen task (0 for seen tasks), with the nearest seen task's own checkpoints.
fn plot_hamming(path: &Path, r: &TasksResults) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let mut gen: Vec<(f64, f64)> = r.seen.iter().map(|s| (0.0, s.generated.median)).collect();
    gen.extend(r.heldout.iter().map(|h| (h.nearest_seen.hamming as f64, h.generated.median)));
    let mut orig: Vec<(f64, f64)> = r.seen.iter().map(|s| (0.0, s.originals.median)).collect();
    orig.extend(r.heldout.iter().map(|h| (h.nearest_seen.hamming as f64, h.nearest_seen.accuracy.median)));
    let max_h = gen.iter().map(|p| p.0).fold(2.0, f64::max);
    let y = padded_range(gen.iter().chain(&orig).map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption("mnist-tasks: accuracy vs Hamming distance to the nearest seen task", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(max_h + 0.5), y)
        .map_err(plot_err(path))?;
    chart.configure_mesh().x_desc("Hamming distance (0: seen task)").y_desc("median test accuracy").draw().map_err(plot_err(path))?;
    for (si, (name, pts, dx)) in [("generated", &gen, -0.08), ("nearest seen task's checkpoints", &orig, 0.08)].into_iter().enumerate() {
        let color = GROUP_COLORS[if si == 0 { 0 } else { 2 }];
        chart
            .draw_series(
                pts.iter().enumerate().map(|(i, &(x, v))| Circle::new((x + dx + ((i * 37 % 100) as f64 / 100.0 - 0.5) * 0.12, v), 4, color.mix(0.7).filled())),
            )
            .map_err(plot_err(path))?
            .label(name)
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

fn pts(x: f64) -> String {
    format!("{:+.1} pts", 100.0 * x)
}

/// Verdict lines against the targets of the conditional-generation issue, from the numbers.
pub fn verdicts(r: &TasksResults) -> Vec<(String, bool)> {
    let s = &r.summary;
    vec![
        (
            format!(
                "held-out tasks: generated {:.4} vs scratch {:.4} ({}; target >= -3 pts)",
                s.heldout_generated,
                s.heldout_scratch,
                pts(s.heldout_generated - s.heldout_scratch)
            ),
            s.heldout_generated >= s.heldout_scratch - 0.03,
        ),
        (
            format!(
                "held-out tasks: generated {:.4} vs nearest seen task {:.4} ({}; target >= +3 pts)",
                s.heldout_generated,
                s.heldout_nearest_seen,
                pts(s.heldout_generated - s.heldout_nearest_seen)
            ),
            s.heldout_generated >= s.heldout_nearest_seen + 0.03,
        ),
        (
            format!(
                "seen tasks: generated {:.4} vs originals {:.4} ({}; target >= -1 pt)",
                s.seen_generated,
                s.seen_originals,
                pts(s.seen_generated - s.seen_originals)
            ),
            s.seen_generated >= s.seen_originals - 0.01,
        ),
    ]
}

/// The yardstick section of report.md: per kind of task a tally, per held-out task each
/// yardstick, and the held-out tasks' accuracy against novelty (`novelty.png`).
fn write_yardsticks(md: &mut String, dir: &Path, r: &TasksResults) -> Result<()> {
    let _ = writeln!(md, "## The critique's yardsticks\n");
    let Some(y) = &r.yardsticks else {
        let _ = writeln!(md, "No yardsticks in this result file: it was written before they were measured.\n");
        return Ok(());
    };
    let seed = format!("each task's seed derived from the run's, {}, and the task", r.seed);
    let _ = writeln!(
        md,
        "{} Here the originals are the checkpoints the generator learned from: a seen task's own, and for a held-out task its nearest seen task's \
         (what memorization has to offer); every model is evaluated on the task itself.\n",
        yardsticks_intro(y.draws, &seed)
    );
    for (kind, tallies) in [("held-out", &y.heldout_summary), ("seen", &y.seen_summary)] {
        let _ = writeln!(
            md,
            "On the {kind} tasks (medians over tasks of each task's median; distance and max IoU: the yardstick's / the generated models'):\n\n\
             | yardstick | its accuracy | generated | generated are better / equal / worse (tasks) | distance to the nearest original | max IoU to an original |\n|---|---|---|---|---|---|"
        );
        for t in tallies {
            let _ = writeln!(
                md,
                "| {} | {:.4} | {:.4} | {} / {} / {} | {:.3} / {:.3} | {:.3} / {:.3} |",
                t.name,
                t.accuracy,
                t.generated,
                t.better,
                t.equal,
                t.worse,
                t.distance_to_nearest_original,
                t.generated_distance,
                t.max_iou_to_originals,
                t.generated_max_iou
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "Per held-out task (yardsticks of the nearest seen task's checkpoints):\n\n\
         | task (from) | yardstick | its median | generated median | generated are (test images) | distance: its / generated | max IoU: its / generated |\n|---|---|---|---|---|---|---|"
    );
    let mut points = Vec::new();
    for h in &y.heldout {
        let ys = &h.yardsticks;
        for b in &ys.baselines {
            let c = &b.comparison;
            let _ = writeln!(
                md,
                "| {} ({}) | {} | {:.4} | {:.4} | **{}** ({:+}) | {:.3} / {:.3} | {:.3} / {:.3} |",
                h.code,
                h.from,
                b.name,
                b.accuracy.median,
                c.generated_median,
                c.verdict,
                c.difference_images,
                b.distance_to_nearest_original.median,
                ys.generated_to_nearest_original.median,
                b.max_iou_to_originals.median,
                ys.generated_max_iou_to_originals.median
            );
            points.push((b.name.clone(), b.accuracy.median, b.distance_to_nearest_original.median));
        }
        if let Some(b) = ys.baselines.first() {
            points.push(("generated".to_string(), b.comparison.generated_median, ys.generated_to_nearest_original.median));
        }
    }
    // Generated first in the legend and on top.
    points.sort_by_key(|p| p.0 != "generated");
    let _ = writeln!(md);
    if points.is_empty() {
        return Ok(());
    }
    if ensure_font() {
        plot_novelty(
            &dir.join("novelty.png"),
            &points,
            5,
            "mnist-tasks: held-out tasks, median accuracy against median distance (one point per task)",
            "distance to the nearest checkpoint of the nearest seen task (normalized units, log scale)",
        )?;
        let _ = writeln!(md, "![accuracy against novelty](novelty.png)\n");
    } else {
        let _ = writeln!(md, "(Accuracy-against-novelty plot skipped: no TrueType font found; install fonts-dejavu-core or set PDIFF_FONT.)\n");
    }
    Ok(())
}

pub fn write(dir: &Path, r: &TasksResults, history: &TrainHistory) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# p-diff report: {} (conditional generation)\n", r.task);
    let _ = writeln!(
        md,
        "{} seen tasks x {} checkpoints (K = {}), {} held-out tasks never seen in training; D = {} parameters, condition of {} floats (bit d = digit d in the task). \
         Generator: preset `{}`, target `{}`, trained on {} ({} libtorch threads); {} generated models per task with {} on {}, guidance {} ({}). Accuracies are on the {} test images (one image = {:.4}).\n",
        r.seen_tasks.len(), r.checkpoints_per_task, r.seen_tasks.len() * r.checkpoints_per_task, r.heldout.len(), r.num_params, r.condition_dim,
        r.preset, r.target, r.device, r.torch_threads, r.generated_per_task, r.sampler, r.backend, r.guidance, r.guidance_choice, r.test_images, 1.0 / r.test_images.max(1) as f64
    );
    let _ = writeln!(md, "## Summary (medians over tasks of each task's median)\n");
    let s = &r.summary;
    let _ = writeln!(md, "| | held-out tasks | seen tasks |\n|---|---|---|");
    let _ = writeln!(md, "| generated | {:.4} | {:.4} |", s.heldout_generated, s.seen_generated);
    let _ = writeln!(md, "| scratch (trained on the task, the upper reference) | {:.4} | |", s.heldout_scratch);
    let _ = writeln!(md, "| originals | | {:.4} |", s.seen_originals);
    let _ = writeln!(md, "| nearest seen task's checkpoints (memorization) | {:.4} | |", s.heldout_nearest_seen);
    let _ = writeln!(md, "| the generator without condition | {:.4} | |\n", s.heldout_unconditional);
    for (line, ok) in verdicts(r) {
        let _ = writeln!(md, "- {} {line}", if ok { "met:" } else { "NOT met:" });
    }
    let _ = writeln!(md, "\n## Held-out tasks\n\n| task | generated best / median / min | scratch median | nearest seen (Hamming) median | no condition median |\n|---|---|---|---|---|");
    for h in &r.heldout {
        let _ = writeln!(
            md,
            "| {} | {:.4} / {:.4} / {:.4} | {:.4} | {} ({}) {:.4} | {:.4} |",
            h.code,
            h.generated.best,
            h.generated.median,
            h.generated.min,
            h.scratch.median,
            h.nearest_seen.code,
            h.nearest_seen.hamming,
            h.nearest_seen.accuracy.median,
            h.unconditional.median
        );
    }
    if ensure_font() {
        plot_heldout(&dir.join("heldout.png"), r)?;
        plot_hamming(&dir.join("hamming.png"), r)?;
        plot_losses(&dir.join("losses.png"), history)?;
        let _ = writeln!(md, "\n![held-out tasks](heldout.png)\n\n![accuracy vs Hamming distance](hamming.png)\n\n![losses](losses.png)\n");
    } else {
        let _ = writeln!(md, "\n(Plots skipped: no TrueType font found; install fonts-dejavu-core or set PDIFF_FONT.)\n");
    }
    write_yardsticks(&mut md, dir, r)?;
    let _ = writeln!(
        md,
        "## Ablations\n\nClassifier-free guidance (the main generator; validation: the tasks the guidance was chosen on, see above):\n\n\
         | guidance | validation generated | held-out generated | seen generated |\n|---|---|---|---|"
    );
    for g in &r.guidance_ablation {
        let v = g.validation_generated.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(md, "| {} | {v} | {:.4} | {:.4} |", g.guidance, g.heldout_generated, g.seen_generated);
    }
    if !r.seen_tasks_ablation.is_empty() {
        let _ = writeln!(
            md,
            "\nNumber of seen tasks (a generator trained on the first m seen tasks, same settings, sampled with tch; the nearest seen task among those m):\n\n\
             | seen tasks | held-out generated | held-out nearest seen | seen generated | seen originals |\n|---|---|---|---|---|"
        );
        for a in &r.seen_tasks_ablation {
            let _ = writeln!(
                md,
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                a.seen_tasks, a.heldout_generated, a.heldout_nearest_seen, a.seen_generated, a.seen_originals
            );
        }
    }
    let _ = writeln!(md, "\n## Health\n");
    if r.warnings.is_empty() {
        let _ = writeln!(md, "No warning.");
    }
    for w in &r.warnings {
        let _ = writeln!(md, "- warning: {w}");
    }
    let ratio = if r.checkpoint_variance > 0.0 { format!("{:.1}%", 100.0 * r.reconstruction_mse / r.checkpoint_variance) } else { "-".into() };
    let _ = writeln!(
        md,
        "\nReconstruction MSE {:.2e} against the checkpoints' spread {:.2e} (normalized units): {ratio}.\n",
        r.reconstruction_mse, r.checkpoint_variance
    );
    let t = &r.timings_s;
    let _ = writeln!(
        md,
        "## Timings (s)\n\ncollect {:.1}, autoencoder {:.1}, diffusion {:.1}, sample {:.1}, evaluate {:.1}, ablations {:.1}; total {:.1}.",
        t.collect, t.train_autoencoder, t.train_diffusion, t.sample, t.evaluate, t.ablation, t.total
    );
    pdiff_core::files::write_atomic(&dir.join("report.md"), md.as_bytes())
}
