//! Runs: the run directory and metrics (JSON lines, TensorBoard, curves), progress,
//! checkpoint files, exported backbones, evaluation (kNN), and the captured step's probe.

pub mod capture;
pub mod checkpoint;
pub mod current;
pub mod curves;
pub mod evaluation;
pub mod export;
pub mod knn;
pub mod linear_eval;
pub mod progress;
pub mod run_dir;
pub mod tensor_file;
pub mod tensorboard;
