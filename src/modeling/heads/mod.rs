//! Prediction heads that meta-architectures put on backbone features.

pub mod rpn_head;
pub mod ssdlite_head;

pub use rpn_head::RpnHead;
pub use ssdlite_head::SsdLiteHead;
