//! Finding and loading ONNX Runtime (once per process), and the CUDA libraries its CUDA
//! execution provider needs.
//!
//! No path of the build machine is involved: the library comes from the caller, the
//! environment or the system loader, and the CUDA libraries from the loader, an explicit
//! directory list, or the NVIDIA packages installed beside that ONNX Runtime (pip's layout).
use crate::error::{Error, Result};
use once_cell::sync::OnceCell;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

pub(crate) struct Env {
    /// The file actually loaded (resolved through the loader when it was found by name).
    pub library: PathBuf,
    pub env: ort::environment::Environment,
}

static ENV: OnceCell<Env> = OnceCell::new();
static ENV_INIT: Mutex<()> = Mutex::new(());

/// The loaded runtime, or an error when [`init`] has not succeeded yet.
pub(crate) fn env() -> Result<&'static Env> {
    ENV.get().ok_or_else(|| Error::Runtime("ONNX Runtime is not initialized".into()))
}

/// Load ONNX Runtime once per process and return the path of the file loaded. Errors never go
/// through `ort::Error` before the library is loaded (constructing one would call into the
/// missing library). Once loaded, a later call with another path keeps the first library
/// (ONNX Runtime cannot be unloaded from a process).
pub fn init(explicit: Option<&Path>) -> Result<&'static Path> {
    if let Some(e) = ENV.get() {
        return Ok(&e.library);
    }
    let _guard = ENV_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = ENV.get() {
        return Ok(&e.library);
    }
    let requested = library_path(explicit)?;
    let (builder, name) = if requested.is_absolute() || requested.components().count() > 1 {
        let b = ort::init_from(&requested).map_err(|e| Error::Runtime(format!("cannot load {}: {e}", requested.display())))?;
        (b, requested.clone())
    } else {
        // The system loader's search, under each of its names in turn.
        let mut last = String::new();
        let mut found = None;
        for name in LOADER_NAMES {
            match ort::init_from(name) {
                Ok(b) => {
                    found = Some((b, PathBuf::from(name)));
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
    let library = loaded_path(&name).unwrap_or(name);
    let e = ENV.get_or_init(|| Env { library, env });
    Ok(&e.library)
}

/// The file a library already loaded under `name` (a path or a bare soname) comes from: the
/// loader resolved it, dladdr says where.
fn loaded_path(name: &Path) -> Option<PathBuf> {
    let cname = CString::new(name.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: RTLD_NOLOAD only looks the library up among those already loaded (ort loaded it);
    // the handle is released right away, the symbol address is only passed to dladdr.
    unsafe {
        let handle = libc::dlopen(cname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        let found = !sym.is_null() && libc::dladdr(sym, &mut info) != 0 && !info.dli_fname.is_null();
        let path = found.then(|| PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(CStr::from_ptr(info.dli_fname).to_bytes())));
        libc::dlclose(handle);
        path
    }
}

/// The libraries of ONNX Runtime's CUDA execution provider (CUDA 13, cuDNN 9), in load order
/// (cuBLAS needs cuBLASLt first), with whether the provider works without them. The same list
/// as onnxruntime's own `preload_dlls()` on Linux.
const CUDA_LIBRARIES: [(&str, bool); 7] = [
    ("libcudart.so.13", false),
    ("libcublasLt.so.13", false),
    ("libcublas.so.13", false),
    ("libcurand.so.10", false),
    ("libcufft.so.12", true),
    ("libnvrtc.so.13", true),
    ("libcudnn.so.9", false),
];

/// What [`preload_cuda_libraries`] did, for the sampler's backend report.
#[derive(Clone, Debug, Default)]
pub struct CudaPreload {
    /// Libraries found in a directory and loaded from there.
    pub loaded: Vec<PathBuf>,
    /// Libraries already in the process or left to the loader's own search.
    pub from_loader: Vec<String>,
    /// Required libraries that could not be loaded at all, with the loader's message.
    pub missing: Vec<(String, String)>,
    /// The directories searched, in order.
    pub searched: Vec<PathBuf>,
}

/// Where the CUDA provider's libraries are looked for before the loader's own search:
/// `$PDIFF_CUDA_LIBRARY_PATH` (colon-separated), then the NVIDIA packages installed beside the
/// ONNX Runtime in use (pip puts both in one site-packages: `onnxruntime/capi/libonnxruntime.so.*`
/// and `nvidia/cu13/lib`, `nvidia/cudnn/lib`).
pub fn cuda_library_dirs(ort_library: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PDIFF_CUDA_LIBRARY_PATH").map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect()).unwrap_or_default();
    // site-packages/onnxruntime/capi/libonnxruntime.so.X -> site-packages
    if let Some(site) = ort_library.parent().and_then(Path::parent).and_then(Path::parent) {
        for sub in ["nvidia/cu13/lib", "nvidia/cudnn/lib"] {
            let d = site.join(sub);
            if d.is_dir() {
                dirs.push(d);
            }
        }
    }
    dirs
}

/// Load the CUDA provider's libraries process-wide (RTLD_GLOBAL) so that the provider's own
/// `dlopen` finds them by soname. A full build has them already (libtorch_cuda loaded them);
/// a serve-only library in a plain process has nothing else that would. Loaded libraries stay
/// for the life of the process, as they would after the provider loaded them.
pub fn preload_cuda_libraries(ort_library: &Path) -> CudaPreload {
    static DONE: OnceCell<CudaPreload> = OnceCell::new();
    DONE.get_or_init(|| {
        let mut report = CudaPreload { searched: cuda_library_dirs(ort_library), ..Default::default() };
        for (name, optional) in CUDA_LIBRARIES {
            let in_dir = report.searched.iter().map(|d| d.join(name)).find(|p| p.is_file());
            let target = in_dir.clone().unwrap_or_else(|| PathBuf::from(name));
            match dlopen_global(&target) {
                Ok(()) => match in_dir {
                    Some(p) => report.loaded.push(p),
                    None => report.from_loader.push(name.to_string()),
                },
                Err(e) if !optional => report.missing.push((name.to_string(), e)),
                Err(_) => {}
            }
        }
        report
    })
    .clone()
}

fn dlopen_global(path: &Path) -> std::result::Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "path contains NUL".to_string())?;
    // SAFETY: loading a shared library runs its initializers; these are NVIDIA's runtime
    // libraries, which the CUDA provider would load the same way. The handle is kept on
    // purpose (never dlclose'd).
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local message or NULL.
        let msg = unsafe { libc::dlerror() };
        return Err(if msg.is_null() { "unknown dlopen error".into() } else { unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned() });
    }
    Ok(())
}
