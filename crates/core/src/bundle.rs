//! Generator bundle: a directory with `pdiff.json` (the manifest, a documented public format:
//! docs/bundle-format.md), `decoder.onnx`, `denoiser.onnx` and the tch weights. Written to a
//! staging directory and put in place as one output (`output::OutputDir`); loading verifies the format version and every file's
//! sha256 and names what is wrong.
use crate::diffusion::Schedule;
use crate::error::{Error, Result};
use crate::limits::{MAX_EXTERNAL_DATA_BYTES, MAX_GRAPH_BYTES, MAX_MANIFEST_BYTES};
use crate::model::{AutoencoderConfig, DenoiserConfig, Preset};
use crate::output::{IfForeign, OutputKind};
use crate::params::{ConditionSpec, Layout, TensorSpec};
use crate::training::{TrainConfig, TrainHistory};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The format version of a bundle whose graphs hold all their data (every reader of version 1
/// reads it).
pub const FORMAT_VERSION: u32 = 1;
/// The format version of a bundle with external data files (a graph too large for one ONNX
/// protobuf): a reader of version 1 only would hand such a graph to ONNX Runtime without its
/// data, so those bundles say 2 and older libpdiff refuse them by their version.
pub const FORMAT_VERSION_EXTERNAL_DATA: u32 = 2;
/// The roles of the ONNX graphs; a graph of role R keeps any external data in the file of role
/// `R_data` ([`data_role`]).
pub const GRAPH_ROLES: [&str; 3] = ["decoder", "denoiser", "sampler"];
pub const MANIFEST: &str = "pdiff.json";
pub const DECODER_ONNX: &str = "decoder.onnx";
pub const DENOISER_ONNX: &str = "denoiser.onnx";
/// Optional (bundles written before it existed lack it): the whole DDIM loop as one graph.
pub const SAMPLER_ONNX: &str = "sampler.onnx";
pub const AE_WEIGHTS: &str = "autoencoder.safetensors";
pub const DENOISER_WEIGHTS: &str = "denoiser.safetensors";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Normalization {
    /// "per_tensor_standardize": normalized = (x - mean) / std, one scalar pair per tensor.
    pub kind: String,
    pub std_floor: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatentStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Bound on |standardized latent| per dimension, applied (inside decoder.onnx) before decoding.
    pub clip: Vec<f32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub library_version: String,
    /// D: scalars in one generated parameter vector.
    pub param_count: usize,
    /// D padded to the autoencoder's stride multiple (internal to the graphs).
    pub padded_len: usize,
    /// d: latent size (input of decoder.onnx and denoiser.onnx).
    pub latent_dim: usize,
    pub layout: Vec<TensorSpec>,
    pub normalization: Normalization,
    pub latent: LatentStats,
    pub schedule: Schedule,
    /// What the denoiser predicts: "epsilon".
    pub prediction: String,
    pub preset: Preset,
    pub autoencoder: AutoencoderConfig,
    pub denoiser: DenoiserConfig,
    pub training: TrainConfig,
    pub history: TrainHistory,
    pub sources: Vec<String>,
    /// What a conditional generator is conditioned on; absent for unconditional generators
    /// (and in bundles written before conditions existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ConditionSpec>,
    /// Health warnings of the training run (few checkpoints, misaligned ones, a reconstruction
    /// error large against the checkpoints' spread). Absent in bundles written before it
    /// existed: read as none.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Role -> file name: decoder, denoiser, autoencoder_weights, denoiser_weights.
    pub files: BTreeMap<String, String>,
    /// File name -> lowercase hex sha256.
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    pub fn layout(&self) -> Layout {
        Layout { tensors: self.layout.clone() }
    }
}

/// The role of graph role `role`'s external data file ("decoder" -> "decoder_data").
pub fn data_role(role: &str) -> String {
    format!("{role}_data")
}

/// The graph role whose external data `role` is, if it is one ("decoder_data" -> "decoder").
fn graph_of_data_role(role: &str) -> Option<&'static str> {
    GRAPH_ROLES.into_iter().find(|g| role.strip_suffix("_data") == Some(g))
}

/// The largest ONNX protobuf: protobuf's 2 GiB limit on one message (2^31 - 1 bytes).
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// How a generator's bundle is written.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Files libpdiff did not write at the destination: refused, or kept beside.
    pub if_foreign: IfForeign,
    /// A graph whose protobuf would exceed this many bytes keeps its largest initializers'
    /// data in an external file (`<graph>.data`), until it fits. The default, and the most
    /// that is ever stored inline, is [`PROTOBUF_LIMIT`]; tests lower it (0: every
    /// initializer with raw data goes to the file) so that small bundles take that path.
    pub inline_graph_limit: u64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { if_foreign: IfForeign::Refuse, inline_graph_limit: PROTOBUF_LIMIT }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a bundle directory atomically: `files` as (role, file name, bytes), each listed in the
/// manifest's `files` and `sha256`, then `pdiff.json`, in a staging directory that is put in
/// place as one output of kind bundle ([`crate::output::OutputDir`]): a previous bundle is
/// replaced once the new one is complete; files the library did not write are never removed
/// or overwritten (refused, or kept beside with [`IfForeign::Force`]).
pub fn write(dir: &Path, mut manifest: Manifest, files: Vec<(&str, &str, &[u8])>, if_foreign: IfForeign) -> Result<Manifest> {
    manifest.files.clear();
    manifest.sha256.clear();
    manifest.format_version = if files.iter().any(|(role, _, _)| graph_of_data_role(role).is_some()) { FORMAT_VERSION_EXTERNAL_DATA } else { FORMAT_VERSION };
    crate::output::write_output_dir(dir, OutputKind::Bundle, if_foreign, |staging| {
        for (role, name, bytes) in &files {
            crate::files::write_atomic(&staging.join(name), bytes)?;
            manifest.files.insert(role.to_string(), name.to_string());
            manifest.sha256.insert(name.to_string(), sha256_hex(bytes));
        }
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
        crate::files::write_atomic(&staging.join(MANIFEST), &json)
    })?;
    Ok(manifest)
}

/// The verified external data file of a graph: its name (the `location` the graph's
/// initializers give) and its bytes, shared with every session created from the graph.
#[derive(Clone, Debug)]
pub struct GraphData {
    pub name: String,
    pub bytes: std::sync::Arc<[u8]>,
}

/// A bundle read from disk: its validated manifest and the bytes of the files asked for,
/// each checked against the manifest's sha256. Whoever uses those bytes (ONNX Runtime, tch)
/// gets exactly what was verified: a file swapped after the check is never loaded.
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The sha256 of `pdiff.json` as read: it names the bundle (the manifest holds every other
    /// file's sha256), and generated models record it as their provenance.
    pub manifest_sha256: String,
    files: BTreeMap<String, Vec<u8>>,
    /// Graph role -> its verified external data, for graphs that have some.
    data: BTreeMap<String, GraphData>,
}

impl Bundle {
    /// Read `dir/pdiff.json`, validate it, then read and verify the files of `roles` (for
    /// example `["decoder", "denoiser"]`). Every read is bounded in size and refuses anything
    /// that is not a regular file (a FIFO or a device would block or never end).
    pub fn read(dir: &Path, roles: &[&str]) -> Result<Bundle> {
        Self::read_chosen(dir, |_| Ok(roles.iter().map(|r| r.to_string()).collect()))
    }

    /// [`Bundle::read`] with the roles chosen from the validated manifest (e.g. an optional
    /// graph read only when the bundle has it); `choose` may refuse the bundle.
    pub fn read_chosen(dir: &Path, choose: impl FnOnce(&Manifest) -> Result<Vec<String>>) -> Result<Bundle> {
        let (manifest, manifest_sha256) = read_manifest_hashed(dir)?;
        let mut files = BTreeMap::new();
        let mut data = BTreeMap::new();
        for role in choose(&manifest)? {
            let name = manifest.files.get(&role).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: files.{role} is missing")))?;
            let bytes = read_verified(dir, &manifest, &role, name)?;
            if GRAPH_ROLES.contains(&role.as_str()) {
                if let Some(d) = read_graph_data(dir, &manifest, &role, name, &bytes)? {
                    data.insert(role.clone(), d);
                }
            }
            files.insert(role, bytes);
        }
        Ok(Bundle { dir: dir.to_path_buf(), manifest, manifest_sha256, files, data })
    }

    /// The verified external data of graph `role`, if it has some (taken out of the bundle).
    pub fn take_data(&mut self, role: &str) -> Option<GraphData> {
        self.data.remove(role)
    }

    /// The verified external data of graph `role`, if it has some.
    pub fn data(&self, role: &str) -> Option<&GraphData> {
        self.data.get(role)
    }

    /// Take the verified bytes of `role` out of the bundle (they are not copied).
    pub fn take_file(&mut self, role: &str) -> Result<Vec<u8>> {
        self.files.remove(role).ok_or_else(|| Error::bundle(&self.dir, format!("{role} was not read from the bundle")))
    }

    /// The verified bytes of `role` (one of the roles given to [`Bundle::read`]).
    pub fn file(&self, role: &str) -> Result<&[u8]> {
        self.files.get(role).map(Vec::as_slice).ok_or_else(|| Error::bundle(&self.dir, format!("{role} was not read from the bundle")))
    }
}

/// The path of bundle file `name` after following links: it must stay inside the bundle
/// directory (a link to another file of the bundle is fine, a link out of it is refused), so
/// nothing outside a bundle is ever read as its data.
fn confined(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let dir_real = dir.canonicalize().map_err(|e| Error::bundle(dir, format!("cannot resolve the bundle directory: {e}")))?;
    let real = path.canonicalize().map_err(|e| Error::bundle(dir, format!("{what} {name}: {e}")))?;
    if !real.starts_with(&dir_real) {
        return Err(Error::bundle(
            dir,
            format!("{what} {name} resolves to {}, outside the bundle: refused (a bundle's files, and the links among them, stay inside it)", real.display()),
        ));
    }
    Ok(real)
}

/// Read one file of a bundle and check it against the manifest's sha256. The file is hashed as
/// it streams from disk first: nothing is allocated for a file the manifest does not vouch for.
/// Then it is read once more, into memory, and those bytes are hashed again and are what the
/// caller gets (a file swapped between the two reads is refused, never used).
fn read_verified(dir: &Path, m: &Manifest, role: &str, name: &str) -> Result<Vec<u8>> {
    let expected = m.sha256.get(name).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: no sha256 for {name}")))?;
    let path = confined(dir, name, &format!("{role} file"))?;
    let mismatch = |got: String| Error::bundle(dir, format!("{name}: sha256 mismatch (manifest {expected}, file {got}): the file was changed or corrupted"));
    let streamed = stream_sha256(&path, MAX_GRAPH_BYTES).map_err(|e| Error::bundle(dir, format!("{role} file {name}: {e}")))?;
    if &streamed != expected {
        return Err(mismatch(streamed));
    }
    let bytes = crate::files::read_regular(&path, MAX_GRAPH_BYTES).map_err(|e| {
        Error::read_out_of_memory(&e, format!("{role} file {name} of bundle {}", dir.display()))
            .unwrap_or_else(|| Error::bundle(dir, format!("{role} file {name}: {e}")))
    })?;
    let got = sha256_hex(&bytes);
    if &got != expected {
        return Err(mismatch(got));
    }
    Ok(bytes)
}

/// The sha256 of a regular file of at most `max_bytes`, read in blocks (no allocation sized by
/// the file).
fn stream_sha256(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    use std::io::Read;
    let (file, _) = crate::files::open_regular(path, max_bytes)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut reader = file.take(max_bytes + 1);
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max_bytes {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the file grew beyond {max_bytes} bytes while being read")));
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The external data of graph `role` (file `name`, whose verified bytes are `graph`): every
/// external reference of the graph is checked against the manifest — the location must be the
/// graph's own data file (`files.<role>_data`, a plain name inside the bundle: nothing outside
/// the bundle is ever read), which is read bounded by what the graph references, verified
/// against its sha256, and must hold every referenced byte range. None when the graph
/// references no external data (and then the manifest must list none for it). Errors name the
/// file, and the tensor when one is at fault.
fn read_graph_data(dir: &Path, m: &Manifest, role: &str, name: &str, graph: &[u8]) -> Result<Option<GraphData>> {
    let refs = crate::external_data::scan(graph).map_err(|e| Error::bundle(dir, format!("{name}: {e}")))?;
    let listed = m.files.get(&data_role(role));
    let Some(first) = refs.first() else {
        return match listed {
            Some(data) => Err(Error::bundle(
                dir,
                format!("{MANIFEST}: files.{} lists {data} as the external data of {name}, but {name} references none", data_role(role)),
            )),
            None => Ok(None),
        };
    };
    let data = listed.ok_or_else(|| {
        Error::bundle(
            dir,
            format!(
                "{name}: tensor '{}' keeps its data in external file '{}', but {MANIFEST} lists no external data for {role} (files.{})",
                first.tensor,
                first.location,
                data_role(role)
            ),
        )
    })?;
    if let Some(r) = refs.iter().find(|r| &r.location != data) {
        return Err(Error::bundle(
            dir,
            format!("{name}: tensor '{}' keeps its data in '{}', which is not {role}'s data file {data} (files.{})", r.tensor, r.location, data_role(role)),
        ));
    }
    let expected = m.sha256.get(data).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: no sha256 for {data}")))?;
    // The file holds exactly the bytes the graph references: its size is the end of the last
    // range, which bounds the read before anything is hashed.
    let end = refs.iter().map(|r| r.end()).max().unwrap_or(0);
    let bound = end.min(MAX_EXTERNAL_DATA_BYTES);
    let path = confined(dir, data, &format!("{role} external data file"))?;
    // A read error says what the graph references when the file's size is what is wrong.
    let read_failed = |e: std::io::Error| {
        if let Some(e) = Error::read_out_of_memory(&e, format!("{role} external data file {data} of bundle {}", dir.display())) {
            return e;
        }
        let why = if end > MAX_EXTERNAL_DATA_BYTES {
            format!("{e} (external data is limited to {MAX_EXTERNAL_DATA_BYTES} bytes)")
        } else if e.kind() == std::io::ErrorKind::InvalidData {
            format!("{e}: {name} references {end} bytes of it")
        } else {
            e.to_string()
        };
        Error::bundle(dir, format!("{role} external data file {data}: {why}"))
    };
    let streamed = stream_sha256(&path, bound).map_err(read_failed)?;
    if &streamed != expected {
        return Err(Error::bundle(dir, format!("{data}: sha256 mismatch (manifest {expected}, file {streamed}): the file was changed or corrupted")));
    }
    let bytes = crate::files::read_regular_shared(&path, bound).map_err(read_failed)?;
    let got = sha256_hex(&bytes);
    if &got != expected {
        return Err(Error::bundle(dir, format!("{data}: sha256 mismatch (manifest {expected}, file {got}): the file was changed or corrupted")));
    }
    if let Some(r) = refs.iter().find(|r| r.end() > bytes.len() as u64) {
        return Err(Error::bundle(dir, format!("{data}: {} bytes, but tensor '{}' of {name} needs bytes {}..{}", bytes.len(), r.tensor, r.offset, r.end())));
    }
    Ok(Some(GraphData { name: data.clone(), bytes }))
}

/// Read and validate `dir/pdiff.json` (bounded, regular files only); no other file is read.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    read_manifest_hashed(dir).map(|(m, _)| m)
}

/// [`read_manifest`] and the sha256 of the bytes it parsed.
fn read_manifest_hashed(dir: &Path) -> Result<(Manifest, String)> {
    if !dir.is_dir() {
        return Err(Error::bundle(dir, "not a directory"));
    }
    let path = confined(dir, MANIFEST, "cannot read")?;
    let text = crate::files::read_regular(&path, MAX_MANIFEST_BYTES).map_err(|e| Error::bundle(dir, format!("cannot read {MANIFEST}: {e}")))?;
    Ok((parse_manifest(dir, &text)?, sha256_hex(&text)))
}

/// Read and verify a bundle's manifest and the hashes of every file it lists.
pub fn load_manifest(dir: &Path) -> Result<Manifest> {
    let m = read_manifest(dir)?;
    for (role, name) in &m.files {
        if graph_of_data_role(role).is_some() {
            continue; // verified with its graph, below
        }
        let bytes = read_verified(dir, &m, role, name)?;
        if GRAPH_ROLES.contains(&role.as_str()) {
            read_graph_data(dir, &m, role, name, &bytes)?;
        }
    }
    Ok(m)
}

/// Parse and validate manifest JSON (no file access): version, fields, internal consistency.
/// `dir` only names the bundle in errors.
pub fn parse_manifest(dir: &Path, text: &[u8]) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| Error::bundle(dir, format!("{MANIFEST} is not valid JSON: {e}")))?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 || v == FORMAT_VERSION_EXTERNAL_DATA as u64 => {}
        Some(v) => {
            return Err(Error::bundle(
                dir,
                format!("{MANIFEST}: format_version {v} is not supported (this library reads versions {FORMAT_VERSION} and {FORMAT_VERSION_EXTERNAL_DATA})"),
            ))
        }
        None => return Err(Error::bundle(dir, format!("{MANIFEST}: field format_version is missing or not an integer"))),
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| Error::bundle(dir, format!("{MANIFEST}: {e}")))?;
    crate::json::check_unique_keys(text).map_err(|e| Error::bundle(dir, format!("{MANIFEST}: {e}")))?;
    check_sizes(&m).map_err(|e| Error::bundle(dir, format!("{MANIFEST}: {e}")))?;
    // Validate the layout as a host would use it: offsets contiguous, shapes non-empty, no
    // overflow (a crafted manifest must not make a host index out of bounds).
    let mut next = 0usize;
    for t in &m.layout {
        let numel = t.shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).filter(|&n| n > 0);
        let numel = numel.ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has an invalid shape {:?}", t.name, t.shape)))?;
        if t.offset != next {
            return Err(Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has offset {}, expected {next}", t.name, t.offset)));
        }
        if !(t.std.is_finite() && t.std > 0.0 && t.mean.is_finite()) {
            return Err(Error::bundle(dir, format!("{MANIFEST}: tensor '{}' has invalid normalization (mean {}, std {})", t.name, t.mean, t.std)));
        }
        next = next.checked_add(numel).ok_or_else(|| Error::bundle(dir, format!("{MANIFEST}: layout size overflows")))?;
    }
    let layout = m.layout();
    if m.layout.is_empty() {
        return Err(Error::bundle(dir, format!("{MANIFEST}: layout is empty")));
    }
    for role in ["decoder", "denoiser"] {
        if !m.files.contains_key(role) {
            return Err(Error::bundle(dir, format!("{MANIFEST}: files.{role} is missing")));
        }
    }
    for (role, name) in &m.files {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == "." || name == ".." || name == MANIFEST {
            return Err(Error::bundle(dir, format!("{MANIFEST}: file name {name:?} of {role} must be a plain name inside the bundle")));
        }
    }
    for role in m.files.keys() {
        if let Some(graph) = graph_of_data_role(role) {
            if !m.files.contains_key(graph) {
                return Err(Error::bundle(dir, format!("{MANIFEST}: files.{role} is the external data of a {graph} graph the bundle does not have")));
            }
            if m.format_version != FORMAT_VERSION_EXTERNAL_DATA {
                return Err(Error::bundle(
                    dir,
                    format!(
                        "{MANIFEST}: files.{role} (external data) needs format_version {FORMAT_VERSION_EXTERNAL_DATA}, the manifest says {}",
                        m.format_version
                    ),
                ));
            }
        }
    }
    if let Err(e) = m.schedule.validate() {
        return Err(Error::bundle(dir, format!("{MANIFEST}: unsupported schedule: {e}")));
    }
    if m.prediction != "epsilon" {
        return Err(Error::bundle(dir, format!("{MANIFEST}: unsupported prediction '{}' (expected 'epsilon')", m.prediction)));
    }
    if layout.param_count() != m.param_count {
        return Err(Error::bundle(dir, format!("{MANIFEST}: layout covers {} values but param_count is {}", layout.param_count(), m.param_count)));
    }
    if let Some(c) = &m.condition {
        c.validate().map_err(|e| Error::bundle(dir, format!("{MANIFEST}: condition: {e}")))?;
    }
    if m.latent.mean.len() != m.latent_dim || m.latent.std.len() != m.latent_dim || m.latent.clip.len() != m.latent_dim {
        return Err(Error::bundle(dir, format!("{MANIFEST}: latent stats do not have latent_dim = {} entries", m.latent_dim)));
    }
    let finite = |name: &str, v: &[f32], positive: bool| match v.iter().position(|x| !x.is_finite() || (positive && *x <= 0.0)) {
        Some(i) => Err(Error::bundle(dir, format!("{MANIFEST}: latent.{name}[{i}] is {} (must be finite{})", v[i], if positive { " and > 0" } else { "" }))),
        None => Ok(()),
    };
    finite("mean", &m.latent.mean, false)?;
    finite("std", &m.latent.std, true)?;
    finite("clip", &m.latent.clip, true)?;
    Ok(m)
}

/// The fields that size what a reader allocates or builds, within [`crate::limits`] and
/// consistent with each other, before anything is built from them: D, d, the layout, the
/// condition, the networks' configurations (checked for both backends: ONNX Runtime allocates
/// by D and d, libtorch builds the networks), the training configuration.
fn check_sizes(m: &Manifest) -> std::result::Result<(), String> {
    use crate::limits::{MAX_CONDITION_DIM, MAX_LATENT_DIM, MAX_PARAMS, MAX_RANK, MAX_TENSORS};
    if m.param_count == 0 || m.param_count > MAX_PARAMS {
        return Err(format!("param_count {} (must be 1 ..= {MAX_PARAMS})", m.param_count));
    }
    if m.latent_dim == 0 || m.latent_dim > MAX_LATENT_DIM {
        return Err(format!("latent_dim {} (must be 1 ..= {MAX_LATENT_DIM})", m.latent_dim));
    }
    if m.layout.len() > MAX_TENSORS {
        return Err(format!("layout has {} tensors (at most {MAX_TENSORS})", m.layout.len()));
    }
    if let Some(t) = m.layout.iter().find(|t| t.shape.len() > MAX_RANK) {
        return Err(format!("tensor '{}' has rank {} (at most {MAX_RANK})", t.name, t.shape.len()));
    }
    if let Some(c) = &m.condition {
        if c.dim > MAX_CONDITION_DIM {
            return Err(format!("condition.dim {} (at most {MAX_CONDITION_DIM})", c.dim));
        }
    }
    m.autoencoder.validate().map_err(|e| e.to_string())?;
    m.denoiser.validate().map_err(|e| e.to_string())?;
    m.training.validate().map_err(|e| format!("training: {e}"))?;
    let ae_latent = match &m.autoencoder.chunked {
        Some(spec) => spec.components,
        None => m.autoencoder.latent_dim,
    };
    if ae_latent != m.latent_dim as i64 {
        return Err(format!("latent_dim {} differs from the autoencoder's ({ae_latent})", m.latent_dim));
    }
    let padded = m.autoencoder.padded_len(m.param_count);
    if m.padded_len != padded {
        return Err(format!("padded_len {} differs from {padded}, what the autoencoder pads D = {} to", m.padded_len, m.param_count));
    }
    Ok(())
}
