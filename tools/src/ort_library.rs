//! Where the `pdiff` command line finds ONNX Runtime. The engine itself only looks at an
//! explicit path, `$PDIFF_ORT_LIB`, `$ORT_DYLIB_PATH` and the system loader; on a development
//! machine the library sits in the project venv that scripts/setup.sh made (pip's onnxruntime
//! wheel ships `onnxruntime/capi/libonnxruntime.so.<version>`), so the tools look there too.
use std::path::{Path, PathBuf};

/// The library to pass to the engine: `explicit` (`--ort-lib`) when given; nothing when one of
/// the environment variables names a library (the engine reads them); else the newest
/// `libonnxruntime.so.*` of a `.venv` in the working directory or above the executable
/// (`target/release/pdiff` lives two levels below the checkout); else nothing (the loader).
pub fn resolve(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if ["PDIFF_ORT_LIB", "ORT_DYLIB_PATH"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty())) {
        return None;
    }
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    roots.iter().find_map(|r| venv_library(r))
}

/// The newest `libonnxruntime.so.*` of `<root>/.venv` (any python3.x).
fn venv_library(root: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(root.join(".venv/lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so.")))
        .collect();
    found.sort();
    found.pop()
}
