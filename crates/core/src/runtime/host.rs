//! A host model served by ONNX Runtime with adapters swapped per run (docs/api.md,
//! "Adapters"): one session over the host's model (prepared by `pdiff onnx expose`), any number
//! of adapters loaded from memory (the bytes libpdiff generates), one of them active per `Run`
//! (`RunOptions::AddActiveLoraAdapter`). The reference Rust host: what an engine written on the
//! `ort` crate does with generated models.
use super::library;
use super::session::{create, SessionSettings};
use super::{init, RuntimeOptions};
use crate::error::{Error, Result};
use ort::session::{Adapter, RunOptions, Session};
use ort::value::Tensor;
use parking_lot::Mutex;

fn rt<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

/// One host model in one session (CPU execution provider), with one float input and one float
/// output.
pub struct AdapterHost {
    session: Mutex<Session>,
    input: String,
    output: String,
}

/// An adapter loaded into ONNX Runtime (its tensors on the CPU), ready to be activated.
pub struct HostAdapter {
    adapter: Adapter,
}

impl AdapterHost {
    /// A session over `model` (ONNX bytes; `what` names it in errors) whose first input and
    /// first output are used by [`AdapterHost::run`].
    pub fn open(model: &[u8], what: &str, opts: &RuntimeOptions) -> Result<Self> {
        init(opts.library.as_deref())?;
        let settings = SessionSettings { intra_threads: opts.intra_threads, cuda_device: None, loop_bookkeeping_on_cpu: false };
        let session = create(model, None, &settings, what)?;
        let input = session.inputs().first().map(|i| i.name().to_string()).ok_or_else(|| Error::Runtime(format!("{what}: the model has no input")))?;
        let output = session.outputs().first().map(|o| o.name().to_string()).ok_or_else(|| Error::Runtime(format!("{what}: the model has no output")))?;
        Ok(AdapterHost { session: Mutex::new(session), input, output })
    }

    /// Load adapter bytes (`.onnx_adapter` format) into ONNX Runtime (`CreateLoraAdapterFromArray`).
    /// ONNX Runtime verifies them; a damaged adapter is an error naming `what`.
    pub fn load_adapter(&self, bytes: &[u8], what: &str) -> Result<HostAdapter> {
        library::env()?;
        Ok(HostAdapter { adapter: Adapter::from_memory(bytes, None).map_err(rt(what))? })
    }

    /// Run the model on `input` of `shape` with `adapter` active (None: the model's own
    /// initializers); returns the first output, flat.
    pub fn run(&self, input: &[f32], shape: &[usize], adapter: Option<&HostAdapter>) -> Result<Vec<f32>> {
        let tensor = Tensor::from_array((shape.to_vec(), input.to_vec())).map_err(rt("input"))?;
        let mut options = RunOptions::new().map_err(rt("run options"))?;
        if let Some(a) = adapter {
            options.add_adapter(&a.adapter).map_err(rt("activating the adapter"))?;
        }
        let mut session = self.session.lock();
        let outputs = session.run_with_options(ort::inputs![self.input.as_str() => tensor], &options).map_err(rt("run"))?;
        let (_, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>().map_err(rt("output"))?;
        Ok(values.to_vec())
    }
}
