//! `transform([..])` and the augmentation ops in scripts.

use rhai::plugin::*;

/// Augmentations.
#[export_module]
pub mod augment_api {}
