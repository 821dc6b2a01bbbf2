//! Build script of pdiff-train: the prost types of the vendored ONNX schema (protox compiles
//! proto/onnx.proto: no protoc needed), and for this crate's own test binaries only an rpath to
//! the build's libtorch and, in a CUDA build, libtorch_cuda kept as a dependency (the CUDA tests
//! need it; a library that links this crate gets no path of the build machine).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
        println!("cargo:rerun-if-env-changed=PDIFF_TORCH_CUDA");
        let want_cuda = std::env::var("PDIFF_TORCH_CUDA").map(|v| v != "0").unwrap_or(true);
        if want_cuda && std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            // Without --no-as-needed the linker drops libtorch_cuda.so and CUDA is never seen.
            println!("cargo:rustc-link-arg-tests=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new().compile_fds(fds).expect("generate onnx prost types");
}
