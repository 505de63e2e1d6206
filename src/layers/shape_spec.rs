//! What a module produces, so the next module can be built without a dummy forward.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeSpec {
    pub channels: usize,
    /// Input pixels per output pixel along each side.
    pub stride: usize,
}
