//! Datasets (idx, CIFAR binary, image folders, synthetic, the embedded Fashion-MNIST sample)
//! and the prefetching loader. Plain Rust: nothing here knows Rhai.
