//! Runs: the run directory and metrics, checkpoint files, evaluation (kNN).

pub mod checkpoint;
pub mod current;
pub mod knn;
pub mod run_dir;
pub mod tensor_file;
