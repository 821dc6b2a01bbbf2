//! mnist-cnn-bn's network as an ONNX model, as a host serves it: `images` f32[N, 784] ->
//! `logits` f32[N, 10], every weight an initializer under its checkpoint name (`bn2.weight`,
//! ...), BatchNorm in inference mode with its running statistics. Written with pdiff-train's
//! ONNX builder (the prost types of the vendored onnx.proto). `pdiff onnx expose` then makes
//! the generated tensors (the layout's, e.g. `bn2.weight`) graph inputs for adapters.
use pdiff_core::error::{Error, Result};
use pdiff_train::onnx::graph::{attr, Attr, Dim, GraphBuilder};
use pdiff_train::onnx::proto::tensor_proto::DataType;
use pdiff_train::TorchResult;
use prost::Message;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// The network of `tensors` (a checkpoint of the task: conv1..3, bn1..3 with running
/// statistics, fc) as ONNX bytes; `eps` is the BatchNorm epsilon.
pub fn network(tensors: &HashMap<String, Tensor>, eps: f32) -> Result<Vec<u8>> {
    let mut b = GraphBuilder::default();
    let init = |b: &mut GraphBuilder, name: &str| -> Result<String> {
        let t = tensors.get(name).ok_or_else(|| Error::invalid("checkpoint", format!("mnist-cnn-bn needs tensor '{name}'")))?;
        let values = Vec::<f32>::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).torch()?;
        Ok(b.f32_named(name, &t.size(), &values))
    };
    let x = b.input("images", DataType::Float, &[Dim::Named("n"), Dim::Fixed(784)]);
    let shape = b.i64("shape", &[-1, 1, 28, 28]);
    let mut h = b.op("Reshape", &[&x, &shape]);
    // conv1 1 -> C1, conv2 C1 -> C2, conv3 C2 -> C3 (the shapes come from the checkpoint).
    for i in 1..=3 {
        let (conv, bn) = (format!("conv{i}"), format!("bn{i}"));
        let w = init(&mut b, &format!("{conv}.weight"))?;
        let bias = init(&mut b, &format!("{conv}.bias"))?;
        h = b.node("Conv", &[&h, &w, &bias], vec![attr("pads", Attr::Ints(vec![1, 1, 1, 1]))], None);
        let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"].iter().map(|p| init(&mut b, &format!("{bn}.{p}"))).collect::<Result<_>>()?;
        let inputs: Vec<&str> = std::iter::once(h.as_str()).chain(names.iter().map(String::as_str)).collect();
        h = b.node("BatchNormalization", &inputs, vec![attr("epsilon", Attr::Float(eps))], None);
        h = b.op("Relu", &[&h]);
        h = b.node("MaxPool", &[&h], vec![attr("kernel_shape", Attr::Ints(vec![2, 2])), attr("strides", Attr::Ints(vec![2, 2]))], None);
    }
    h = b.node("Flatten", &[&h], vec![attr("axis", Attr::Int(1))], None);
    let fc_w = init(&mut b, "fc.weight")?;
    let fc_b = init(&mut b, "fc.bias")?;
    b.node("Gemm", &[&h, &fc_w, &fc_b], vec![attr("transB", Attr::Int(1))], Some("logits"));
    b.output("logits", DataType::Float, &[Dim::Named("n"), Dim::Fixed(10)]);
    Ok(b.finish("mnist-cnn-bn", "mnist-cnn-bn (libpdiff's reference task): images [N, 784] -> logits [N, 10]").encode_to_vec())
}
