//! An MLP of the reference tasks (fc1, ReLU, fc2, ReLU, fc3: mnist-mlp3's and mnist-tasks'
//! networks) as an ONNX model a host serves: `images` f32[N, 784] -> `logits` f32[N, classes],
//! every weight an initializer under its layout name (`fc1.weight`, ...).
use pdiff_core::error::{Error, Result};
use pdiff_core::params::Layout;
use pdiff_train::onnx::graph::{attr, Attr, Dim, GraphBuilder};
use pdiff_train::onnx::proto::tensor_proto::DataType;
use prost::Message;

/// The network with `flat`'s values (placed by `layout`, which must hold fc1..fc3's weight and
/// bias) as its initializers.
pub fn network(layout: &Layout, flat: &[f32]) -> Result<Vec<u8>> {
    if flat.len() != layout.param_count() {
        return Err(Error::invalid("parameters", format!("vector has {} values, layout needs {}", flat.len(), layout.param_count())));
    }
    let mut b = GraphBuilder::default();
    let mut h = b.input("images", DataType::Float, &[Dim::Named("n"), Dim::Fixed(784)]);
    let mut classes = 0;
    for i in 1..=3 {
        let init = |b: &mut GraphBuilder, name: String| -> Result<(String, Vec<usize>)> {
            let t = layout.get(&name).ok_or_else(|| Error::invalid("layout", format!("the MLP needs tensor '{name}'")))?;
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            Ok((b.f32_named(&name, &dims, &flat[t.offset..t.offset + t.numel()]), t.shape.clone()))
        };
        let (w, shape) = init(&mut b, format!("fc{i}.weight"))?;
        let (bias, _) = init(&mut b, format!("fc{i}.bias"))?;
        classes = shape[0];
        let out = if i == 3 { Some("logits") } else { None };
        h = b.node("Gemm", &[&h, &w, &bias], vec![attr("transB", Attr::Int(1))], out);
        if i < 3 {
            h = b.op("Relu", &[&h]);
        }
    }
    b.output("logits", DataType::Float, &[Dim::Named("n"), Dim::Fixed(classes as i64)]);
    Ok(b.finish("mlp", "a reference task's MLP: images [N, 784] -> logits").encode_to_vec())
}
