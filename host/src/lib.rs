//! sslhost: self-supervised training loops as Rhai scripts over Burn.
//!
//! The host owns tensors, autodiff, models, optimisers and devices; scripts own the method.
//! Modules below `api/` know nothing of Rhai.

pub mod allocator;
pub mod api;
pub mod augment;
pub mod budget;
pub mod context;
pub mod data;
pub mod device;
pub mod engine;
pub mod error;
pub mod files;
pub mod guard;
pub mod kernels;
pub mod live;
pub mod located;
pub mod models;
pub mod optim;
pub mod profiling;
pub mod reference;
pub mod session;
pub mod sweep;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
