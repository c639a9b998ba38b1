//! Runs: checkpoint files, evaluation (kNN), and (later) the run directory and metrics.

pub mod knn;
pub mod tensor_file;
