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

use rhai::{Engine, Module, exported_module};

/// The host modules, each under the name of its reference page (`sslhost docs`).
pub fn modules() -> Vec<(&'static str, Module)> {
    vec![
        ("tensor", exported_module!(tensor::tensor_api)),
        ("models", exported_module!(models::models_api)),
        ("optim", exported_module!(optim::optim_api)),
        ("config", exported_module!(config::config_api)),
        ("live", exported_module!(live::live_api)),
        ("run", exported_module!(run::run_api)),
        ("data", exported_module!(data::data_api)),
        ("augment", exported_module!(augment::augment_api)),
        ("system", exported_module!(system::system_api)),
    ]
}

/// Registers every host module in `engine` as global functions and types.
pub fn register(engine: &mut Engine) {
    for (_, module) in modules() {
        engine.register_global_module(module.into());
    }
    run::register_iterators(engine);
}
