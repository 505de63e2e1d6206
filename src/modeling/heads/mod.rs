//! Prediction heads that meta-architectures put on backbone features.

pub mod ssdlite_head;

pub use ssdlite_head::SsdLiteHead;
