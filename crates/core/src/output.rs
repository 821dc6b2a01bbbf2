//! Outputs that never destroy what the library did not write (their files are written through
//! [`crate::files`]).
//!
//! An output directory (a bundle, generated models, checkpoints, a demo or an ablation run) is
//! built in a staging directory and carries a marker, [`OUTPUT_MARKER`], that records its
//! [`OutputKind`] and the entries the library wrote there. What is at the destination decides
//! what happens ([`OutputDir`]):
//! - nothing: the staging directory (a temporary sibling) is renamed into place;
//! - a previous output of the same kind that holds nothing else: replaced atomically (the old
//!   one renamed aside, the new one renamed in, the parent fsynced, then the old one deleted),
//!   so that at every moment one of them is complete at the destination;
//! - an empty directory: filled (it holds nothing that could be lost);
//! - a directory holding anything else (files the library did not write, or listed entries it
//!   cannot vouch for): refused with [`Error::OutputExists`], unless [`IfForeign::Force`], which
//!   writes the new entries beside the foreign ones. Even then nothing the marker does not list
//!   is removed or overwritten, and a new entry whose name is taken by a foreign one is refused;
//! - an output of another kind, a regular file, a symbolic link or a special file: refused,
//!   even with force.
//!
//! Sub-outputs nest: a demo directory lists `generator`, which is itself a bundle with its own
//! marker; a listed directory counts as the library's only when it is such a complete output.
//!
//! A run killed outright (SIGKILL, a crash) cannot clean up. What it leaves is recognized as the
//! library's own on the next run: a staging directory carries [`STAGING_MARKER`] (which process
//! writes it) from the moment it is created, and temporary files and the old output set aside
//! during a replacement carry that process in their names. Those of a process that is gone are
//! removed when the next output begins there; those of a process still running are reported as
//! such, never as files the library did not write.
use crate::error::{Error, Result};
use crate::files::{next_serial, parent_of, read_regular_nofollow, rename_exchange, rename_noreplace, sync_dir, tagged_sibling, temp_sibling, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// The marker file of an output directory: `{"pdiff_output": 1, "kind": "samples", "files":
/// [...]}`. Written last into the staging directory, so a directory carrying it is complete.
pub const OUTPUT_MARKER: &str = ".pdiff-output.json";
const MARKER_VERSION: u32 = 1;
/// A marker lists file names: a larger file is not one.
use crate::limits::MAX_MARKER_BYTES;
/// The file every staging directory holds from its creation: `{"pdiff_staging": 1, "pid": N}`.
/// Removed when the output is put in place.
pub const STAGING_MARKER: &str = ".pdiff-staging.json";
/// The name prefix of a staging directory inside an output directory being merged into.
const MERGE_STAGING_PREFIX: &str = ".pdiff-staging-";
/// Outputs nest a level or two (a demo holds a bundle); deeper nesting is not the library's.
const MAX_OUTPUT_DEPTH: usize = 8;
/// Names of foreign entries shown in a refusal; the rest are counted.
const NAMES_SHOWN: usize = 5;

/// What an output directory holds; recorded in its marker. Only an output of the same kind is
/// ever replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Generated models, `gen_XXXX.safetensors`.
    Samples,
    /// An exported generator (docs/bundle-format.md).
    Bundle,
    /// Collected checkpoints of a reference task.
    Checkpoints,
    /// The output of the tools' demo: checkpoints, bundle, generated models, results, report.
    Demo,
    /// The output of the tools' ablations.
    Ablation,
}

impl OutputKind {
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Samples => "samples",
            OutputKind::Bundle => "bundle",
            OutputKind::Checkpoints => "checkpoints",
            OutputKind::Demo => "demo",
            OutputKind::Ablation => "ablation",
        }
    }
}

/// What to do when an output's destination holds entries the library did not write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IfForeign {
    /// Refuse with [`Error::OutputExists`] (the default).
    #[default]
    Refuse,
    /// For a directory: write the new entries beside the foreign ones, which are kept as they
    /// are (a name taken by a foreign entry is still refused). For a single-file output
    /// ([`write_output_file`]): replace an existing regular file. Never anything else (a
    /// symbolic link, a special file, a directory where a file goes, an output of another
    /// kind).
    Force,
}

#[derive(Serialize, Deserialize)]
struct StagingMarker {
    pdiff_staging: u32,
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    pdiff_output: u32,
    kind: String,
    files: Vec<String>,
}

/// Write one output file (e.g. a benchmark report) at `path`. A file already there is replaced
/// only when `is_previous` recognizes its content as a previous output of the same kind
/// (`what` names that kind in the refusal), or with [`IfForeign::Force`]; a directory, a
/// symbolic link or a special file at `path` is always refused. Checked again just before the
/// write; [`check_output_file`] checks up front, before long work.
pub fn write_output_file(path: &Path, bytes: &[u8], if_foreign: IfForeign, what: &str, is_previous: impl Fn(&[u8]) -> bool) -> Result<()> {
    check_output_file(path, if_foreign, what, is_previous)?;
    write_atomic(path, bytes)
}

/// The checks of [`write_output_file`], without writing.
pub fn check_output_file(path: &Path, if_foreign: IfForeign, what: &str, is_previous: impl Fn(&[u8]) -> bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        return Err(refusal(path, format!("is {}, not a file", describe_type(path, &meta)), None));
    }
    if if_foreign == IfForeign::Force {
        return Ok(());
    }
    // Untrusted content: bounded, regular files only; unreadable means unrecognized.
    match read_regular_nofollow(path, MAX_RECOGNIZED_FILE_BYTES) {
        Ok(bytes) if is_previous(&bytes) => Ok(()),
        _ => Err(refusal(path, format!("already exists and is not a {what}"), Some("replace it"))),
    }
}

/// A file larger than this is not recognized as a previous output by [`check_output_file`].
const MAX_RECOGNIZED_FILE_BYTES: u64 = 64 << 20;

fn refusal(path: &Path, reason: String, force_would: Option<&'static str>) -> Error {
    Error::OutputExists { path: path.to_path_buf(), reason, force_would }
}

/// "a regular file", "a symbolic link (to X)", ...: what is in the way, for a refusal.
fn describe_type(path: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        match std::fs::read_link(path) {
            Ok(target) => format!("a symbolic link (to {})", target.display()),
            Err(_) => "a symbolic link".into(),
        }
    } else if t.is_file() {
        "a regular file".into()
    } else if t.is_dir() {
        "a directory".into()
    } else if t.is_fifo() {
        "a FIFO".into()
    } else if t.is_socket() {
        "a socket".into()
    } else if t.is_block_device() || t.is_char_device() {
        "a device".into()
    } else {
        "a special file".into()
    }
}

/// An output directory being written. [`OutputDir::begin`] checks the destination (so that a
/// refusal comes before any long work) and creates a staging directory; the caller writes
/// into [`OutputDir::path`]; [`OutputDir::commit`] checks the destination again and puts the
/// output in place (see the module documentation). Dropped without a commit (an error, a
/// cancellation), it removes its staging directory and leaves the destination as it was.
pub struct OutputDir {
    dest: PathBuf,
    kind: OutputKind,
    if_foreign: IfForeign,
    staging: PathBuf,
    committed: bool,
}

/// How the staged output goes to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing there: rename the staging directory into place.
    Create,
    /// A previous output of the same kind, nothing else: swap it for the new one.
    Replace,
    /// An existing directory (empty, or with foreign entries and force): move the new entries
    /// into it one by one, replacing only entries the marker lists.
    Merge,
}

impl OutputDir {
    /// Check `dest` for an output of `kind` and create the staging directory: a temporary
    /// sibling of `dest` (whose missing parents are created), or a temporary directory inside
    /// `dest` when the new entries will be moved into an existing directory.
    pub fn begin(dest: &Path, kind: OutputKind, if_foreign: IfForeign) -> Result<OutputDir> {
        let found = inspect(dest, kind, None)?;
        let plan = plan(dest, &found, kind, if_foreign)?;
        let staging = match plan {
            Plan::Create | Plan::Replace => {
                let parent = parent_of(dest);
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                temp_sibling(dest)
            }
            Plan::Merge => dest.join(format!("{MERGE_STAGING_PREFIX}{}-{}", std::process::id(), next_serial())),
        };
        // What killed runs left, in the destination (counted as stale by `inspect`) and beside
        // it: theirs, and in the way of nothing but disk space.
        if let Found::Directory(state) = &found {
            for name in &state.stale {
                remove_leftover(&dest.join(name));
            }
        }
        remove_stale_siblings(dest);
        create_staging(&staging).map_err(|e| Error::io(dest, e))?;
        Ok(OutputDir { dest: dest.to_path_buf(), kind, if_foreign, staging, committed: false })
    }

    /// Where the caller writes the output's entries (plain names; sub-directories allowed).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final location.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Make the staged entries durable (every file and directory fsynced), record them in the
    /// marker, and put the output in place. On a refusal or an error the destination is as it
    /// was, apart from entries already moved into a directory being merged into (each listed
    /// in its marker, so a later run replaces them).
    pub fn commit(mut self) -> Result<()> {
        let entries = staged_entries(&self.staging)?;
        write_marker(&self.staging, self.kind, &entries)?;
        let staged_inside = self.staging.parent() == Some(self.dest.as_path());
        if !staged_inside {
            // This directory becomes the output (its output marker says it is complete); a
            // staging directory inside an output being merged into keeps its marker to the end.
            std::fs::remove_file(self.staging.join(STAGING_MARKER)).map_err(|e| Error::io(&self.dest, e))?;
        }
        sync_tree(&self.staging, 0)?;
        let ignore = if staged_inside { self.staging.file_name() } else { None };
        let found = inspect(&self.dest, self.kind, ignore)?;
        match (plan(&self.dest, &found, self.kind, self.if_foreign)?, &found, staged_inside) {
            (Plan::Create, _, false) => {
                rename_noreplace(&self.staging, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
                self.committed = true;
                sync_dir(parent_of(&self.dest))?;
            }
            (Plan::Replace, _, false) => self.replace()?,
            (_, Found::Directory(state), _) => {
                merge_into(&self.dest, &self.staging, self.kind, &entries, state)?;
                // What remains of the staging directory is its own marker.
                let _ = std::fs::remove_dir_all(&self.staging);
                self.committed = true;
            }
            _ => return Err(Error::io(&self.dest, std::io::Error::other("the output directory vanished while it was being written"))),
        }
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            // The staging directory was created by this OutputDir under a fresh name: all ours.
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// Refuse an output `out` that holds the input directory `input`, or lies inside it: putting the
/// output in place would replace the input, or write the output among the inputs (a bundle's
/// weight files among checkpoints poison the next training). `flag` names the input in the error.
pub fn check_apart(input: &Path, out: &Path, flag: &str) -> Result<()> {
    let (Ok(i), o) = (input.canonicalize(), resolve_missing(out)) else { return Ok(()) };
    if i.starts_with(&o) || o.starts_with(&i) {
        let how = if i == o {
            "is"
        } else if i.starts_with(&o) {
            "holds"
        } else {
            "is inside"
        };
        return Err(Error::invalid(
            flag,
            format!("{}: the output {} {how} this input (which this run would replace or write into): choose another output", input.display(), out.display()),
        ));
    }
    Ok(())
}

/// `path` with its existing ancestors resolved (links, `..`): where it would be created.
fn resolve_missing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut p = path.to_path_buf();
    loop {
        if let Ok(real) = p.canonicalize() {
            return rest.iter().rev().fold(real, |acc: PathBuf, c: &OsString| acc.join(c));
        }
        match (p.file_name().map(|n| n.to_os_string()), p.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                p = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The checks of [`OutputDir::begin`], creating nothing: whether an output of `kind` may go to
/// `dest` (for callers that want a refusal before long work and write later).
pub fn check_output_dir(dest: &Path, kind: OutputKind, if_foreign: IfForeign) -> Result<()> {
    plan(dest, &inspect(dest, kind, None)?, kind, if_foreign).map(|_| ())
}

/// [`OutputDir`] in one call: `fill` writes the entries into the staging directory it is
/// given; its result is returned once the output is in place.
pub fn write_output_dir<T>(dest: &Path, kind: OutputKind, if_foreign: IfForeign, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let out = OutputDir::begin(dest, kind, if_foreign)?;
    let value = fill(out.path())?;
    out.commit()?;
    Ok(value)
}

/// What is at an output's destination.
#[derive(Debug)]
enum Found {
    Missing,
    /// Not a directory: what it is ("a regular file", "a symbolic link (to x)", ...).
    NotADirectory(String),
    /// A directory whose marker says it is an output of another kind.
    OtherKind(String),
    Directory(DirState),
}

#[derive(Debug, Default)]
struct DirState {
    /// Carries a valid marker of the requested kind.
    marked: bool,
    /// Every name that marker lists (present or not).
    listed: Vec<String>,
    /// Present entries that marker lists and that the library wrote: regular files, or
    /// directories that are complete outputs themselves.
    ours: BTreeSet<OsString>,
    /// Everything else (the marker itself aside), sorted.
    foreign: Vec<OsString>,
    /// Leftovers of libpdiff runs that are gone (staging directories, temporary files).
    stale: Vec<OsString>,
    /// Staging directories of runs still going on: (name, process).
    busy: Vec<(OsString, u32)>,
}

/// Look at `dest` for an output of `kind`; `ignore` is a staging directory inside it.
fn inspect(dest: &Path, kind: OutputKind, ignore: Option<&OsStr>) -> Result<Found> {
    let meta = match std::fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(Error::io(dest, e)),
    };
    if !meta.is_dir() {
        return Ok(Found::NotADirectory(describe_type(dest, &meta)));
    }
    let marker = read_marker(dest);
    if let Some(m) = &marker {
        if m.kind != kind.name() {
            return Ok(Found::OtherKind(m.kind.clone()));
        }
    }
    let listed: BTreeSet<&str> = marker.iter().flat_map(|m| m.files.iter().map(String::as_str)).collect();
    let mut state = DirState { marked: marker.is_some(), ..Default::default() };
    for name in entry_names(dest)? {
        if (marker.is_some() && name == OUTPUT_MARKER) || Some(name.as_os_str()) == ignore {
            continue;
        }
        let is_listed = name.to_str().is_some_and(|n| listed.contains(n));
        if is_listed && written_by_us(&dest.join(&name), 0) {
            state.ours.insert(name);
        } else {
            match leftover_of(&dest.join(&name)) {
                Some(pid) if process_is_gone(pid) => state.stale.push(name),
                Some(pid) => state.busy.push((name, pid)),
                None => state.foreign.push(name),
            }
        }
    }
    state.listed = marker.map(|m| m.files).unwrap_or_default();
    Ok(Found::Directory(state))
}

/// A listed entry the library wrote: a regular file, or a directory that is a complete output
/// (a valid marker of any kind, every entry listed and written by us, recursively).
fn written_by_us(path: &Path, depth: usize) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return false };
    if meta.is_file() {
        return true;
    }
    if !meta.is_dir() || depth >= MAX_OUTPUT_DEPTH {
        return false;
    }
    let Some(marker) = read_marker(path) else { return false };
    let Ok(names) = entry_names(path) else { return false };
    names
        .iter()
        .all(|name| name == OUTPUT_MARKER || (name.to_str().is_some_and(|n| marker.files.iter().any(|f| f == n)) && written_by_us(&path.join(name), depth + 1)))
}

/// Decide how an output of `kind` goes to `dest`, or refuse.
fn plan(dest: &Path, found: &Found, kind: OutputKind, if_foreign: IfForeign) -> Result<Plan> {
    match found {
        Found::Missing => Ok(Plan::Create),
        Found::NotADirectory(what) => Err(refusal(dest, format!("is {what}, not a directory"), None)),
        Found::OtherKind(other) => Err(refusal(dest, format!("holds a libpdiff {other} output, not {}", kind.name()), None)),
        Found::Directory(state) if !state.busy.is_empty() => {
            let (name, pid) = &state.busy[0];
            Err(refusal(dest, format!("is being written by another libpdiff run (process {pid}, {})", name.to_string_lossy()), None))
        }
        Found::Directory(state) if !state.foreign.is_empty() => match if_foreign {
            IfForeign::Force => Ok(Plan::Merge),
            IfForeign::Refuse => Err(refusal(
                dest,
                format!("already exists and holds files libpdiff did not write ({})", name_list(&state.foreign)),
                Some("write beside them (they are kept)"),
            )),
        },
        // A previous output alone. "." or "/" cannot be renamed: their entries are replaced.
        Found::Directory(state) if state.marked && dest.file_name().is_some() => Ok(Plan::Replace),
        Found::Directory(_) => Ok(Plan::Merge),
    }
}

fn name_list(names: &[OsString]) -> String {
    let mut shown: Vec<String> = names.iter().take(NAMES_SHOWN).map(|n| n.to_string_lossy().into_owned()).collect();
    if names.len() > NAMES_SHOWN {
        shown.push(format!("and {} more", names.len() - NAMES_SHOWN));
    }
    shown.join(", ")
}

impl OutputDir {
    /// Swap the previous output at `dest` for the staged one, so that `dest` always holds a
    /// complete output: exchanged in one step where the file system can (renameat2
    /// RENAME_EXCHANGE), else the old one renamed aside and the new one renamed in. Then the
    /// parent is fsynced and the old output deleted (only what its marker lists).
    fn replace(&mut self) -> Result<()> {
        let (dest, staging) = (self.dest.clone(), self.staging.clone());
        let old = match rename_exchange(&staging, &dest) {
            Ok(()) => {
                // `staging` now holds the old output: never remove it wholesale from here on.
                self.committed = true;
                staging.clone()
            }
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                let aside = tagged_sibling(&dest, "old");
                rename_noreplace(&dest, &aside).map_err(|e| Error::io(&dest, e))?;
                if let Err(e) = rename_noreplace(&staging, &dest) {
                    let _ = std::fs::rename(&aside, &dest);
                    return Err(Error::io(&dest, e));
                }
                self.committed = true;
                aside
            }
            Err(e) => return Err(Error::io(&dest, e)),
        };
        // Something may have been dropped into the old output since it was checked: look
        // again, and put it back (refusing) unless it still is a previous output alone.
        let still_ours = matches!(inspect(&old, self.kind, None), Ok(Found::Directory(ref s)) if s.marked && s.foreign.is_empty());
        if !still_ours {
            let swapped_back = if old == staging { rename_exchange(&staging, &dest) } else { swap_back(&old, &dest, &staging) };
            swapped_back.map_err(|e| Error::io(&old, e))?;
            self.committed = false; // `staging` holds the new output again
            let found = inspect(&dest, self.kind, None)?;
            plan(&dest, &found, self.kind, IfForeign::Refuse)?;
            return Err(Error::io(&dest, std::io::Error::other("changed while the new output was being put in place")));
        }
        sync_dir(parent_of(&dest))?;
        remove_output(&old, 0);
        Ok(())
    }
}

/// Undo the two renames of the fallback in [`OutputDir::replace`]: the new output back to
/// `staging`, the old one back to `dest`.
fn swap_back(aside: &Path, dest: &Path, staging: &Path) -> std::io::Result<()> {
    std::fs::rename(dest, staging)?;
    std::fs::rename(aside, dest)
}

/// Move the staged `entries` into the existing directory `dest`. An entry replaces one of the
/// same name only when `state` says the library wrote it; a name taken by anything else is
/// refused before anything moves. Previous entries that the new output no longer has are
/// removed when ours, kept otherwise. The marker lists both old and new entries while they
/// move, so that an interruption leaves nothing of ours unlisted.
fn merge_into(dest: &Path, staging: &Path, kind: OutputKind, entries: &[String], state: &DirState) -> Result<()> {
    // The marker's own name is needed too when what is there is not a marker of ours.
    let marker = (!state.marked).then(|| OUTPUT_MARKER.to_string());
    let taken: Vec<OsString> = entries
        .iter()
        .chain(marker.as_ref())
        .map(OsString::from)
        .filter(|n| !state.ours.contains(n) && std::fs::symlink_metadata(dest.join(n)).is_ok())
        .collect();
    if !taken.is_empty() {
        return Err(refusal(dest, format!("holds files libpdiff did not write under names this output needs ({})", name_list(&taken)), None));
    }
    let mut both: Vec<String> = state.listed.iter().chain(entries).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    both.retain(|n| entries.contains(n) || state.ours.contains(OsStr::new(n)));
    write_marker(dest, kind, &both)?;
    for name in entries {
        let (from, to) = (staging.join(name), dest.join(name));
        let replacing_dir = state.ours.contains(OsStr::new(name)) && to.is_dir();
        if replacing_dir {
            let aside = tagged_sibling(&to, "old");
            std::fs::rename(&to, &aside).map_err(|e| Error::io(&to, e))?;
            if let Err(e) = std::fs::rename(&from, &to) {
                let _ = std::fs::rename(&aside, &to);
                return Err(Error::io(&to, e));
            }
            remove_output(&aside, 0);
        } else if state.ours.contains(OsStr::new(name)) {
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        } else {
            rename_noreplace(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    sync_dir(dest)?;
    for name in &state.ours {
        if !entries.iter().any(|e| OsStr::new(e) == name) {
            remove_entry(&dest.join(name), 0);
        }
    }
    write_marker(dest, kind, entries)
}

/// Delete an output directory the library wrote: the entries its marker lists (files, and
/// sub-outputs recursively), the marker, then the directory if that left it empty. Anything
/// else stays, and so does the directory holding it. Best effort: the new output is already
/// in place when this runs.
fn remove_output(dir: &Path, depth: usize) {
    let Some(marker) = read_marker(dir) else { return };
    for name in &marker.files {
        if is_plain_name(name) {
            remove_entry(&dir.join(name), depth);
        }
    }
    let _ = std::fs::remove_file(dir.join(OUTPUT_MARKER));
    let _ = std::fs::remove_dir(dir);
}

/// Delete one listed entry: a regular file, or a sub-output through [`remove_output`].
fn remove_entry(path: &Path, depth: usize) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(m) if m.is_dir() && depth < MAX_OUTPUT_DEPTH => remove_output(path, depth + 1),
        _ => {}
    }
}

/// Create a staging directory and, at once, its [`STAGING_MARKER`]: from then on a killed run's
/// leftover is recognizable as libpdiff's.
fn create_staging(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    let marker = StagingMarker { pdiff_staging: 1, pid: std::process::id() };
    let result = std::fs::write(path.join(STAGING_MARKER), serde_json::to_vec(&marker).expect("a staging marker serializes"));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
    result
}

/// The process that left `path`, when it is a leftover of a libpdiff run: a directory with a
/// valid [`STAGING_MARKER`] (a staging directory), a temporary file `.NAME.tmp-PID-N`, or an old
/// output set aside during a replacement, `.NAME.old-PID-N` (a directory with an output marker).
fn leftover_of(path: &Path) -> Option<u32> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let name = path.file_name()?.to_str()?;
    if meta.is_dir() {
        if let Ok(bytes) = read_regular_nofollow(&path.join(STAGING_MARKER), 4096) {
            let m: StagingMarker = serde_json::from_slice(&bytes).ok()?;
            return (m.pdiff_staging == 1).then_some(m.pid);
        }
    }
    let (tag, pid) = tagged_pid(name)?;
    match tag {
        "tmp" if meta.is_file() => Some(pid),
        // An old output set aside, or exchanged into the staging directory's place.
        "tmp" | "old" if meta.is_dir() && read_marker(path).is_some() => Some(pid),
        _ => None,
    }
}

/// `.NAME.TAG-PID-N` -> (TAG, PID) (the names of [`tagged_sibling`]).
fn tagged_pid(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once('.')?;
    let (tag, nums) = tail.split_once('-')?;
    let (pid, serial) = nums.split_once('-')?;
    serial.parse::<u64>().ok()?;
    Some((tag, pid.parse().ok()?))
}

/// Whether process `pid` no longer exists (a live process, even another user's, is not gone).
fn process_is_gone(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return true };
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Remove a leftover of a gone libpdiff run (see [`leftover_of`]).
fn remove_leftover(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Remove the leftovers beside `dest` of gone runs that wrote it (staging directories and
/// set-aside old outputs named after it): best effort.
fn remove_stale_siblings(dest: &Path) {
    let Ok(entries) = std::fs::read_dir(parent_of(dest)) else { return };
    // The name as tagged_sibling cuts it.
    let probe = tagged_sibling(dest, "tmp");
    let Some(prefix) = probe.file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit_once(".tmp-")).map(|(p, _)| p.to_string()) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Some(n) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if n.strip_prefix(&prefix).is_some_and(|rest| rest.starts_with(".tmp-") || rest.starts_with(".old-")) {
            if let Some(pid) = leftover_of(&path) {
                if process_is_gone(pid) {
                    remove_leftover(&path);
                }
            }
        }
    }
}

/// A name that stays inside its directory.
fn is_plain_name(name: &str) -> bool {
    !(name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0'))
}

/// The marker of `dir`, when it has a valid one (a regular file, not a link, parsing, naming
/// plain entries). Anything else is `None`: the directory is then not a complete output.
fn read_marker(dir: &Path) -> Option<Marker> {
    let bytes = read_regular_nofollow(&dir.join(OUTPUT_MARKER), MAX_MARKER_BYTES).ok()?;
    let m: Marker = serde_json::from_slice(&bytes).ok()?;
    let valid = m.pdiff_output == MARKER_VERSION && m.files.iter().all(|f| is_plain_name(f) && f != OUTPUT_MARKER);
    valid.then_some(m)
}

fn write_marker(dir: &Path, kind: OutputKind, files: &[String]) -> Result<()> {
    let m = Marker { pdiff_output: MARKER_VERSION, kind: kind.name().into(), files: files.to_vec() };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::io(dir.join(OUTPUT_MARKER), std::io::Error::other(e)))?;
    write_atomic(&dir.join(OUTPUT_MARKER), &json)
}

/// The names in a directory, sorted.
fn entry_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        names.push(e.map_err(|e| Error::io(dir, e))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// What the fill wrote into a staging directory: regular files and directories with UTF-8
/// names (the marker is JSON), the marker itself aside.
fn staged_entries(staging: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in entry_names(staging)? {
        let path = staging.join(&name);
        let name = name.into_string().map_err(|n| Error::invalid("output", format!("{}: entry {n:?} is not UTF-8", staging.display())))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !(meta.is_file() || meta.is_dir()) {
            return Err(Error::invalid("output", format!("{}: only files and directories are written", path.display())));
        }
        if name != OUTPUT_MARKER && name != STAGING_MARKER {
            out.push(name);
        }
    }
    Ok(out)
}

/// fsync every file and directory under `dir`, then `dir`.
fn sync_tree(dir: &Path, depth: usize) -> Result<()> {
    if depth > MAX_OUTPUT_DEPTH {
        return Err(Error::invalid("output", format!("{}: directories nested too deep", dir.display())));
    }
    for name in entry_names(dir)? {
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            sync_tree(&path, depth + 1)?;
        } else if meta.is_file() {
            std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}
