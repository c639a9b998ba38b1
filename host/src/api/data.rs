//! `dataset(..)`, `loader(..)` and batches in scripts.

use rhai::plugin::*;

/// Datasets and loaders.
#[export_module]
pub mod data_api {}
