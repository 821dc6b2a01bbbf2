//! The input of the `bundle_dir` target: one byte string that becomes a bundle directory.
//!
//! ```text
//! byte 0     flags: bit 0 FIX_HASHES   put the sha256 of the decoder and denoiser bytes into
//!                                      pdiff.json (when it is a JSON object) before writing it
//!                   bit 1 DDPM         sample with DDPM (all T steps) instead of DDIM
//!                   bit 2 WRITE_FILES  also write the samples as safetensors files
//!                   bit 3 EDIT         the manifest part is an edit script (below) applied to
//!                                      the fixture's pdiff.json
//! byte 1     n: models to sample, 1 + (byte % 4)
//! byte 2     DDIM steps, 1 + (byte % 16)
//! then       pdiff.json SEPARATOR decoder.onnx SEPARATOR denoiser.onnx
//! ```
//!
//! The files are split at the first two SEPARATORs; an empty (or missing) decoder.onnx or
//! denoiser.onnx stands for the fixture's (tests/fixtures/tiny-bundle), so that an input made of
//! manifest edits alone keeps mutations on the manifest instead of spreading them over 25 kB of
//! graphs. A separator rather than length prefixes: libFuzzer inserts and erases bytes, which
//! would throw every following length out of step and turn nearly every mutation of the
//! manifest into a truncated manifest and a torn graph; with separators a mutation stays inside
//! its file. (SEPARATOR starts with a NUL byte, which valid JSON never holds.)
//!
//! Two flags keep mutations from stopping at the first check. Every file of a bundle is listed
//! in pdiff.json with its sha256, which a mutated input almost never gets right: with
//! FIX_HASHES the target recomputes them, to reach graph loading and sampling. Byte mutations
//! of a whole manifest mostly break its JSON (the manifest target covers that parser); with
//! EDIT the manifest part is instead a list of 11-byte edits of the fixture's manifest, each
//! valid JSON whatever its bytes, so that nearly every input is a well-formed manifest with a
//! few odd values (a huge latent_dim, a zero shape, a short latent.std, swapped file names)
//! that reaches validation, graph loading and sampling:
//!
//! ```text
//! bytes 0-1  which leaf: u16 big-endian, modulo the number of leaves (every number, string,
//!            bool or null of the fixture's manifest outside "history", depth first, object
//!            keys in sorted order, array elements in order; see `leaves`)
//! byte 2     what, modulo 6: 0 set to the u64 `value`; 1 set to the i8 of its low byte;
//!            2 set to the f64 whose bits are `value` (when finite, else the i64 as f64);
//!            3 resize the array holding the leaf to `value` % 40 elements (repeating the
//!            last); 4 set to the string STRINGS[`value` % len]; 5 remove the leaf
//! bytes 3-10 `value`: u64 little-endian
//! ```
//! An edit whose leaf is gone (removed or cut off by an earlier edit) is skipped.
//!
//! The committed seeds (fuzz/make_bundle_corpus.py) are tests/fixtures/tiny-bundle in this
//! format.
use std::path::Path;

pub const FIX_HASHES: u8 = 1;
pub const DDPM: u8 = 2;
pub const WRITE_FILES: u8 = 4;
pub const EDIT: u8 = 8;

/// The manifest that EDIT inputs edit, and the graphs that empty sections stand for.
const FIXTURE_MANIFEST: &[u8] = include_bytes!("../../tests/fixtures/tiny-bundle/pdiff.json");
const FIXTURE_DECODER: &[u8] = include_bytes!("../../tests/fixtures/tiny-bundle/decoder.onnx");
const FIXTURE_DENOISER: &[u8] = include_bytes!("../../tests/fixtures/tiny-bundle/denoiser.onnx");

/// Between two files of the input.
pub const SEPARATOR: &[u8] = b"\0--pdiff-fuzz-next-file--\0";

/// The files of the bundle directory, in input order.
pub const FILES: [&str; 3] = [pdiff_core::bundle::MANIFEST, pdiff_core::bundle::DECODER_ONNX, pdiff_core::bundle::DENOISER_ONNX];

/// One decoded input.
pub struct BundleInput<'a> {
    pub flags: u8,
    pub n: usize,
    pub ddim_steps: usize,
    /// pdiff.json, decoder.onnx, denoiser.onnx (the graphs: the input's, or the fixture's).
    pub files: [&'a [u8]; 3],
}

impl<'a> BundleInput<'a> {
    /// Any byte string decodes.
    pub fn decode(data: &'a [u8]) -> BundleInput<'a> {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let mut rest = data.get(3..).unwrap_or(&[]);
        let mut files: [&[u8]; 3] = [&[]; 3];
        for (i, file) in files.iter_mut().enumerate() {
            let end = if i + 1 < FILES.len() { find(rest, SEPARATOR) } else { None };
            match end {
                Some(at) => {
                    *file = &rest[..at];
                    rest = &rest[at + SEPARATOR.len()..];
                }
                None => {
                    *file = rest;
                    break;
                }
            }
        }
        for (file, fixture) in files[1..].iter_mut().zip([FIXTURE_DECODER, FIXTURE_DENOISER]) {
            if file.is_empty() {
                *file = fixture;
            }
        }
        BundleInput { flags: byte(0), n: 1 + byte(1) as usize % 4, ddim_steps: 1 + byte(2) as usize % 16, files }
    }

    pub fn sampler(&self) -> pdiff_core::diffusion::SamplerKind {
        if self.flags & DDPM != 0 {
            pdiff_core::diffusion::SamplerKind::Ddpm
        } else {
            pdiff_core::diffusion::SamplerKind::Ddim { steps: self.ddim_steps }
        }
    }

    /// Write the three files into `dir` (which exists), the manifest edited and its hashes
    /// fixed when asked.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(FILES[0]), self.manifest())?;
        std::fs::write(dir.join(FILES[1]), self.files[1])?;
        std::fs::write(dir.join(FILES[2]), self.files[2])
    }

    /// The bytes of pdiff.json: the input's, or the edited fixture's (EDIT), with the hashes
    /// recomputed (FIX_HASHES; when it is a JSON object).
    pub fn manifest(&self) -> Vec<u8> {
        let value = if self.flags & EDIT != 0 {
            let mut m = fixture_manifest();
            apply_edits(&mut m, self.files[0]);
            Some(m)
        } else if self.flags & FIX_HASHES != 0 {
            serde_json::from_slice(self.files[0]).ok()
        } else {
            None
        };
        let Some(mut m) = value else { return self.files[0].to_vec() };
        if self.flags & FIX_HASHES != 0 {
            self.fix_hashes(&mut m);
        }
        serde_json::to_vec(&m).expect("a JSON value serializes")
    }

    /// Set `sha256[name]` to the hash of the bytes of its role, for each of the roles decoder
    /// and denoiser, under the file name the manifest gives the role (a string `files.<role>`,
    /// else the default name). Nothing when the manifest is not a JSON object.
    fn fix_hashes(&self, m: &mut serde_json::Value) {
        let Some(obj) = m.as_object_mut() else { return };
        let mut hashes = Vec::new();
        for (role, bytes, default) in [("decoder", self.files[1], FILES[1]), ("denoiser", self.files[2], FILES[2])] {
            let name = obj.get("files").and_then(|f| f.get(role)).and_then(|n| n.as_str()).unwrap_or(default);
            hashes.push((name.to_string(), pdiff_core::bundle::sha256_hex(bytes)));
        }
        let sha = obj.entry("sha256").or_insert_with(|| serde_json::json!({}));
        if !sha.is_object() {
            *sha = serde_json::json!({});
        }
        let sha = sha.as_object_mut().expect("made an object above");
        for (name, hash) in hashes {
            sha.insert(name, serde_json::Value::String(hash));
        }
    }
}

/// Strings an edit can put anywhere: file names (the bundle's, a path out of it, the manifest
/// itself), and the values of the manifest's string fields and their near misses.
pub const STRINGS: [&str; 14] = [
    "",
    "decoder.onnx",
    "denoiser.onnx",
    "pdiff.json",
    "../decoder.onnx",
    "/dev/zero",
    ".",
    "epsilon",
    "x0",
    "linear",
    "cosine",
    "compact",
    "paper",
    "per_tensor_standardize",
];

fn fixture_manifest() -> serde_json::Value {
    serde_json::from_slice(FIXTURE_MANIFEST).expect("the fixture's pdiff.json is JSON")
}

/// JSON pointers of the fixture manifest's leaves outside "history" (what edits address), in a
/// fixed order: depth first, object keys sorted (serde_json's map), array elements in order.
pub fn leaves() -> &'static [String] {
    static LEAVES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LEAVES.get_or_init(|| {
        fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, child) in m {
                        if !(at.is_empty() && k == "history") {
                            walk(child, &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().enumerate().for_each(|(i, child)| walk(child, &format!("{at}/{i}"), out)),
                _ => out.push(at.to_string()),
            }
        }
        let mut out = Vec::new();
        walk(&fixture_manifest(), "", &mut out);
        out
    })
}

/// Apply the edits of `script` (11 bytes each; a shorter tail is ignored) to `m`.
fn apply_edits(m: &mut serde_json::Value, script: &[u8]) {
    let leaves = leaves();
    for edit in script.chunks_exact(11) {
        let leaf = &leaves[u16::from_be_bytes([edit[0], edit[1]]) as usize % leaves.len()];
        let value = u64::from_le_bytes(edit[3..11].try_into().expect("8 bytes"));
        let Some((parent, key)) = leaf.rsplit_once('/') else { continue };
        let new = match edit[2] % 6 {
            0 => serde_json::Value::from(value),
            1 => serde_json::Value::from(value as u8 as i8),
            2 => {
                let f = f64::from_bits(value);
                serde_json::Value::from(if f.is_finite() { f } else { value as i64 as f64 })
            }
            3 => {
                if let Some(serde_json::Value::Array(a)) = m.pointer_mut(parent) {
                    let fill = a.last().cloned().unwrap_or(serde_json::Value::from(0));
                    a.resize(value as usize % 40, fill);
                }
                continue;
            }
            4 => serde_json::Value::from(STRINGS[value as usize % STRINGS.len()]),
            _ => {
                match m.pointer_mut(parent) {
                    Some(serde_json::Value::Object(o)) => {
                        o.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(serde_json::Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
                continue;
            }
        };
        if let Some(slot) = m.pointer_mut(leaf) {
            *slot = new;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
