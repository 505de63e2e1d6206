//! Named losses, as Detectron2's models return them.

use std::collections::BTreeMap;

use candle_core::Tensor;

/// Named losses; the total is their sum.
pub type LossMap = BTreeMap<String, Tensor>;
