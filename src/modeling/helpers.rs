//! Config-reading helpers that the heads and detectors share: which backbone outputs a
//! head reads, box-coder weights. Each names the config key
//! at fault in its error.

use std::collections::BTreeMap;

use candle_core::Result;

use crate::layers::ShapeSpec;

/// The backbone outputs named by `key`, in order, with a clear error for a missing one.
pub fn select_features(
    key: &str,
    names: &[String],
    shapes: &BTreeMap<String, ShapeSpec>,
) -> Result<Vec<ShapeSpec>> {
    if names.is_empty() {
        candle_core::bail!("{key} is empty");
    }
    names
        .iter()
        .map(|f| match shapes.get(f) {
            Some(s) => Ok(*s),
            None => candle_core::bail!(
                "{key}: the backbone has no output `{f}` (it has {:?})",
                shapes.keys().collect::<Vec<_>>()
            ),
        })
        .collect()
}

/// Four box-coder weights from a config list.
pub fn reg_weights(key: &str, w: &[f64]) -> Result<[f32; 4]> {
    match w {
        [a, b, c, d] => Ok([*a as f32, *b as f32, *c as f32, *d as f32]),
        _ => candle_core::bail!("{key} needs 4 values, got {w:?}"),
    }
}
