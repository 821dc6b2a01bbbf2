//! Build script of pdiff-train: the prost types of the vendored ONNX schema (protox compiles
//! proto/onnx.proto: no protoc needed), and an rpath to the build's libtorch for this crate's
//! own test binaries only (a library that links this crate gets no path of the build machine).
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new().compile_fds(fds).expect("generate onnx prost types");
}
