//! Build script: rpath to the project's libtorch (no LD_LIBRARY_PATH for users), optional
//! libtorch_cuda link, and the prost types of the vendored onnx.proto (protox: no protoc needed).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rerun-if-env-changed=PDIFF_TORCH_CUDA");
        let want_cuda = std::env::var("PDIFF_TORCH_CUDA").map(|v| v != "0").unwrap_or(true);
        if want_cuda && std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
            // Without --no-as-needed the linker drops libtorch_cuda.so and CUDA is never seen.
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new().compile_fds(fds).expect("generate onnx prost types");
}
