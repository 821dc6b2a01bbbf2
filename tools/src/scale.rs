//! `pdiff bench scale`: how training and serving grow with D. For each D, K
//! synthetic checkpoints of a one-layer network ([rows, cols] weight + bias, rows = cols =
//! sqrt(D)) that look like a training trajectory; a generator trained with the preset chosen
//! for D (or the ones named); then time per training step, trained generator parameters, peak
//! RSS of training and of sampling, bundle size and sampling speed through ONNX Runtime. A PNG
//! plots D against time and memory.
//!
//! Synthetic checkpoints are honest for timing and memory, which depend on D, K and the
//! architecture only; for quality at D = 10^6 see the mnist-mlp-wide demo.
use crate::bench::{machine_description, measure, peak_rss_mib, reset_peak_rss};
use pdiff_core::diffusion::SamplerKind;
use pdiff_core::error::{Error, Result};
use pdiff_core::generate::{no_progress, ModelSource, SampleRequest};
use pdiff_core::model::Preset;
use pdiff_core::params::{synthetic_trajectory, Layout};
use pdiff_core::runtime::{RuntimeOptions, Sampler};
use pdiff_core::training::TrainConfig;
use pdiff_train::Generator;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The D of `pdiff bench scale` without `--sizes`.
pub const DEFAULT_SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRow {
    /// D requested and D of the synthetic layout (rows x cols + rows).
    pub d_requested: usize,
    pub param_count: usize,
    pub preset: String,
    pub preset_auto: bool,
    pub latent_dim: usize,
    /// Trained parameters of the autoencoder and of the denoiser, their sum, and the sum over D.
    pub autoencoder_params: usize,
    pub denoiser_params: usize,
    pub generator_params: usize,
    pub generator_params_per_d: f64,
    /// Values stored but not trained (the chunked autoencoder's anchor, token scales and principal
    /// basis).
    pub fixed_values: usize,
    pub ae_ms_per_step: f64,
    pub diffusion_ms_per_step: f64,
    /// Peak RSS of the process while training and exporting (MiB); it includes the K x D
    /// checkpoints held in memory.
    pub train_peak_rss_mib: Option<f64>,
    /// Bytes of every file of the bundle.
    pub bundle_bytes: u64,
    /// DDIM-50 through ONNX Runtime: median seconds for `n` models (warm-up + 3 runs), models/s,
    /// and the peak RSS of those runs.
    pub sample_seconds: f64,
    pub models_per_second: f64,
    pub sample_peak_rss_mib: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleReport {
    pub scale: bool,
    pub machine: String,
    pub cores: usize,
    pub torch_threads: usize,
    pub k: usize,
    pub ae_steps: usize,
    pub diffusion_steps: usize,
    pub n: usize,
    pub backend: String,
    pub rows: Vec<ScaleRow>,
}

/// Whether `bytes` are a `pdiff bench scale` report.
pub fn is_report(bytes: &[u8]) -> bool {
    serde_json::from_slice::<ScaleReport>(bytes).map(|r| r.scale).unwrap_or(false)
}

/// What a scale report is called where an existing file at its path is refused.
pub const REPORT_KIND: &str = "pdiff bench scale report";
/// The same for its plot.
pub const PLOT_KIND: &str = "pdiff bench scale plot";

/// Whether `bytes` are a PNG image (a previous plot, which the next one may replace).
pub fn is_plot(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG")
}

/// A previous scale report, read from `file` (bounded; anything else is refused, named).
pub fn read_report(file: &Path) -> Result<ScaleReport> {
    let bytes = pdiff_core::files::read_regular(file, 64 << 20).map_err(|e| Error::io(file, e))?;
    serde_json::from_slice::<ScaleReport>(&bytes)
        .ok()
        .filter(|r| r.scale)
        .ok_or_else(|| Error::invalid("report-from", format!("{} is not a pdiff bench scale report", file.display())))
}

/// Plot `report` to `png` as one output file: drawn into a temporary sibling (plotters picks
/// the format from the extension), then written atomically, replacing only a previous plot
/// unless `if_foreign` forces it.
pub fn write_plot(png: &Path, report: &ScaleReport, if_foreign: pdiff_core::output::IfForeign) -> Result<()> {
    let tmp = png.with_extension("plot-tmp.png");
    let drawn = plot(&tmp, report).and_then(|()| std::fs::read(&tmp).map_err(|e| Error::io(&tmp, e)));
    let _ = std::fs::remove_file(&tmp);
    pdiff_core::output::write_output_file(png, &drawn?, if_foreign, PLOT_KIND, is_plot)
}

/// The synthetic layout for about D parameters: weight [r, r] + bias [r], r = round(sqrt(D)).
pub fn layout_for(d: usize) -> Result<Layout> {
    let r = ((d as f64).sqrt().round() as usize).max(1);
    Layout::from_shapes(&[("fc.weight", vec![r, r]), ("fc.bias", vec![r])])
}

pub struct ScaleOptions {
    pub sizes: Vec<usize>,
    /// `None`: the preset [`Preset::auto`] chooses for each D; else each of these.
    pub presets: Vec<Option<Preset>>,
    pub k: usize,
    pub ae_steps: usize,
    pub diffusion_steps: usize,
    pub n: usize,
    pub runtime: RuntimeOptions,
    /// Where the bundles are written (each removed after its row).
    pub work_dir: PathBuf,
    pub seed: u64,
}

pub fn run(opts: &ScaleOptions, progress: &mut dyn FnMut(&str)) -> Result<ScaleReport> {
    let mut rows = Vec::new();
    let mut backend = String::new();
    for &d_req in &opts.sizes {
        for preset in &opts.presets {
            let layout = layout_for(d_req)?;
            let d = layout.param_count();
            let mut config = match preset {
                Some(p) => TrainConfig::new(*p),
                None => TrainConfig::auto(d),
            };
            config.ae_steps = opts.ae_steps;
            config.diffusion_steps = opts.diffusion_steps;
            config.seed = opts.seed;
            config.device = pdiff_core::training::DeviceChoice::Cpu;
            progress(&format!("D = {d}, preset {}: {} + {} training steps, K = {}", config.preset, opts.ae_steps, opts.diffusion_steps, opts.k));
            pdiff_train::check_memory(d, opts.k, &config)?;
            // Weights of about 0.1, moving by about 1% of that over K checkpoints.
            let set = synthetic_trajectory(layout, opts.k, 0.1, opts.seed)?;
            reset_peak_rss();
            let g = Generator::train(&set, &config, &mut |_| true)?;
            drop(set);
            let bundle = opts.work_dir.join(format!("scale-{d}-{}", config.preset));
            g.export_bundle_with(&bundle, pdiff_core::output::IfForeign::Refuse)?;
            let train_peak = peak_rss_mib();
            let (ae_params, den_params) = g.parameter_counts();
            let fixed = g.fixed_values();
            let h = g.history.clone();
            let latent_dim = g.latent_dim();
            drop(g);
            let bundle_bytes = dir_bytes(&bundle)?;
            progress(&format!("D = {d}: sampling {} models (DDIM-50), 1 warm-up + 3 runs", opts.n));
            let sampler = Sampler::open(&bundle, &opts.runtime)?;
            backend = sampler.backend_name().to_string();
            let m = measure(3, |_| sampler.sample(&SampleRequest::new(opts.n).seed(7).sampler(SamplerKind::Ddim { steps: 50 }), &mut no_progress))?;
            drop(sampler);
            std::fs::remove_dir_all(&bundle).map_err(|e| Error::io(&bundle, e))?;
            rows.push(ScaleRow {
                d_requested: d_req,
                param_count: d,
                preset: config.preset.to_string(),
                preset_auto: config.preset_auto,
                latent_dim,
                autoencoder_params: ae_params,
                denoiser_params: den_params,
                generator_params: ae_params + den_params,
                generator_params_per_d: (ae_params + den_params) as f64 / d as f64,
                fixed_values: fixed,
                ae_ms_per_step: 1e3 * h.ae_seconds / opts.ae_steps.max(1) as f64,
                diffusion_ms_per_step: 1e3 * h.diffusion_seconds / opts.diffusion_steps.max(1) as f64,
                train_peak_rss_mib: train_peak,
                bundle_bytes,
                sample_seconds: m.median_seconds,
                models_per_second: opts.n as f64 / m.median_seconds,
                sample_peak_rss_mib: m.peak_rss_mib,
            });
        }
    }
    Ok(ScaleReport {
        scale: true,
        machine: machine_description(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        torch_threads: tch::get_num_threads().max(0) as usize,
        k: opts.k,
        ae_steps: opts.ae_steps,
        diffusion_steps: opts.diffusion_steps,
        n: opts.n,
        backend,
        rows,
    })
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        total += e.metadata().map_err(|err| Error::io(e.path(), err))?.len();
    }
    Ok(total)
}

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::invalid("plot", format!("{}: {e}", path.display()))
}

/// D against training time per step (left) and memory (right: peak RSS of training and of
/// sampling, and the trained generator's parameters as MiB of f32), log-log, one line per
/// preset.
pub fn plot(path: &Path, report: &ScaleReport) -> Result<()> {
    crate::report::ensure_font();
    let root = BitMapBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(path))?;
    let (left, right) = root.split_horizontally(550);
    let ds: Vec<f64> = report.rows.iter().map(|r| r.param_count as f64).collect();
    let (dlo, dhi) = ds.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (dlo, dhi) = if dlo <= dhi { (dlo / 2.0, dhi * 2.0) } else { (1e3, 1e7) };
    let mut presets: Vec<String> = Vec::new();
    for r in &report.rows {
        if !presets.contains(&r.preset) {
            presets.push(r.preset.clone());
        }
    }
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
    type Series = (&'static str, fn(&ScaleRow) -> Option<f64>);
    type Panel<'a, 'b> = (&'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>, &'a str, Vec<Series>, SeriesLabelPosition);
    let panels: [Panel<'_, '_>; 2] = [
        (
            &left,
            "training time per step (ms)",
            vec![("autoencoder", |r: &ScaleRow| Some(r.ae_ms_per_step)), ("diffusion", |r: &ScaleRow| Some(r.diffusion_ms_per_step))],
            SeriesLabelPosition::LowerRight,
        ),
        (
            &right,
            "memory (MiB)",
            vec![
                ("peak RSS, training", |r: &ScaleRow| r.train_peak_rss_mib),
                ("peak RSS, sampling", |r: &ScaleRow| r.sample_peak_rss_mib),
                ("generator parameters (f32)", |r: &ScaleRow| Some(r.generator_params as f64 * 4.0 / 1048576.0)),
            ],
            // Memory rises to the right, parameters stay low: the upper left is free.
            SeriesLabelPosition::UpperLeft,
        ),
    ];
    for (area, title, series, legend) in panels {
        let values: Vec<f64> = report.rows.iter().flat_map(|r| series.iter().filter_map(move |(_, f)| f(r))).filter(|v| *v > 0.0 && v.is_finite()).collect();
        let lo = values.iter().cloned().fold(f64::MAX, f64::min);
        let hi = values.iter().cloned().fold(f64::MIN, f64::max);
        let (lo, hi) = if lo <= hi { (lo / 2.0, hi * 2.0) } else { (0.1, 10.0) };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d((dlo..dhi).log_scale(), (lo..hi).log_scale())
            .map_err(plot_err(path))?;
        chart.configure_mesh().x_desc("D (parameters)").draw().map_err(plot_err(path))?;
        let mut c = 0;
        for preset in &presets {
            for (name, f) in &series {
                let color = colors[c % colors.len()];
                c += 1;
                let pts: Vec<(f64, f64)> = report.rows.iter().filter(|r| &r.preset == preset).filter_map(|r| f(r).map(|v| (r.param_count as f64, v))).collect();
                if pts.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(plot_err(path))?
                    .label(format!("{name} ({preset})"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err(path))?;
            }
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(legend).draw().map_err(plot_err(path))?;
    }
    root.present().map_err(plot_err(path))
}
