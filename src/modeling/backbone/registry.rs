//! The backbone registry, with the built-in backbones registered.

use std::sync::LazyLock;

use super::backbone::BackboneBuilder;
use super::{fpn, mobilenet_v2};
use crate::utils::registry::Registry;

pub static BACKBONE_REGISTRY: LazyLock<Registry<BackboneBuilder>> = LazyLock::new(|| {
    let registry = Registry::new("backbone");
    mobilenet_v2::register(&registry);
    fpn::register(&registry);
    registry
});
