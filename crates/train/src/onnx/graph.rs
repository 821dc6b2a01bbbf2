//! A small builder over the prost ONNX types: initializers, nodes with generated output
//! names, subgraphs (the body of a `Loop`), and the model wrapper (opset 17, IR version 8,
//! accepted by ONNX Runtime >= 1.14).
use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension, type_proto, AttributeProto,
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;

/// An attribute value for [`GraphBuilder::node`].
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    /// A subgraph (e.g. the `body` of a `Loop`), from [`GraphBuilder::end_subgraph`].
    Graph(Box<GraphProto>),
    /// A one-element float tensor (e.g. `ConstantOfShape`'s `value`).
    Tensor1F32(f32),
}

pub fn attr(name: &str, value: Attr) -> (String, Attr) {
    (name.to_string(), value)
}

/// Builds one model. Nodes, inputs and outputs go to the innermost open graph (the main graph,
/// or a subgraph between `begin_subgraph` and `end_subgraph`); initializers always go to the
/// main graph, which subgraphs may read by name (ONNX outer-scope references), so the weights of
/// a network inlined into a loop body are stored once.
#[derive(Default)]
pub struct GraphBuilder {
    frames: Vec<Frame>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

#[derive(Default)]
struct Frame {
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
}

/// Dimension of a graph input/output: fixed size or named symbolic (dynamic) size.
pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

pub(crate) fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
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
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(elem as i32), shape: Some(TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    fn frame(&mut self) -> &mut Frame {
        if self.frames.is_empty() {
            self.frames.push(Frame::default());
        }
        self.frames.last_mut().expect("at least the main graph")
    }

    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.frame().inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.frame().outputs.push(value_info(name, elem, dims));
    }

    /// Start a subgraph: nodes, inputs and outputs go to it until [`GraphBuilder::end_subgraph`].
    pub fn begin_subgraph(&mut self) {
        self.frame();
        self.frames.push(Frame::default());
    }

    /// Close the innermost subgraph and return it (for an [`Attr::Graph`]).
    pub fn end_subgraph(&mut self, name: &str) -> GraphProto {
        assert!(self.frames.len() > 1, "end_subgraph without begin_subgraph");
        let f = self.frames.pop().expect("checked");
        GraphProto { node: f.nodes, name: Some(name.into()), input: f.inputs, output: f.outputs, ..Default::default() }
    }

    /// A fresh name for a value (e.g. a subgraph's inputs), unique in the whole model.
    pub fn name(&mut self, hint: &str) -> String {
        self.fresh(hint)
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

    /// A float initializer under exactly `name` (a host model's weights keep their names, which
    /// adapters address); the caller keeps names unique.
    pub fn f32_named(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<i64>() as usize, data.len(), "initializer {name}");
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// A float scalar initializer (shape []).
    pub fn f32_scalar(&mut self, hint: &str, value: f32) -> String {
        self.f32(hint, &[], &[value])
    }

    /// An int64 scalar initializer (shape []).
    pub fn i64_scalar(&mut self, hint: &str, value: i64) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![value],
            ..Default::default()
        });
        name
    }

    /// A boolean scalar initializer (shape []).
    pub fn bool_scalar(&mut self, hint: &str, value: bool) -> String {
        let name = self.fresh(hint);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![],
            data_type: Some(DataType::Bool as i32),
            int32_data: vec![value as i32],
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
        self.node_multi(op, inputs, attrs, std::slice::from_ref(&output));
        output
    }

    /// Add a node with the given outputs (e.g. a `Loop`).
    pub fn node_multi(&mut self, op: &str, inputs: &[&str], attrs: Vec<(String, Attr)>, outputs: &[String]) {
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
                    Attr::Graph(g) => {
                        p.g = Some(*g);
                        p.r#type = Some(AttributeType::Graph as i32);
                    }
                    Attr::Tensor1F32(v) => {
                        p.t = Some(TensorProto { dims: vec![1], data_type: Some(DataType::Float as i32), float_data: vec![v], ..Default::default() });
                        p.r#type = Some(AttributeType::Tensor as i32);
                    }
                }
                p
            })
            .collect();
        let name = self.fresh(&format!("{op}_node"));
        self.frame().nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name: Some(name),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
    }

    pub fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.node(op, inputs, vec![], None)
    }

    /// The ONNX model (serialized by [`super::external::encode`], which moves large
    /// initializers to an external data file when the protobuf would be too large).
    pub fn finish(mut self, graph_name: &str, doc: &str) -> ModelProto {
        assert!(self.frames.len() <= 1, "a subgraph was not closed");
        let main = self.frames.pop().unwrap_or_default();
        let graph = GraphProto {
            node: main.nodes,
            name: Some(graph_name.into()),
            initializer: self.initializers,
            input: main.inputs,
            output: main.outputs,
            doc_string: Some(doc.into()),
            ..Default::default()
        };

        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
            producer_name: Some("libpdiff".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            graph: Some(graph),
            ..Default::default()
        }
    }
}
