//! Box geometry shared by anchors, matching, losses and inference.

pub mod boxes;
