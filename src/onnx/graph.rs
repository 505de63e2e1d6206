//! An ONNX graph under construction: named values, initializers from Candle tensors,
//! nodes with attributes, and the model file around them.

use candle_core::{DType, Device, Result, Tensor};

use super::proto::Message;

/// The operator set written: 17 has every operator the exporters use in the form they
/// use it (`Resize` with scales, `GatherND` with `batch_dims`, `NonMaxSuppression`).
pub const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;

/// Element types (`TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Int64 = 7,
    Bool = 9,
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic size (`dim_param`), e.g. a dynamic batch.
    Named(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    String(String),
}

struct Node {
    op: String,
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    attrs: Vec<(String, Attr)>,
}

struct Initializer {
    name: String,
    dtype: DataType,
    dims: Vec<i64>,
    raw: Vec<u8>,
}

struct ValueInfo {
    name: String,
    dtype: DataType,
    dims: Vec<Dim>,
}

#[derive(Default)]
pub struct OnnxGraph {
    name: String,
    nodes: Vec<Node>,
    initializers: Vec<Initializer>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    metadata: Vec<(String, String)>,
    used: std::collections::HashSet<String>,
}

impl OnnxGraph {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Default::default()
        }
    }

    /// A unique value name starting with `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut i = 1;
        while !self.used.insert(name.clone()) {
            name = format!("{hint}_{i}");
            i += 1;
        }
        name
    }

    pub fn input(&mut self, name: &str, dtype: DataType, dims: Vec<Dim>) -> String {
        let name = self.fresh(name);
        self.inputs.push(ValueInfo {
            name: name.clone(),
            dtype,
            dims,
        });
        name
    }

    /// Makes `value` a graph output called `name` (which no other value may have taken:
    /// outputs are what users address by name).
    pub fn output(&mut self, value: &str, name: &str, dtype: DataType, dims: Vec<Dim>) {
        let out = self.fresh(name);
        assert_eq!(out, name, "ONNX output name `{name}` is already taken");
        self.nodes.push(Node {
            op: "Identity".into(),
            name: format!("{out}_output"),
            inputs: vec![value.to_string()],
            outputs: vec![out.clone()],
            attrs: Vec::new(),
        });
        self.outputs.push(ValueInfo {
            name: out,
            dtype,
            dims,
        });
    }

    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    fn initializer(&mut self, hint: &str, dtype: DataType, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.initializers.push(Initializer {
            name: name.clone(),
            dtype,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw,
        });
        name
    }

    /// A Candle tensor (any float dtype, any device) as an f32 initializer.
    pub fn tensor(&mut self, hint: &str, t: &Tensor) -> Result<String> {
        let dims = t.dims().to_vec();
        let data: Vec<f32> = crate::ops::host::to_vec1(
            &t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?,
        )?;
        Ok(self.floats(hint, &dims, &data))
    }

    pub fn floats(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(hint, DataType::Float, dims, raw)
    }

    pub fn ints(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(hint, DataType::Int64, dims, raw)
    }

    /// A 0-d float constant.
    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.floats(hint, &[], &[v])
    }

    /// A 1-d int64 constant (axes, shapes, `k`, slice bounds).
    pub fn int_list(&mut self, hint: &str, vs: &[i64]) -> String {
        self.ints(hint, &[vs.len()], vs)
    }

    /// A node with one output; returns the output's name. `""` is an omitted optional
    /// input.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    /// A node with `n` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        n: usize,
    ) -> Vec<String> {
        let base = self.fresh(&op.to_ascii_lowercase());
        let outputs: Vec<String> = (0..n)
            .map(|i| {
                if i == 0 {
                    base.clone()
                } else {
                    self.fresh(&format!("{base}_out{i}"))
                }
            })
            .collect();
        self.nodes.push(Node {
            op: op.to_string(),
            name: base,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.clone(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        outputs
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The model file: this graph, opset [`OPSET`], the metadata as `metadata_props`.
    pub fn to_model_bytes(&self, producer_version: &str) -> Vec<u8> {
        let mut graph = Message::new();
        for n in &self.nodes {
            let mut m = Message::new();
            for i in &n.inputs {
                m.string(1, i);
            }
            for o in &n.outputs {
                m.string(2, o);
            }
            m.string(3, &n.name).string(4, &n.op);
            for (k, v) in &n.attrs {
                let mut a = Message::new();
                a.string(1, k);
                match v {
                    Attr::Float(f) => a.float(2, *f).int(20, 1),
                    Attr::Int(i) => a.int(3, *i).int(20, 2),
                    Attr::String(s) => a.string(4, s).int(20, 3),
                    Attr::Ints(vs) => a.packed_ints(8, vs).int(20, 7),
                };
                m.message(5, &a);
            }
            graph.message(1, &m);
        }
        graph.string(2, &self.name);
        for t in &self.initializers {
            let mut m = Message::new();
            m.packed_ints(1, &t.dims)
                .int(2, t.dtype as i64)
                .string(8, &t.name)
                .bytes(9, &t.raw);
            graph.message(5, &m);
        }
        for (field, list) in [(11, &self.inputs), (12, &self.outputs)] {
            for v in list {
                graph.message(field, &value_info(v));
            }
        }
        let mut model = Message::new();
        model
            .int(1, IR_VERSION)
            .string(2, "candletron")
            .string(3, producer_version);
        let mut opset = Message::new();
        opset.string(1, "").int(2, OPSET);
        model.message(8, &opset);
        model.message(7, &graph);
        for (k, v) in &self.metadata {
            let mut e = Message::new();
            e.string(1, k).string(2, v);
            model.message(14, &e);
        }
        model.into_bytes()
    }
}

fn value_info(v: &ValueInfo) -> Message {
    let mut shape = Message::new();
    for d in &v.dims {
        let mut dim = Message::new();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Named(s) => dim.string(2, s),
        };
        shape.message(1, &dim);
    }
    let mut tensor = Message::new();
    tensor.int(1, v.dtype as i64).message(2, &shape);
    let mut ty = Message::new();
    ty.message(1, &tensor);
    let mut m = Message::new();
    m.string(1, &v.name).message(2, &ty);
    m
}
