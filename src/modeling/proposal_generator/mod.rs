//! Proposal generators: the first stage of two-stage detectors.

pub mod rpn;

pub use rpn::{Proposals, Rpn};
