//! Serving a bundle with ONNX Runtime (`ort`, loaded at run time: no binary is downloaded or
//! linked at build time, and no libtorch is involved). A [`Sampler`] is `Send + Sync`: several
//! threads sample from one sampler in parallel (each graph keeps a small pool of sessions), and
//! the sampler loop itself is the shared one of [`crate::diffusion`].
mod host;
mod library;
mod session;

pub use host::{AdapterHost, HostAdapter};
pub use library::{cuda_library_dirs, init, library_path, preload_cuda_libraries, CudaPreload};

use crate::bundle::{Bundle, Manifest};
use crate::diffusion::{check_condition_input, count_outside_clip, CondInput, DecoderBackend, DenoiserBackend, RowCondition, SamplerKind};
use crate::error::{Error, Result};
use crate::generate::{ModelSource, OnStep, SampleRequest, Samples, StepLoop};
use crate::params::Layout;
use ndarray::{Array2, ArrayView2};
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::value::Tensor;
use session::{Dim, Port, SessionPool, SessionSettings};
use std::path::{Path, PathBuf};

/// Which execution provider to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    /// CUDA when this ONNX Runtime has it and every node of both graphs runs on it, else the
    /// CPU; [`Sampler::backend`] says which, and why.
    #[default]
    Auto,
    Cpu,
    /// CUDA, or an error naming what is missing: never a silent fallback when CUDA was
    /// explicitly required, not even for single nodes.
    Cuda,
}

impl std::str::FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Provider::Auto),
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            _ => Err(Error::invalid("provider", format!("'{s}' (expected auto, cpu or cuda)"))),
        }
    }
}

/// Options of the ONNX Runtime backend.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Path of libonnxruntime.so; default: $PDIFF_ORT_LIB, $ORT_DYLIB_PATH, then the system
    /// loader's libonnxruntime.so (see [`library_path`]).
    pub library: Option<PathBuf>,
    pub provider: Provider,
    /// Intra-op threads per session (0 or None: ONNX Runtime's default).
    pub intra_threads: Option<usize>,
    /// CUDA device index.
    pub device_id: i32,
    /// At most this many sessions per graph, i.e. threads sampling at the same time (None: the
    /// number of CPUs). Each costs one copy of the graph's weights.
    pub max_sessions: Option<usize>,
    /// Run DDIM as one graph (the bundle's sampler.onnx: the whole loop and the decoder in one
    /// run, no host round trip per step) instead of the step-by-step loop. None (the default):
    /// on CUDA when the bundle has it, never on the CPU; Some(true): always (an error when the
    /// bundle has no sampler.onnx); Some(false): never. DDPM always runs step by step.
    pub whole_loop: Option<bool>,
}

/// The execution provider a sampler runs on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// "onnxruntime-cpu" or "onnxruntime-cuda". "onnxruntime-cuda" means every node of both
    /// graphs runs on the GPU: ONNX Runtime's CPU fallback is disabled for CUDA sessions.
    pub name: &'static str,
    /// Why this provider: asked for, or (in auto mode) why CUDA was not used.
    pub detail: String,
    /// The ONNX Runtime library in use.
    pub library: PathBuf,
}

/// Whether this ONNX Runtime build has the CUDA execution provider.
pub fn cuda_available(opts: &RuntimeOptions) -> Result<bool> {
    init(opts.library.as_deref())?;
    ort::ep::CUDA::is_available().map_err(|e| Error::Runtime(format!("querying the CUDA provider: {e}")))
}

/// Load ONNX bytes into a CPU session and drop it: the graph-loading path of [`Sampler::open`]
/// on its own (used by the fuzzer: malformed graphs must be errors, never crashes). A graph
/// that keeps data in an external file is refused (no data file is given here, and ONNX
/// Runtime must not look for one on disk).
pub fn load_graph(bytes: &[u8], opts: &RuntimeOptions) -> Result<()> {
    let refs = crate::external_data::scan(bytes).map_err(|e| Error::Runtime(format!("graph: {e}")))?;
    if let Some(r) = refs.first() {
        return Err(Error::Runtime(format!("graph: tensor '{}' keeps its data in external file '{}', which is not given", r.tensor, r.location)));
    }
    init(opts.library.as_deref())?;
    session::create(bytes, None, &SessionSettings { intra_threads: opts.intra_threads, cuda_device: None, loop_bookkeeping_on_cpu: false }, "graph").map(drop)
}

/// What the sampler feeds to and reads from each graph (docs/bundle-format.md, "The graphs").
fn decoder_ports(m: &Manifest) -> (Vec<Port>, Vec<Port>) {
    (vec![Port::f32("z", &[Dim::Batch, Dim::Is(m.latent_dim)])], vec![Port::f32("params", &[Dim::Batch, Dim::Is(m.param_count)])])
}

fn sampler_ports(m: &Manifest) -> (Vec<Port>, Vec<Port>) {
    let mut inputs = vec![Port::f32("noise", &[Dim::Batch, Dim::Is(m.latent_dim)]), Port::i64("timesteps", &[Dim::Batch])];
    if let Some(c) = &m.condition {
        inputs.push(Port::f32("condition", &[Dim::Batch, Dim::Is(c.dim)]));
        inputs.push(Port::f32("guidance", &[]));
    }
    (inputs, vec![Port::f32("params", &[Dim::Batch, Dim::Is(m.param_count)]), Port::f32("latent", &[Dim::Batch, Dim::Is(m.latent_dim)])])
}

fn denoiser_ports(m: &Manifest) -> (Vec<Port>, Vec<Port>) {
    let mut inputs = vec![Port::f32("x", &[Dim::Batch, Dim::Is(m.latent_dim)]), Port::i64("t", &[Dim::Batch])];
    if let Some(c) = &m.condition {
        inputs.push(Port::f32("condition", &[Dim::Batch, Dim::Is(c.dim)]));
        inputs.push(Port::f32("condition_mask", &[Dim::Batch]));
    }
    (inputs, vec![Port::f32("eps", &[Dim::Batch, Dim::Is(m.latent_dim)])])
}

/// Turn ONNX Runtime's message about a CUDA session that could not be created into one that
/// names the missing piece: the provider library, a CUDA/cuDNN library, the driver or the device.
pub fn explain_cuda_failure(message: &str, preload: &CudaPreload) -> String {
    let searched = if preload.searched.is_empty() {
        "the loader's path only".to_string()
    } else {
        preload.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    };
    // The loader's words: "<library>: cannot open shared object file: ...".
    let missing_lib = message
        .find(": cannot open shared object file")
        .and_then(|end| message[..end].rsplit(|c: char| c.is_whitespace() || c == '\'' || c == '"').next())
        .filter(|lib| !lib.is_empty());
    let what = match missing_lib {
        Some(lib) if lib.starts_with("libonnxruntime_providers") => {
            format!("the CUDA provider library {lib} is missing beside libonnxruntime (install onnxruntime-gpu)")
        }
        Some(lib) => format!(
            "the CUDA library {lib} was not found (searched {searched}, then the loader's path; set PDIFF_CUDA_LIBRARY_PATH or LD_LIBRARY_PATH to the directory that holds it)"
        ),
        None if message.contains("fallback to CPU EP has been explicitly disabled") => {
            "a node of the graph has no CUDA kernel, and a required CUDA provider runs no node on the CPU (use the auto provider to allow the CPU)".to_string()
        }
        None if message.contains("driver") => "the NVIDIA driver is missing or too old for this CUDA".to_string(),
        None if message.contains("no CUDA-capable device") || message.contains("invalid device ordinal") => "no usable CUDA device".to_string(),
        None => "the CUDA execution provider could not be created".to_string(),
    };
    let mut text = format!("{what}: {message}");
    if !preload.missing.is_empty() {
        let names: Vec<&str> = preload.missing.iter().map(|(n, _)| n.as_str()).collect();
        text.push_str(&format!(" (not loadable before the provider started: {})", names.join(", ")));
    }
    text
}

/// An exported generator served by ONNX Runtime.
pub struct Sampler {
    manifest: Manifest,
    /// The sha256 of the bundle's pdiff.json ([`Bundle::manifest_sha256`]).
    manifest_sha256: String,
    layout: Layout,
    decoder: SessionPool,
    denoiser: SessionPool,
    /// sampler.onnx, when DDIM runs as one graph (see [`RuntimeOptions::whole_loop`]).
    whole_loop: Option<SessionPool>,
    backend: Backend,
}

/// The graphs' first sessions, checked; the pools are built from them.
struct Opened {
    decoder: Session,
    denoiser: Session,
    sampler: Option<Session>,
}

impl Sampler {
    /// Open a bundle: read and verify it (format version, hashes, sizes), load ONNX Runtime,
    /// create both graphs' sessions from the verified bytes on the provider asked for, and
    /// check each graph's inputs and outputs against the manifest.
    pub fn open(dir: &Path, opts: &RuntimeOptions) -> Result<Self> {
        // sampler.onnx is read when it may be used: on request, or in auto mode unless the CPU
        // was asked for (auto uses it on CUDA only).
        let mut maybe_loop = false;
        let bundle = Bundle::read_chosen(dir, |m| {
            let has_loop_graph = m.files.contains_key("sampler");
            if opts.whole_loop == Some(true) && !has_loop_graph {
                return Err(Error::bundle(
                    dir,
                    "has no sampler.onnx (the whole DDIM loop as one graph): re-export it with this version of libpdiff, or sample step by step",
                ));
            }
            maybe_loop = has_loop_graph && opts.whole_loop != Some(false) && !(opts.whole_loop.is_none() && opts.provider == Provider::Cpu);
            let mut roles = vec!["decoder".to_string(), "denoiser".to_string()];
            if maybe_loop {
                roles.push("sampler".into());
            }
            Ok(roles)
        })?;
        let library = init(opts.library.as_deref())?.to_path_buf();
        let cpu = SessionSettings { intra_threads: opts.intra_threads, cuda_device: None, loop_bookkeeping_on_cpu: false };
        let cuda = SessionSettings { intra_threads: opts.intra_threads, cuda_device: Some(opts.device_id), loop_bookkeeping_on_cpu: false };
        // In auto mode on the CPU the loop graph is not used: do not create its session.
        let with_loop = |cuda: bool| maybe_loop && (opts.whole_loop == Some(true) || cuda);
        let open_on = |settings: &SessionSettings| Self::open_graphs(&bundle, settings, with_loop(settings.cuda_device.is_some()));
        let (settings, opened, backend) = match opts.provider {
            Provider::Cpu => {
                let opened = open_on(&cpu)?;
                (cpu, opened, Backend { name: "onnxruntime-cpu", detail: "CPU execution provider (asked for)".into(), library })
            }
            Provider::Cuda => {
                let opened = Self::try_cuda(&library, opts, &|| open_on(&cuda))
                    .map_err(|reason| Error::DeviceUnavailable(format!("CUDA execution provider required, but {reason}")))?;
                let detail = format!("CUDA execution provider, device {} (asked for)", opts.device_id);
                (cuda, opened?, Backend { name: "onnxruntime-cuda", detail, library })
            }
            Provider::Auto => match Self::try_cuda(&library, opts, &|| open_on(&cuda)) {
                Ok(Ok(opened)) => {
                    let detail = format!("CUDA execution provider, device {} (auto)", opts.device_id);
                    (cuda, opened, Backend { name: "onnxruntime-cuda", detail, library })
                }
                // A bundle problem is the same on every provider: report it, do not fall back.
                Ok(Err(e @ Error::Bundle { .. })) => return Err(e),
                Ok(Err(e)) => {
                    let opened = open_on(&cpu)?;
                    let detail = format!("CPU execution provider: CUDA was not used ({e})");
                    (cpu, opened, Backend { name: "onnxruntime-cpu", detail, library })
                }
                Err(reason) => {
                    let opened = open_on(&cpu)?;
                    (cpu, opened, Backend { name: "onnxruntime-cpu", detail: format!("CPU execution provider: CUDA was not used ({reason})"), library })
                }
            },
        };
        let max = opts.max_sessions.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let mut bundle = bundle;
        let decoder = SessionPool::new("decoder.onnx", bundle.take_file("decoder")?, bundle.take_data("decoder"), settings.clone(), opened.decoder, max);
        let denoiser = SessionPool::new("denoiser.onnx", bundle.take_file("denoiser")?, bundle.take_data("denoiser"), settings.clone(), opened.denoiser, max);
        let whole_loop = match opened.sampler {
            Some(first) => {
                Some(SessionPool::new("sampler.onnx", bundle.take_file("sampler")?, bundle.take_data("sampler"), settings.for_loop_graph(), first, max))
            }
            None => None,
        };
        let layout = bundle.manifest.layout();
        Ok(Sampler { manifest: bundle.manifest, manifest_sha256: bundle.manifest_sha256, layout, decoder, denoiser, whole_loop, backend })
    }

    /// The CUDA attempt: `Err(reason)` when CUDA cannot even be tried (this ONNX Runtime lacks
    /// the provider), else the result of opening the graphs on it, with a failure explained
    /// (which library, the driver, the device) unless it is the bundle's own fault.
    fn try_cuda(library: &Path, opts: &RuntimeOptions, open: &dyn Fn() -> Result<Opened>) -> std::result::Result<Result<Opened>, String> {
        let available = ort::ep::CUDA::is_available().map_err(|e| format!("querying the CUDA provider: {e}"))?;
        if !available {
            return Err(format!("the ONNX Runtime at {} was built without the CUDA execution provider (install onnxruntime-gpu)", library.display()));
        }
        let preload = preload_cuda_libraries(library);
        Ok(open().map_err(|e| match e {
            Error::Runtime(m) => {
                Error::DeviceUnavailable(format!("CUDA execution provider, device {}: {}", opts.device_id, explain_cuda_failure(&m, &preload)))
            }
            other => other,
        }))
    }

    fn open_graphs(bundle: &Bundle, settings: &SessionSettings, with_loop: bool) -> Result<Opened> {
        let m = &bundle.manifest;
        let loop_settings = settings.for_loop_graph();
        let open = |role: &str, (inputs, outputs): (Vec<Port>, Vec<Port>)| -> Result<Session> {
            let file = &m.files[role];
            let settings = if role == "sampler" { &loop_settings } else { settings };
            let s = session::create(bundle.file(role)?, bundle.data(role), settings, file)?;
            session::check_signature(&s, file, &inputs, &outputs).map_err(|e| Error::bundle(&bundle.dir, e))?;
            Ok(s)
        };
        Ok(Opened {
            decoder: open("decoder", decoder_ports(m))?,
            denoiser: open("denoiser", denoiser_ports(m))?,
            sampler: if with_loop { Some(open("sampler", sampler_ports(m))?) } else { None },
        })
    }

    /// Whether DDIM runs as one graph (sampler.onnx) on this sampler.
    pub fn runs_whole_loop(&self) -> bool {
        self.whole_loop.is_some()
    }

    /// DDIM through sampler.onnx: the request's rows of the step-by-step loop's initial noise,
    /// the DDIM timesteps, one run. The graph also returns the standardized latents before the
    /// decoder clips them, which the clip count is taken from.
    fn sample_whole_loop(&self, pool: &SessionPool, request: &SampleRequest<'_>, steps: usize, on_step: OnStep<'_>) -> Result<Samples> {
        request.validate(self.condition_dim())?;
        let schedule = &self.manifest.schedule;
        crate::diffusion::check_kind(schedule, SamplerKind::Ddim { steps })?;
        let rows = request.rows();
        let condition = RowCondition::new(self.condition_dim(), request.condition.as_ref(), rows.len())?;
        let (n, d) = (rows.len(), self.manifest.latent_dim);
        let noise = crate::diffusion::initial_noise(request.seed, rows, d);
        let seq: Vec<i64> = crate::diffusion::ddim_timesteps(schedule.timesteps, steps).into_iter().map(|t| t as i64).collect();
        let noise = Tensor::from_array(([n, d], noise.into_raw_vec_and_offset().0)).map_err(tensor_err("noise"))?;
        let seq = Tensor::from_array(([seq.len()], seq)).map_err(tensor_err("timesteps"))?;
        let mut inputs = ort::inputs!["noise" => noise, "timesteps" => seq];
        // The graph's guidance 0 is "no condition" (eps = eps_none).
        let (values, guidance) = match condition {
            RowCondition::Unconditional => (None, 0.0),
            RowCondition::Null(zeros) => (Some(zeros), 0.0),
            RowCondition::Guided { values, guidance } => (Some(values), guidance),
        };
        if let Some(v) = values {
            let c = v.ncols();
            inputs.push(("condition".into(), Tensor::from_array(([n, c], v.into_raw_vec_and_offset().0)).map_err(tensor_err("condition"))?.into()));
            inputs.push(("guidance".into(), Tensor::from_array((Vec::<usize>::new(), vec![guidance])).map_err(tensor_err("guidance"))?.into()));
        }
        let (params, latent) = pool.with(|s| {
            let out = s.run(inputs).map_err(|e| Error::Runtime(format!("run: {e}")))?;
            Ok((take_f32(&out, "params", n, self.manifest.param_count)?, take_f32(&out, "latent", n, d)?))
        })?;
        let clipped = count_outside_clip(latent.view(), &self.manifest.latent.clip)?;
        if !on_step(steps, steps) {
            return Err(Error::Cancelled);
        }
        Ok(Samples { params, clipped })
    }

    /// "onnxruntime-cpu" or "onnxruntime-cuda": the provider actually in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name
    }
    /// The provider in use, why, and the ONNX Runtime library.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    /// Sessions created so far per graph (decoder, denoiser): grows with concurrent callers.
    pub fn sessions(&self) -> (usize, usize) {
        (self.decoder.created(), self.denoiser.created())
    }

    /// C, for a conditional generator.
    pub fn condition_dim(&self) -> Option<usize> {
        self.manifest.condition.as_ref().map(|c| c.dim)
    }

    /// The step-by-step loop over this sampler's denoiser and decoder sessions.
    fn step_loop(&self) -> StepLoop<'_> {
        StepLoop { denoiser: self, decoder: self, schedule: &self.manifest.schedule, layout: &self.layout }
    }
}

/// DDIM runs as one graph when [`Sampler::runs_whole_loop`] (`on_step` is then called once, at
/// the end), else step by step through the shared loop of [`crate::diffusion`]; both give the
/// same models.
impl ModelSource for Sampler {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn bundle_sha256(&self) -> Option<&str> {
        Some(&self.manifest_sha256)
    }

    fn condition_dim(&self) -> Option<usize> {
        Sampler::condition_dim(self)
    }

    fn sample(&self, request: &SampleRequest<'_>, on_step: OnStep<'_>) -> Result<Samples> {
        match (request.sampler, &self.whole_loop) {
            (SamplerKind::Ddim { steps }, Some(pool)) => self.sample_whole_loop(pool, request, steps, on_step),
            _ => self.step_loop().sample(request, on_step),
        }
    }
}

/// Run a session and take one f32 output of shape [rows, cols].
fn run_f32(
    session: &mut Session,
    inputs: Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'static>)>,
    output: &str,
    rows: usize,
    cols: usize,
) -> Result<Array2<f32>> {
    let out = session.run(inputs).map_err(|e| Error::Runtime(format!("run: {e}")))?;
    take_f32(&out, output, rows, cols)
}

/// The f32 output `output` of a run, of shape [rows, cols]; any other outcome (a missing output,
/// another element type or shape) is an error naming the output, never a panic.
fn take_f32(out: &ort::session::SessionOutputs<'_>, output: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
    let value = out.get(output).ok_or_else(|| Error::Runtime(format!("the graph returned no output '{output}'")))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| Error::Runtime(format!("output '{output}': {e}")))?;
    if shape.len() != 2 || shape[0] != rows as i64 || shape[1] != cols as i64 {
        return Err(Error::Runtime(format!("output '{output}': shape {:?}, expected [{rows}, {cols}]", &shape[..])));
    }
    Array2::from_shape_vec((rows, cols), data.to_vec()).map_err(|e| Error::Runtime(e.to_string()))
}

fn tensor_err(what: &'static str) -> impl FnOnce(ort::Error) -> Error {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

impl DenoiserBackend for Sampler {
    fn latent_dim(&self) -> usize {
        self.manifest.latent_dim
    }
    fn condition_dim(&self) -> Option<usize> {
        Sampler::condition_dim(self)
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64], cond: Option<CondInput<'_>>) -> Result<Array2<f32>> {
        let (b, d) = x.dim();
        if d != self.latent_dim() || t.len() != b {
            return Err(Error::invalid("denoiser input", format!("x [{b}, {d}], t [{}]; expected [B, {}] and [B]", t.len(), self.latent_dim())));
        }
        check_condition_input(Sampler::condition_dim(self), b, cond.as_ref())?;
        let xv: Vec<f32> = x.iter().copied().collect();
        let xt = Tensor::from_array(([b, d], xv)).map_err(tensor_err("x"))?;
        let tt = Tensor::from_array(([b], t.to_vec())).map_err(tensor_err("t"))?;
        let mut inputs = ort::inputs!["x" => xt, "t" => tt];
        if let Some(c) = cond {
            let values = Tensor::from_array(([b, c.values.ncols()], c.values.iter().copied().collect::<Vec<f32>>())).map_err(tensor_err("condition"))?;
            let mask = Tensor::from_array(([b], c.mask.to_vec())).map_err(tensor_err("condition_mask"))?;
            inputs.push(("condition".into(), values.into()));
            inputs.push(("condition_mask".into(), mask.into()));
        }
        self.denoiser.with(|s| run_f32(s, inputs, "eps", b, d))
    }
}

impl DecoderBackend for Sampler {
    fn param_count(&self) -> usize {
        self.manifest.param_count
    }
    fn latent_clip(&self) -> &[f32] {
        &self.manifest.latent.clip
    }
    fn decode(&self, z: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (b, d) = z.dim();
        if d != self.manifest.latent_dim {
            return Err(Error::invalid("decoder input", format!("z [{b}, {d}]; expected [B, {}]", self.manifest.latent_dim)));
        }
        let zv: Vec<f32> = z.iter().copied().collect();
        let zt = Tensor::from_array(([b, d], zv)).map_err(tensor_err("z"))?;
        self.decoder.with(|s| run_f32(s, ort::inputs!["z" => zt], "params", b, self.manifest.param_count))
    }
}
