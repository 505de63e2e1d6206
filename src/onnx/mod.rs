//! Writing ONNX models. Modules describe their inference computation into an
//! [`OnnxGraph`] (as they run it: norms folded, fixed input size), and the graph is
//! serialised in ONNX's protobuf format by a small encoder of our own: the handful of
//! messages a model file needs does not justify a protobuf code generator.

mod graph;
mod proto;

pub use graph::{Attr, DataType, Dim, OnnxGraph, OPSET};
