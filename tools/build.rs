//! The pdiff binary and the tools' tests run from the checkout: an rpath to the libtorch they
//! were built against spares LD_LIBRARY_PATH (the engine library itself carries no such path).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
        println!("cargo:rerun-if-env-changed=PDIFF_TORCH_CUDA");
        let want_cuda = std::env::var("PDIFF_TORCH_CUDA").map(|v| v != "0").unwrap_or(true);
        if want_cuda && std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
