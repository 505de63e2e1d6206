//! candletron: Detectron2-style object and face detection on Candle.
//!
//! The layout mirrors Detectron2: [`config`] holds the typed config tree, [`modeling`]
//! the backbones and meta-architectures behind string registries, [`layers`] the
//! building blocks, [`checkpoint`] reads PyTorch and safetensors weights.

// Unit tests read tensor values directly; the library's reads go through `ops::host`.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod fuzzing;
pub mod layers;
pub mod modeling;
pub mod onnx;
pub mod ops;
pub mod serve;
pub mod solver;
pub mod structures;
pub mod utils;

pub use error::{Error, Result};
