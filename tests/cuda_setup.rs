//! What the CUDA build sets up before it touches a GPU. Needs no GPU: CI runs it with the CUDA
//! build (`cargo test --profile ci --features cuda --test cuda_setup`). One test: cubecl's
//! configuration is set once per process.
#![cfg(feature = "cuda")]

use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

#[test]
fn compiled_kernels_are_cached_and_a_cubecl_toml_is_still_read() {
    let dir = std::env::temp_dir().join(format!("sslhost-cuda-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A setting cubecl leaves off by default, which only the file turns on.
    std::fs::write(
        dir.join("cubecl.toml"),
        "[autotune]\ndisable_cache = true\n",
    )
    .unwrap();
    std::env::set_current_dir(&dir).unwrap();
    // SAFETY: the only test in this process, before any thread reads the environment.
    unsafe { std::env::remove_var("SSLHOST_KERNEL_CACHE") };

    assert!(sslhost::device::cache_compiled_kernels());
    let config = CubeClRuntimeConfig::get();
    assert!(config.compilation.cache, "the compiled-kernel cache is on");
    assert!(
        config.autotune.disable_cache,
        "the cubecl.toml's own settings are kept"
    );
    // Later calls change nothing and say so.
    assert!(sslhost::device::cache_compiled_kernels());
    std::fs::remove_dir_all(&dir).ok();
}
