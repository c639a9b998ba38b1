//! Augmentations as plain Burn batch ops on `[N, C, H, W]` with per-sample random parameters
//! drawn from a seeded generator. Plain Rust: nothing here knows Rhai.
