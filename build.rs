//! Build script of libpdiff.so.
//! - It exports the C ABI (`pdiff_*`) and nothing else: `--exclude-libs=ALL` keeps the
//!   `#[no_mangle]` symbols of dependencies (tch's stream callbacks, bzip2's error hook) and the
//!   C++ of libtch local, so they cannot collide with a host's own copies.
//! - Feature `train`: libtorch_cuda kept as a dependency when linked for CUDA. The library's
//!   only RUNPATH is `$ORIGIN` (libtorch installed next to it); otherwise it relies on the
//!   loader: no path of the build machine.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,--exclude-libs=ALL");
    // A SONAME, so that hosts (and CMake's imported target) record "libpdiff.so", not a path.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libpdiff.so");
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // tests/abi.rs links the engine: an rpath for that test binary alone.
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-rpath,$ORIGIN");
        println!("cargo:rerun-if-env-changed=PDIFF_TORCH_CUDA");
        let want_cuda = std::env::var("PDIFF_TORCH_CUDA").map(|v| v != "0").unwrap_or(true);
        if want_cuda && std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            // Without --no-as-needed the linker drops libtorch_cuda.so and CUDA is never seen.
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
