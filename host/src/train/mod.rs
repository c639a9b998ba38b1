//! Runs: checkpoint files, and (later) the run directory, metrics and evaluation.

pub mod tensor_file;
