//! Files read and written safely. Every file the library writes goes to a temporary name in the
//! same directory, is fsynced, renamed into place, and then the directory is fsynced: an
//! interruption leaves the old file or the new one, never half of one. Every file it reads is
//! opened without blocking, checked to be a regular file and read within a bound, so a FIFO or a
//! device cannot hang or flood the host; large buffers are allocated fallibly ([`try_vec`]).
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling temporary path, unique per process and call: `.NAME.tmp-PID-N`.
pub fn temp_sibling(path: &Path) -> PathBuf {
    tagged_sibling(path, "tmp")
}

/// The longest file name a Linux file system takes (NAME_MAX, in bytes).
const NAME_MAX: usize = 255;

/// `.NAME.TAG-PID-N` beside `path`. NAME is the file name cut (at a character boundary) so that
/// the whole stays within NAME_MAX for any valid name: a temporary name never fails where the
/// user's name would work.
pub(crate) fn tagged_sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let suffix = format!(".{tag}-{}-{}", std::process::id(), next_serial());
    let mut keep = name.len().min(NAME_MAX - 1 - suffix.len());
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    path.with_file_name(format!(".{}{suffix}", &name[..keep]))
}

pub(crate) fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The directory that holds `path` ("." for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` atomically: a temporary sibling, fsynced, renamed over `path`, then
/// the directory fsynced. Missing parent directories are created. Replaces whatever file is at
/// `path`: callers writing where a user's file may be use [`write_output_file`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// fsync a directory, so that renames in it are durable. A file system that cannot fsync a
/// directory (EINVAL) has nothing more to make durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    match std::fs::File::open(dir).and_then(|f| f.sync_all()) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(Error::io(dir, e)),
        _ => Ok(()),
    }
}

/// Rename `from` to `to` unless `to` exists (then `AlreadyExists`): atomically where the file
/// system supports it (renameat2 RENAME_NOREPLACE), else with a check just before.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two NUL-terminated paths that outlive the call.
        if unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
            return Err(e);
        }
    }
    match std::fs::symlink_metadata(to) {
        Ok(_) => Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// Exchange `a` and `b` atomically (renameat2 RENAME_EXCHANGE); `Unsupported` where the file
/// system or the platform cannot.
pub(crate) fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two NUL-terminated paths that outlive the call.
        if unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) {
            return Err(e);
        }
    }
    let _ = (a, b);
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// A vector of `len` copies of `value`, or an error (naming `what`) when the memory cannot be had:
/// never the abort of the host process that a failed infallible allocation is.
pub fn try_vec<T: Clone>(len: usize, value: T, what: &dyn std::fmt::Display) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| out_of_memory(len.saturating_mul(std::mem::size_of::<T>()) as u64, what))?;
    v.resize(len, value);
    Ok(v)
}

/// Room for `additional` more elements in `v`, or an error naming `what`.
pub fn try_reserve<T>(v: &mut Vec<T>, additional: usize, what: &dyn std::fmt::Display) -> Result<()> {
    v.try_reserve_exact(additional).map_err(|_| out_of_memory(additional.saturating_mul(std::mem::size_of::<T>()) as u64, what))
}

fn out_of_memory(bytes: u64, what: &dyn std::fmt::Display) -> Error {
    Error::OutOfMemory { what: what.to_string(), bytes }
}

/// Read a whole regular file of at most `max_bytes`. Anything else (a FIFO, a device, a
/// directory) is refused without blocking: the file is opened non-blocking and checked with
/// fstat, so a path swapped for a FIFO between a check and the open cannot hang the caller.
pub fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    read_bounded(path, max_bytes, 0)
}

/// [`read_regular`] that also refuses a symbolic link at `path` (for the library's own markers).
pub(crate) fn read_regular_nofollow(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    read_bounded(path, max_bytes, libc::O_NOFOLLOW)
}

/// Open `path` without blocking (a FIFO or device is refused, not waited on) and check that it
/// is a regular file of at most `max_bytes`; returns the file and its length.
pub fn open_regular(path: &Path, max_bytes: u64) -> std::io::Result<(std::fs::File, u64)> {
    open_bounded(path, max_bytes, 0)
}

fn open_bounded(path: &Path, max_bytes: u64, extra_flags: i32) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | extra_flags).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes is more than the {max_bytes} bytes allowed for this file", meta.len()),
        ));
    }
    Ok((file, meta.len()))
}

fn read_bounded(path: &Path, max_bytes: u64, extra_flags: i32) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_bounded(path, max_bytes, extra_flags)?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len as usize).map_err(|_| no_memory(len))?;
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the file grew beyond {max_bytes} bytes while being read")));
    }
    Ok(bytes)
}

/// [`read_regular`] into shared memory, for large files handed to several users (ONNX Runtime
/// sessions keep an `Arc<[u8]>` of the external data they load): read straight into the shared
/// allocation, so a multi-GiB file is never held twice.
pub fn read_regular_shared(path: &Path, max_bytes: u64) -> std::io::Result<std::sync::Arc<[u8]>> {
    use std::io::Read;
    let (mut file, len) = open_bounded(path, max_bytes, 0)?;
    let len = usize::try_from(len).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "file too large for this machine"))?;
    // The shared allocation itself cannot fail softly (Arc has no fallible constructor on
    // stable Rust): a fallible allocation of the same size first tells whether the memory can
    // be had, so that a host short of it gets an error instead of an abort.
    let mut probe = Vec::<u8>::new();
    probe.try_reserve_exact(len).map_err(|_| no_memory(len as u64))?;
    drop(probe);
    let mut shared = std::sync::Arc::<[u8]>::new_uninit_slice(len);
    let buf = std::sync::Arc::get_mut(&mut shared).expect("a new Arc is unique");
    // Zeroed first: read_exact needs initialized bytes.
    for b in buf.iter_mut() {
        b.write(0);
    }
    // SAFETY: every element was just initialized.
    let mut shared = unsafe { shared.assume_init() };
    let buf = std::sync::Arc::get_mut(&mut shared).expect("still unique");
    file.read_exact(buf).map_err(|e| std::io::Error::new(e.kind(), format!("the file shrank while being read ({e})")))?;
    if file.read(&mut [0u8; 1])? != 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the file grew beyond {len} bytes while being read")));
    }
    Ok(shared)
}

fn no_memory(len: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::OutOfMemory, crate::error::ReadOutOfMemory(len))
}
