//! ONNX Runtime sessions of one graph: how they are created (execution provider, threads),
//! checked against what the manifest says the graph is, and shared between threads.
//!
//! `ort` runs a session through `&mut Session`: its author documents that ONNX Runtime's own
//! `Run` is not reliably thread-safe (some execution providers' allocators and statistics are
//! not), so concurrent runs of one session are off the table. Instead each graph has a small
//! pool: a thread takes an idle session or, when all are busy and the pool is below its bound,
//! creates one more from the same verified bytes. Two threads then really sample in parallel;
//! the cost is one copy of the graph's weights per concurrent caller.
use super::library;
use crate::bundle::GraphData;
use crate::error::{Error, Result};
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
// parking_lot rather than std's: its locking is Rust code compiled with our crate, so the
// ThreadSanitizer build of the C thread test sees every acquire and release (std's contended
// paths live in the uninstrumented standard library, and TSan then reports the pool's Vec as
// racing under its own lock).
use parking_lot::{Condvar, Mutex};

/// How every session of a sampler is created.
#[derive(Clone, Debug)]
pub(crate) struct SessionSettings {
    pub intra_threads: Option<usize>,
    /// `Some(device)`: the CUDA execution provider, with ONNX Runtime's fallback of unsupported
    /// nodes to the CPU disabled (unless `loop_bookkeeping_on_cpu`), so a session that exists
    /// runs entirely on the GPU.
    pub cuda_device: Option<i32>,
    /// For sampler.onnx: keep the CPU fallback on. ONNX Runtime places a Loop's trip count and
    /// the integer step bookkeeping that feeds it (Shape, Squeeze, Sub on `timesteps`) on the
    /// CPU by design (its "CPU-preferred" shape nodes), and with the fallback disabled it would
    /// refuse the graph for them. Every node that touches the batch (the networks, the DDIM
    /// arithmetic) has a CUDA kernel; decoder.onnx and denoiser.onnx hold no shape node
    /// (tests/runtime.rs checks), so they stay strict.
    pub loop_bookkeeping_on_cpu: bool,
}

impl SessionSettings {
    /// These settings for sampler.onnx (see `loop_bookkeeping_on_cpu`).
    pub fn for_loop_graph(&self) -> SessionSettings {
        SessionSettings { loop_bookkeeping_on_cpu: true, ..self.clone() }
    }
}

fn rt<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

/// Create one session from ONNX bytes. `file` names the graph in errors. `data`: the graph's
/// verified external data file ([`crate::bundle::Bundle`] checked every reference of the graph
/// against it), handed to ONNX Runtime from memory under the name the graph's initializers
/// give as their location: a graph given from memory has no directory, and ONNX Runtime must
/// not look for its data anywhere on disk.
pub(crate) fn create(bytes: &[u8], data: Option<&GraphData>, settings: &SessionSettings, file: &str) -> Result<Session> {
    let env = &library::env()?.env;
    let mut builder = Session::builder(env).map_err(rt(file))?;
    if let Some(d) = data {
        builder = builder.with_external_initializer_file_in_memory(&d.name, d.bytes.clone()).map_err(rt(file))?;
    }
    if let Some(n) = settings.intra_threads.filter(|&n| n > 0) {
        builder = builder.with_intra_threads(n).map_err(rt(file))?;
    }
    if let Some(device) = settings.cuda_device {
        let ep = ort::ep::CUDA::default().with_device_id(device).build().error_on_failure();
        builder = builder.with_execution_providers([ep]).map_err(rt("registering the CUDA execution provider"))?;
        if !settings.loop_bookkeeping_on_cpu {
            builder = builder.with_disable_cpu_fallback().map_err(rt(file))?;
        }
    }
    builder.commit_from_memory(bytes).map_err(rt(file))
}

/// One dimension of a graph input or output, as the sampler uses it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dim {
    /// The batch dimension: any size, fixed or symbolic.
    Batch,
    /// A width the manifest fixes (latent d, parameters D, condition C).
    Is(usize),
}

/// A tensor the sampler feeds to or reads from a graph.
#[derive(Clone, Debug)]
pub(crate) struct Port {
    pub name: &'static str,
    pub ty: TensorElementType,
    pub dims: Vec<Dim>,
}

impl Port {
    pub fn f32(name: &'static str, dims: &[Dim]) -> Port {
        Port { name, ty: TensorElementType::Float32, dims: dims.to_vec() }
    }
    pub fn i64(name: &'static str, dims: &[Dim]) -> Port {
        Port { name, ty: TensorElementType::Int64, dims: dims.to_vec() }
    }
}

/// Check a session's inputs and outputs against what the manifest says the graph is: every
/// expected input exists with its element type, rank and widths, no other input is required,
/// every expected output exists likewise. The error names the file and the tensor: a bundle
/// written by another tool that renamed an output is refused here, at open, instead of failing
/// (or worse) in the middle of sampling.
/// The message names the file and the tensor; the caller makes it a bundle error.
pub(crate) fn check_signature(session: &Session, file: &str, inputs: &[Port], outputs: &[Port]) -> std::result::Result<(), String> {
    let names = |list: &[ort::value::Outlet]| list.iter().map(|o| format!("'{}'", o.name())).collect::<Vec<_>>().join(", ");
    for want in inputs {
        let got = session
            .inputs()
            .iter()
            .find(|o| o.name() == want.name)
            .ok_or_else(|| format!("{file}: input '{}' is missing (the graph's inputs: {})", want.name, names(session.inputs())))?;
        check_port(file, "input", want, got.dtype())?;
    }
    if let Some(extra) = session.inputs().iter().find(|o| !inputs.iter().any(|w| w.name == o.name())) {
        return Err(format!(
            "{file}: unexpected input '{}' (this sampler feeds {})",
            extra.name(),
            inputs.iter().map(|p| format!("'{}'", p.name)).collect::<Vec<_>>().join(", ")
        ));
    }
    for want in outputs {
        let got = session
            .outputs()
            .iter()
            .find(|o| o.name() == want.name)
            .ok_or_else(|| format!("{file}: output '{}' is missing (the graph's outputs: {})", want.name, names(session.outputs())))?;
        check_port(file, "output", want, got.dtype())?;
    }
    Ok(())
}

fn check_port(file: &str, kind: &str, want: &Port, got: &ValueType) -> std::result::Result<(), String> {
    let ValueType::Tensor { ty, shape, .. } = got else {
        return Err(format!("{file}: {kind} '{}' is not a tensor ({got:?})", want.name));
    };
    if *ty != want.ty {
        return Err(format!("{file}: {kind} '{}' has element type {ty:?}, expected {:?}", want.name, want.ty));
    }
    if shape.len() != want.dims.len() {
        return Err(format!("{file}: {kind} '{}' has rank {} ({shape}), expected rank {}", want.name, shape.len(), want.dims.len()));
    }
    for (axis, (dim, &size)) in want.dims.iter().zip(shape.iter()).enumerate() {
        // A symbolic width (-1) is accepted here; the sampler checks every output's actual
        // shape after each run.
        if let Dim::Is(n) = dim {
            if size >= 0 && size as usize != *n {
                return Err(format!("{file}: {kind} '{}' has size {size} on axis {axis} ({shape}), the manifest says {n}", want.name));
            }
        }
    }
    Ok(())
}

/// The sessions of one graph, shared by the threads of a sampler.
pub(crate) struct SessionPool {
    file: String,
    /// The verified graph bytes (and external data), kept to create more sessions when
    /// threads need them.
    bytes: Vec<u8>,
    data: Option<GraphData>,
    settings: SessionSettings,
    max: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    created: usize,
}

impl SessionPool {
    /// A pool whose first session is `first` (created and checked by the caller), growing to
    /// at most `max` sessions.
    pub fn new(file: &str, bytes: Vec<u8>, data: Option<GraphData>, settings: SessionSettings, first: Session, max: usize) -> SessionPool {
        SessionPool {
            file: file.to_string(),
            bytes,
            data,
            settings,
            max: max.max(1),
            state: Mutex::new(PoolState { idle: vec![first], created: 1 }),
            returned: Condvar::new(),
        }
    }

    /// Run `f` with a session of this pool to itself: an idle one, a new one while the pool is
    /// below its bound, else the next one returned. The session goes back to the pool however
    /// `f` ends (a panic included).
    pub fn with<R>(&self, f: impl FnOnce(&mut Session) -> Result<R>) -> Result<R> {
        let mut lease = Lease { pool: self, session: Some(self.take()?) };
        f(lease.session.as_mut().expect("a lease holds its session until dropped"))
    }

    fn take(&self) -> Result<Session> {
        let mut state = self.state.lock();
        loop {
            if let Some(s) = state.idle.pop() {
                return Ok(s);
            }
            if state.created < self.max {
                state.created += 1;
                drop(state);
                // Created outside the lock: other threads keep taking and returning sessions.
                return create(&self.bytes, self.data.as_ref(), &self.settings, &self.file).inspect_err(|_| {
                    self.state.lock().created -= 1;
                });
            }
            self.returned.wait(&mut state);
        }
    }

    fn give_back(&self, session: Session) {
        self.state.lock().idle.push(session);
        self.returned.notify_one();
    }

    /// Sessions created so far (for tests and the benchmark).
    pub fn created(&self) -> usize {
        self.state.lock().created
    }
}

/// A session taken from a pool, returned when dropped.
struct Lease<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.give_back(s);
        }
    }
}
