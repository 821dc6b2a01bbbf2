//! A small builder over the prost ONNX types: initializers, nodes with generated output
//! names, and the model wrapper (opset 17, IR version 8, accepted by ONNX Runtime >= 1.14).
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// An attribute value for [`GraphBuilder::node`].
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

pub fn attr(name: &str, value: Attr) -> (String, Attr) {
    (name.to_string(), value)
}

#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
}

/// Dimension of a graph input/output: fixed size or named symbolic (dynamic) size.
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Named(s) => dimension::Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A float initializer (stored as little-endian raw_data).
    pub fn f32(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer {hint}");
        let name = self.fresh(hint);
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// An int64 initializer.
    pub fn i64(&mut self, hint: &str, data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![data.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name
    }

    /// Add a node with one output; returns the output's name (or `out` when given).
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(String, Attr)>, out: Option<&str>) -> String {
        let output = out.map(str::to_string).unwrap_or_else(|| self.fresh(&op.to_lowercase()));
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto { name: Some(name), ..Default::default() };
                match a {
                    Attr::Int(i) => {
                        p.i = Some(i);
                        p.r#type = Some(AttributeType::Int as i32);
                    }
                    Attr::Ints(v) => {
                        p.ints = v;
                        p.r#type = Some(AttributeType::Ints as i32);
                    }
                    Attr::Float(f) => {
                        p.f = Some(f);
                        p.r#type = Some(AttributeType::Float as i32);
                    }
                }
                p
            })
            .collect();
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: Some(name),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        output
    }

    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.node(op, inputs, vec![], None)
    }

    /// Serialize as an ONNX model.
    pub fn finish(self, graph_name: &str, doc: &str) -> Vec<u8> {
        let graph = GraphProto {
            node: self.nodes,
            name: Some(graph_name.into()),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            doc_string: Some(doc.into()),
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
            producer_name: Some("libpdiff".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(graph),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}
