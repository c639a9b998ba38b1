//! The Rhai surface: one `#[export_module]` per file, joined into one package.
//!
//! Functions here translate between Rhai values and the host's types and turn every failure
//! (including a panic inside Burn) into a Rhai runtime error, which the engine locates at the
//! calling script position.

pub mod args;
pub mod augment;
pub mod config;
pub mod data;
pub mod live;
pub mod models;
pub mod optim;
pub mod run;
pub mod system;
pub mod tensor;

use rhai::{Engine, exported_module};

/// Registers every host module in `engine` as global functions and types.
pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(tensor::tensor_api).into());
    engine.register_global_module(exported_module!(models::models_api).into());
    engine.register_global_module(exported_module!(optim::optim_api).into());
    engine.register_global_module(exported_module!(config::config_api).into());
    engine.register_global_module(exported_module!(live::live_api).into());
    engine.register_global_module(exported_module!(run::run_api).into());
    run::register_iterators(engine);
    engine.register_global_module(exported_module!(data::data_api).into());
    engine.register_global_module(exported_module!(augment::augment_api).into());
    engine.register_global_module(exported_module!(system::system_api).into());
}
