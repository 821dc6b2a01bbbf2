//! Generating models: one request ([`SampleRequest`]: how many models, from which noise, with
//! which sampler, for which condition), one trait for whatever runs the networks
//! ([`ModelSource`]: ONNX Runtime's [`crate::runtime::Sampler`], pdiff-train's generator, or any
//! pair of backends through [`StepLoop`]), and the ways out: an array, a caller's buffer, the
//! host's own tensors, safetensors files. Every way gives the same models for the same request,
//! bit for bit, and reports how many generated latents the decoder had to clip.
mod files;
mod provenance;
mod sinks;

pub use files::{write_models, ModelFormat, ModelWriter, WriteOptions, PROVENANCE_FILE};
pub use provenance::Provenance;
pub use sinks::{check_sinks, TensorSink};

use crate::adapter::{AdapterVersions, NameMap};
use crate::diffusion::{
    check_condition_len, count_outside_clip, sample_latents, ClipCount, Conditioning, DecoderBackend, DenoiserBackend, SamplerKind, Schedule,
};
use crate::error::{Error, Result};
use crate::output::IfForeign;
use crate::params::Layout;
use ndarray::Array2;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What to generate. `SampleRequest::new(n)` asks for models 0..n of seed 0 with DDIM-50 and no
/// condition; the builder methods change one field each.
///
/// Model i depends only on the seed, the sampler, the condition and i: rows
/// `first..first + n` of a request are the same models whether they are generated alone, in
/// chunks or among any number of others.
#[derive(Clone, Copy, Debug)]
pub struct SampleRequest<'a> {
    /// Models to generate (at least 1).
    pub n: usize,
    /// Index of the first model: the request generates models `first..first + n`.
    pub first: usize,
    /// Seed of the initial noise (and of DDPM's noise).
    pub seed: u64,
    pub sampler: SamplerKind,
    /// The condition of a conditional generator: C values for every model, or n x C (one per
    /// model, in order); `None` samples its unconditional model (and is the only choice for an
    /// unconditional generator).
    pub condition: Option<Conditioning<'a>>,
}

/// DDIM with 50 steps: the sampler a request gets unless it names another.
pub const DEFAULT_SAMPLER: SamplerKind = SamplerKind::Ddim { steps: 50 };

impl<'a> SampleRequest<'a> {
    pub fn new(n: usize) -> Self {
        SampleRequest { n, first: 0, seed: 0, sampler: DEFAULT_SAMPLER, condition: None }
    }
    pub fn seed(self, seed: u64) -> Self {
        SampleRequest { seed, ..self }
    }
    pub fn sampler(self, sampler: SamplerKind) -> Self {
        SampleRequest { sampler, ..self }
    }
    pub fn condition(self, condition: Conditioning<'a>) -> Self {
        SampleRequest { condition: Some(condition), ..self }
    }
    /// Models `first..first + n` instead of `0..n`.
    pub fn starting_at(self, first: usize) -> Self {
        SampleRequest { first, ..self }
    }

    /// The model indices this request generates.
    pub fn rows(&self) -> Range<usize> {
        self.first..self.first + self.n
    }

    /// At least one model, indices that fit a `usize`, and a condition of exactly C or n x C
    /// values for a generator conditioned on C values (`condition_dim`).
    pub fn validate(&self, condition_dim: Option<usize>) -> Result<()> {
        if self.n == 0 {
            return Err(Error::invalid("n", "number of samples must be at least 1"));
        }
        if self.first.checked_add(self.n).is_none() {
            return Err(Error::invalid("n", format!("models {} .. {} + {} overflow", self.first, self.first, self.n)));
        }
        if let (Some(c), Some(cond)) = (condition_dim, &self.condition) {
            check_condition_len(c, cond.values.len(), self.n)?;
        }
        Ok(())
    }

    /// The part of this (validated) request that generates its models `part` (indices relative
    /// to `first`); a condition given per model keeps the part's rows.
    fn part(&self, part: Range<usize>, condition_dim: Option<usize>) -> SampleRequest<'a> {
        let condition = match (self.condition, condition_dim) {
            (Some(cond), Some(c)) if cond.values.len() != c => Some(Conditioning { values: &cond.values[part.start * c..part.end * c], ..cond }),
            (cond, _) => cond,
        };
        SampleRequest { n: part.len(), first: self.first + part.start, condition, ..*self }
    }
}

/// Generated models: `params` [n, D] in the host's units (the layout's order), and how many of
/// their latents fell outside the training range and were clipped by the decoder.
#[derive(Clone, Debug)]
pub struct Samples {
    pub params: Array2<f32>,
    pub clipped: ClipCount,
}

/// Progress of a sampling call: `(steps done, steps in all)`; return `false` to cancel (the
/// call then fails with [`Error::Cancelled`]).
pub type OnStep<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// A progress callback that reports nowhere and never cancels.
pub fn no_progress(_done: usize, _total: usize) -> bool {
    true
}

/// Generated parameters held at once by [`ModelSource::sample_to_dir`] (whole models, at least
/// one).
const TO_DIR_CHUNK_BYTES: usize = 16 << 20;
/// Generated parameters held at once by [`ModelSource::sample_into_tensors`].
const INTO_TENSORS_CHUNK_BYTES: usize = 4 << 20;

/// Something that generates models for a request. Implementors provide the layout and
/// [`ModelSource::sample`]; every other way out is built on them.
pub trait ModelSource {
    /// The layout of a generated model (tensor names, shapes, offsets).
    fn layout(&self) -> &Layout;

    /// C, for a generator conditioned on C values.
    fn condition_dim(&self) -> Option<usize>;

    /// The sha256 of the bundle's pdiff.json, for a generator read from a bundle: recorded in
    /// the files it writes.
    fn bundle_sha256(&self) -> Option<&str> {
        None
    }

    /// The provenance of `request`'s models from this source.
    fn provenance<'r>(&'r self, request: &SampleRequest<'r>) -> Provenance<'r> {
        Provenance { bundle_sha256: self.bundle_sha256(), seed: request.seed, sampler: request.sampler, condition: request.condition }
    }

    /// Generate the request's models at once.
    fn sample(&self, request: &SampleRequest<'_>, on_step: OnStep<'_>) -> Result<Samples>;

    /// Rows per chunk so that a chunk of generated parameters holds at most `bytes`.
    fn rows_within(&self, bytes: usize) -> usize {
        (bytes / (4 * self.layout().param_count().max(1))).max(1)
    }

    /// Generate the request's models in chunks of at most `chunk` models and hand each to
    /// `on_chunk(index of its first model relative to the request, models)`: memory stays
    /// bounded by `chunk` x D whatever n is. `on_step` counts the steps of all chunks. Returns
    /// the clip count of all of them.
    fn sample_chunks(
        &self,
        request: &SampleRequest<'_>,
        chunk: usize,
        on_chunk: &mut dyn FnMut(usize, &Samples) -> Result<()>,
        on_step: OnStep<'_>,
    ) -> Result<ClipCount> {
        request.validate(self.condition_dim())?;
        let chunk = chunk.max(1);
        let chunks = request.n.div_ceil(chunk);
        let mut clipped = ClipCount::default();
        for c in 0..chunks {
            let part = c * chunk..((c + 1) * chunk).min(request.n);
            let first = part.start;
            let samples = self.sample(&request.part(part, self.condition_dim()), &mut |done, total| on_step(c * total + done, chunks * total))?;
            clipped += samples.clipped;
            on_chunk(first, &samples)?;
        }
        Ok(clipped)
    }

    /// Generate into a caller buffer of at least n x D floats (row-major).
    fn sample_into(&self, request: &SampleRequest<'_>, out: &mut [f32], on_step: OnStep<'_>) -> Result<ClipCount> {
        request.validate(self.condition_dim())?;
        let d = self.layout().param_count();
        let need = request.n.checked_mul(d).ok_or_else(|| Error::invalid("n", format!("n = {} times D = {d} overflows", request.n)))?;
        if out.len() < need {
            return Err(Error::invalid("buffer", format!("{} floats given, {} x {d} = {need} needed", out.len(), request.n)));
        }
        let samples = self.sample(request, on_step)?;
        out[..need].copy_from_slice(samples.params.as_slice().expect("standard layout"));
        Ok(samples.clipped)
    }

    /// Generate straight into the host's own tensors: each [`TensorSink`] names a tensor of the
    /// layout (by index) and holds n x numel floats, model i's values at
    /// `[i * numel, (i + 1) * numel)`. Tensors without a sink are generated but not kept. Models
    /// are generated in chunks of about 4 MiB of parameters and scattered into the sinks as they
    /// come: no n x D copy is ever held. Every sink is checked before any work (index, length,
    /// duplicates); after a later error the sinks' contents are unspecified.
    fn sample_into_tensors(&self, request: &SampleRequest<'_>, sinks: &mut [TensorSink<'_>], on_step: OnStep<'_>) -> Result<ClipCount> {
        request.validate(self.condition_dim())?;
        check_sinks(self.layout(), request.n, sinks)?;
        let tensors = &self.layout().tensors;
        self.sample_chunks(
            request,
            self.rows_within(INTO_TENSORS_CHUNK_BYTES),
            &mut |first, samples| {
                for (j, row) in samples.params.rows().into_iter().enumerate() {
                    let row = row.as_slice().expect("standard layout");
                    let i = first + j;
                    for sink in sinks.iter_mut() {
                        let t = &tensors[sink.tensor];
                        let numel = t.numel();
                        sink.out[i * numel..(i + 1) * numel].copy_from_slice(&row[t.offset..t.offset + numel]);
                    }
                }
                Ok(())
            },
            on_step,
        )
    }

    /// Generate one model (`request.n` must be 1; its index is `request.first`) as ONNX
    /// Runtime adapter bytes ([`crate::adapter::model_adapter`]: the model index as the
    /// adapter_version), ready for `CreateLoraAdapterFromArray`. Returns the bytes and the clip
    /// count.
    fn sample_adapter(&self, request: &SampleRequest<'_>, names: &NameMap, on_step: OnStep<'_>) -> Result<(Vec<u8>, ClipCount)> {
        request.validate(self.condition_dim())?;
        if request.n != 1 {
            return Err(Error::invalid("n", format!("an adapter holds one model, {} were asked for", request.n)));
        }
        names.check(self.layout())?;
        let adapter_version = i32::try_from(request.first)
            .map_err(|_| Error::invalid("model index", format!("{} does not fit the adapter format's 32-bit adapter_version", request.first)))?;
        let samples = self.sample(request, on_step)?;
        let row = samples.params.row(0);
        let bytes = crate::adapter::model_adapter(
            self.layout(),
            row.as_slice().expect("standard layout"),
            names,
            AdapterVersions { adapter_version, model_version: 0 },
        )?;
        Ok((bytes, samples.clipped))
    }

    /// Generate and write `gen_XXXX.safetensors` files (the layout's tensor names, the
    /// provenance in `__metadata__`) into `dir`: [`ModelSource::sample_to_dir_with`] with the
    /// default format.
    fn sample_to_dir(&self, request: &SampleRequest<'_>, dir: &Path, if_foreign: IfForeign, on_step: OnStep<'_>) -> Result<(Vec<PathBuf>, ClipCount)> {
        self.sample_to_dir_with(request, dir, &WriteOptions { if_foreign, ..WriteOptions::default() }, on_step)
    }

    /// Generate and write one file per model (`gen_XXXX.safetensors` or `.onnx_adapter`, see
    /// [`ModelFormat`]) into `dir`, one output of kind samples ([`ModelWriter`]): a refusal
    /// comes before any sampling; models are generated and written in chunks of about 16 MiB
    /// of parameters, so memory does not grow with n. Every file records its provenance.
    /// Returns the files' final paths and the clip count.
    fn sample_to_dir_with(&self, request: &SampleRequest<'_>, dir: &Path, options: &WriteOptions, on_step: OnStep<'_>) -> Result<(Vec<PathBuf>, ClipCount)> {
        request.validate(self.condition_dim())?;
        let provenance = (self.provenance(request), request.first, self.condition_dim());
        let mut out = ModelWriter::begin_with(dir, self.layout(), options.clone(), Some(provenance))?;
        let clipped = self.sample_chunks(
            request,
            self.rows_within(TO_DIR_CHUNK_BYTES),
            &mut |first, samples| {
                for (j, row) in samples.params.rows().into_iter().enumerate() {
                    out.write(first + j, row.as_slice().expect("standard layout"))?;
                }
                Ok(())
            },
            on_step,
        )?;
        Ok((out.commit()?, clipped))
    }
}

/// The step-by-step sampler loop ([`crate::diffusion::sample_latents`]) over a denoiser and a
/// decoder backend, as a [`ModelSource`].
pub struct StepLoop<'a> {
    pub denoiser: &'a dyn DenoiserBackend,
    pub decoder: &'a dyn DecoderBackend,
    pub schedule: &'a Schedule,
    pub layout: &'a Layout,
}

impl ModelSource for StepLoop<'_> {
    fn layout(&self) -> &Layout {
        self.layout
    }

    fn condition_dim(&self) -> Option<usize> {
        self.denoiser.condition_dim()
    }

    fn sample(&self, request: &SampleRequest<'_>, on_step: OnStep<'_>) -> Result<Samples> {
        request.validate(self.condition_dim())?;
        let z = sample_latents(self.denoiser, self.schedule, request.sampler, request.condition.as_ref(), request.seed, request.rows(), on_step)?;
        let clipped = count_outside_clip(z.view(), self.decoder.latent_clip())?;
        let params = self.decoder.decode(z.view())?;
        let (n, d) = (request.n, self.decoder.param_count());
        if params.dim() != (n, d) {
            return Err(Error::Runtime(format!("decoder returned shape {:?}, expected [{n}, {d}]", params.dim())));
        }
        Ok(Samples { params, clipped })
    }
}
