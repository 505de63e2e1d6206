//! The meta-architecture registry, with the built-in models registered.

use std::sync::{Arc, LazyLock};

use candle_nn::VarBuilder;

use super::classifier::Classifier;
use super::meta_arch::{MetaArch, MetaArchBuilder};
use super::rcnn::GeneralizedRcnn;
use super::ssdlite::SsdLite;
use crate::config::Config;
use crate::utils::registry::Registry;

pub static META_ARCH_REGISTRY: LazyLock<Registry<MetaArchBuilder>> = LazyLock::new(|| {
    let registry: Registry<MetaArchBuilder> = Registry::new("meta-architecture");
    registry.register(
        "Classifier",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(Classifier::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry.register(
        "GeneralizedRCNN",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(GeneralizedRcnn::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry.register(
        "SSDLite",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(SsdLite::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry
});
