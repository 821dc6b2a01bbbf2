//! Serving a bundle with ONNX Runtime (`ort`, loaded dynamically: no binary is downloaded or
//! linked at build time, and no libtorch is involved). A [`Sampler`] is `Send + Sync`: sessions sit behind mutexes, and the
//! sampler loop itself is the shared one of [`crate::diffusion`].
use crate::bundle::{Bundle, Manifest};
use crate::diffusion::{sample_params, DecoderBackend, DenoiserBackend, SamplerKind};
use crate::error::{Error, Result};
use crate::fsutil::{IfForeign, OutputDir, OutputKind};
use crate::params::Layout;
use ndarray::{Array2, ArrayView2};
use once_cell::sync::OnceCell;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Which execution provider to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    /// CUDA when this ONNX Runtime build has it and it registers, else CPU (reported).
    #[default]
    Auto,
    Cpu,
    /// CUDA, or an error: never a silent fallback when CUDA was explicitly required.
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
}

/// Names the system loader is asked for when nothing else names a library: the unversioned
/// development name first, then the soname of ONNX Runtime 1.x.
const LOADER_NAMES: [&str; 2] = ["libonnxruntime.so", "libonnxruntime.so.1"];

/// Where ONNX Runtime comes from, in this order: the explicit path, `$PDIFF_ORT_LIB`,
/// `$ORT_DYLIB_PATH`, then the system loader (`LD_LIBRARY_PATH`, the ld.so cache, the default
/// directories). A path from the first three must exist; the loader's search happens when the
/// library is opened. Nothing of the build tree is looked at: applications that ship ONNX
/// Runtime in a known place pass it explicitly.
pub fn library_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let check = |p: PathBuf, origin: &str| -> Result<PathBuf> {
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Runtime(format!("ONNX Runtime library not found at {} (from {origin})", p.display())))
        }
    };
    if let Some(p) = explicit {
        return check(p.to_path_buf(), "the explicit option");
    }
    for var in ["PDIFF_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return check(PathBuf::from(v), &format!("${var}"));
        }
    }
    Ok(PathBuf::from(LOADER_NAMES[0]))
}

struct Env {
    library: PathBuf,
    env: ort::environment::Environment,
}

static ENV: OnceCell<Env> = OnceCell::new();
static ENV_INIT: Mutex<()> = Mutex::new(());

/// Load ONNX Runtime once per process. Errors never go through `ort::Error` before the
/// library is loaded (constructing one would call into the missing library).
pub fn init(explicit: Option<&Path>) -> Result<&'static Path> {
    if let Some(e) = ENV.get() {
        return Ok(&e.library);
    }
    let _guard = ENV_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = ENV.get() {
        return Ok(&e.library);
    }
    let library = library_path(explicit)?;
    let builder = if library.is_absolute() || library.components().count() > 1 {
        ort::init_from(&library).map_err(|e| Error::Runtime(format!("cannot load {}: {e}", library.display())))?
    } else {
        // The system loader's search, under each of its names in turn.
        let mut last = String::new();
        let mut found = None;
        for name in LOADER_NAMES {
            match ort::init_from(name) {
                Ok(b) => {
                    found = Some(b);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        found.ok_or_else(|| {
            Error::Runtime(format!(
                "ONNX Runtime library not found: none of $PDIFF_ORT_LIB, $ORT_DYLIB_PATH is set and the system loader has no {} ({last}); \
                 set PDIFF_ORT_LIB to the path of libonnxruntime.so (pip's onnxruntime wheel ships it in onnxruntime/capi/)",
                LOADER_NAMES.join(" or ")
            ))
        })?
    };
    let env = builder.with_name("libpdiff").build().map_err(|e| Error::Runtime(format!("environment: {e}")))?;
    let e = ENV.get_or_init(|| Env { library, env });
    Ok(&e.library)
}

fn rt<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

/// Whether this ONNX Runtime build has the CUDA execution provider.
pub fn cuda_available(opts: &RuntimeOptions) -> Result<bool> {
    init(opts.library.as_deref())?;
    ort::ep::CUDA::is_available().map_err(rt("querying CUDA provider"))
}

fn open_session(bytes: &[u8], opts: &RuntimeOptions, use_cuda: bool, name: &str) -> Result<Session> {
    let env = &ENV.get().ok_or_else(|| Error::Runtime("ONNX Runtime is not initialized".into()))?.env;
    let mut builder = Session::builder(env).map_err(rt(name))?;
    if let Some(n) = opts.intra_threads.filter(|&n| n > 0) {
        builder = builder.with_intra_threads(n).map_err(rt(name))?;
    }
    if use_cuda {
        let ep = ort::ep::CUDA::default().with_device_id(opts.device_id).build().error_on_failure();
        builder = builder.with_execution_providers([ep]).map_err(rt("registering the CUDA execution provider"))?;
    }
    builder.commit_from_memory(bytes).map_err(rt(name))
}

/// Load ONNX bytes into a CPU session and drop it: the graph-loading path of [`Sampler::open`]
/// on its own (used by the fuzzer: malformed graphs must be errors, never crashes).
pub fn load_graph(bytes: &[u8], opts: &RuntimeOptions) -> Result<()> {
    init(opts.library.as_deref())?;
    open_session(bytes, opts, false, "graph").map(drop)
}

/// An exported generator served by ONNX Runtime.
pub struct Sampler {
    manifest: Manifest,
    layout: Layout,
    decoder: Mutex<Session>,
    denoiser: Mutex<Session>,
    provider: &'static str,
}

impl Sampler {
    /// Open a bundle: verify it (format version, hashes), load both graphs.
    pub fn open(dir: &Path, opts: &RuntimeOptions) -> Result<Self> {
        // Sessions are created from the very bytes whose sha256 was checked.
        let bundle = Bundle::read(dir, &["decoder", "denoiser"])?;
        init(opts.library.as_deref())?;
        let has_cuda = ort::ep::CUDA::is_available().map_err(rt("querying CUDA provider"))?;
        let (dec_bytes, den_bytes) = (bundle.file("decoder")?, bundle.file("denoiser")?);
        let open_both = |cuda: bool| -> Result<(Session, Session)> {
            Ok((open_session(&dec_bytes, opts, cuda, "decoder.onnx")?, open_session(&den_bytes, opts, cuda, "denoiser.onnx")?))
        };
        let (decoder, denoiser, provider) = match opts.provider {
            Provider::Cpu => {
                let (a, b) = open_both(false)?;
                (a, b, "onnxruntime-cpu")
            }
            Provider::Cuda => {
                if !has_cuda {
                    return Err(Error::DeviceUnavailable(format!(
                        "CUDA execution provider required, but the ONNX Runtime at {} was built without it (install onnxruntime-gpu)",
                        ENV.get().map(|e| e.library.display().to_string()).unwrap_or_default()
                    )));
                }
                let (a, b) = open_both(true).map_err(|e| Error::DeviceUnavailable(format!("CUDA execution provider required: {e}")))?;
                (a, b, "onnxruntime-cuda")
            }
            Provider::Auto => match has_cuda.then(|| open_both(true)) {
                Some(Ok((a, b))) => (a, b, "onnxruntime-cuda"),
                _ => {
                    let (a, b) = open_both(false)?;
                    (a, b, "onnxruntime-cpu")
                }
            },
        };
        let manifest = bundle.manifest;
        let layout = manifest.layout();
        Ok(Sampler { manifest, layout, decoder: Mutex::new(decoder), denoiser: Mutex::new(denoiser), provider })
    }

    /// "onnxruntime-cpu" or "onnxruntime-cuda": the provider actually in use.
    pub fn backend_name(&self) -> &'static str {
        self.provider
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Generate `n` parameter vectors ([n, D], host units).
    pub fn sample(&self, n: usize, seed: u64, kind: SamplerKind, on_step: &mut dyn FnMut(usize, usize) -> bool) -> Result<Array2<f32>> {
        sample_params(self, self, &self.manifest.schedule, kind, n, seed, on_step)
    }

    /// Generate into a caller buffer of at least n * D floats (row-major).
    pub fn sample_into(&self, n: usize, seed: u64, kind: SamplerKind, out: &mut [f32], on_step: &mut dyn FnMut(usize, usize) -> bool) -> Result<()> {
        let need = n.checked_mul(self.layout.param_count()).ok_or_else(|| Error::invalid("n", "too large"))?;
        if out.len() < need {
            return Err(Error::invalid("buffer", format!("{} floats given, {n} x {} = {need} needed", out.len(), self.layout.param_count())));
        }
        let a = self.sample(n, seed, kind, on_step)?;
        out[..need].copy_from_slice(a.as_slice().expect("standard layout"));
        Ok(())
    }

    /// Generate `n` models as named tensors: for each model, (name, shape, values) in layout
    /// order, ready to place into the host's own network.
    pub fn sample_named(&self, n: usize, seed: u64, kind: SamplerKind, on_step: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<Vec<(String, Vec<usize>, Vec<f32>)>>> {
        let a = self.sample(n, seed, kind, on_step)?;
        Ok(a.rows()
            .into_iter()
            .map(|row| {
                let row = row.as_slice().expect("standard layout");
                self.layout.split(row).map(|(t, v)| (t.name.clone(), t.shape.clone(), v.to_vec())).collect()
            })
            .collect())
    }

    /// Generate and write `gen_XXXX.safetensors` files with the original tensor names (see
    /// [`write_models`]; files libpdiff did not write at `dir` are refused).
    pub fn sample_to_dir(&self, n: usize, seed: u64, kind: SamplerKind, dir: &Path, on_step: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<PathBuf>> {
        self.sample_to_dir_with(n, seed, kind, dir, IfForeign::Refuse, on_step)
    }

    /// [`Sampler::sample_to_dir`] with the policy for files libpdiff did not write at `dir`.
    pub fn sample_to_dir_with(&self, n: usize, seed: u64, kind: SamplerKind, dir: &Path, if_foreign: IfForeign, on_step: &mut dyn FnMut(usize, usize) -> bool) -> Result<Vec<PathBuf>> {
        // Refuse an unusable destination before sampling.
        let out = OutputDir::begin(dir, OutputKind::Samples, if_foreign)?;
        let a = self.sample(n, seed, kind, on_step)?;
        write_models_into(out, &self.layout, a.as_slice().expect("standard layout"))
    }
}

/// Write rows of a [n, D] matrix as `gen_XXXX.safetensors` into `dir`, one output of kind
/// samples ([`crate::fsutil::OutputDir`]): a previous one is replaced atomically, files
/// libpdiff did not write are refused or, with [`IfForeign::Force`], kept beside.
pub fn write_models(layout: &Layout, rows: &[f32], dir: &Path, if_foreign: IfForeign) -> Result<Vec<PathBuf>> {
    write_models_into(OutputDir::begin(dir, OutputKind::Samples, if_foreign)?, layout, rows)
}

fn write_models_into(out: OutputDir, layout: &Layout, rows: &[f32]) -> Result<Vec<PathBuf>> {
    let d = layout.param_count();
    let mut files = Vec::new();
    for (i, row) in rows.chunks_exact(d).enumerate() {
        let name = format!("gen_{i:04}.safetensors");
        layout.save_safetensors(row, &out.path().join(&name))?;
        files.push(out.dest().join(name));
    }
    out.commit()?;
    Ok(files)
}

fn run_f32(session: &Mutex<Session>, inputs: Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'static>)>, output: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
    let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
    let out = s.run(inputs).map_err(rt("run"))?;
    let (shape, data) = out[output].try_extract_tensor::<f32>().map_err(rt("output"))?;
    if shape.len() != 2 || shape[0] as usize != rows || shape[1] as usize != cols {
        return Err(Error::Runtime(format!("{output}: shape {:?}, expected [{rows}, {cols}]", &shape[..])));
    }
    Array2::from_shape_vec((rows, cols), data.to_vec()).map_err(|e| Error::Runtime(e.to_string()))
}

impl DenoiserBackend for Sampler {
    fn latent_dim(&self) -> usize {
        self.manifest.latent_dim
    }
    fn predict_noise(&self, x: ArrayView2<'_, f32>, t: &[i64]) -> Result<Array2<f32>> {
        let (b, d) = x.dim();
        if d != self.latent_dim() || t.len() != b {
            return Err(Error::invalid("denoiser input", format!("x [{b}, {d}], t [{}]; expected [B, {}] and [B]", t.len(), self.latent_dim())));
        }
        let xv: Vec<f32> = x.iter().copied().collect();
        let xt = Tensor::from_array(([b, d], xv)).map_err(rt("x"))?;
        let tt = Tensor::from_array(([b], t.to_vec())).map_err(rt("t"))?;
        run_f32(&self.denoiser, ort::inputs!["x" => xt, "t" => tt], "eps", b, d)
    }
}

impl DecoderBackend for Sampler {
    fn param_count(&self) -> usize {
        self.manifest.param_count
    }
    fn decode(&self, z: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        let (b, d) = z.dim();
        if d != self.manifest.latent_dim {
            return Err(Error::invalid("decoder input", format!("z [{b}, {d}]; expected [B, {}]", self.manifest.latent_dim)));
        }
        let zv: Vec<f32> = z.iter().copied().collect();
        let zt = Tensor::from_array(([b, d], zv)).map_err(rt("z"))?;
        run_f32(&self.decoder, ort::inputs!["z" => zt], "params", b, self.manifest.param_count)
    }
}
