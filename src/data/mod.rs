//! Data: dataset metadata and the transforms that turn images into model inputs.

pub mod augmentation;
pub mod build;
pub mod catalog;
pub mod datasets;
pub mod image_io;
pub mod loader;
pub mod mapper;
pub mod rng;
pub mod samplers;
pub mod statistics;
pub mod transforms;

/// ImageNet-1k class names in torchvision's order (index = class id).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}
