//! Our own cubecl kernels lower to PTX for Hopper, and that PTX assembles to machine code,
//! on a machine with no GPU: the CUDA build's lowering (`gpu_kernels::ptx`), then NVIDIA's
//! `ptxas` where one is found (`$PTXAS`, the `PATH`, `$CUDA_HOME`; `.ci/run` fetches it).
//! CI runs it with the CUDA build: `cargo test --profile ci --features cuda --test cuda_ptx`.
//! `SSLHOST_KEEP_PTX=1` keeps the PTX and machine code it wrote, under the temporary folder's
//! `sslhost-ptx-<pid>`.
#![cfg(feature = "cuda")]

use sslhost::kernels::gpu_kernels::ptx;

#[test]
fn our_kernels_lower_to_ptx_for_hopper_and_assemble() {
    let compiled = ptx::compile(ptx::HOPPER, ptx::DRIVER);
    let names: Vec<&str> = compiled.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["hold", "signal", "wait", "copy_words"]);
    let ptxas = ptx::find_ptxas();
    let dir = std::env::temp_dir().join(format!("sslhost-ptx-{}", std::process::id()));
    for (name, result) in compiled {
        let ptx = result.unwrap_or_else(|why| panic!("{name} did not lower: {why}"));
        assert!(
            ptx.text.contains(".target sm_90"),
            "{name}: not for Hopper:\n{}",
            ptx.text
        );
        assert!(
            ptx.text.contains(&format!(".entry {}", ptx.entry)),
            "{name}: no entry `{}`:\n{}",
            ptx.entry,
            ptx.text
        );
        // The handshake's counters are shared with another stream: the wait's poll must be a
        // load the hardware repeats (an atomic one), not a plain load the compiler may hoist
        // out of the loop, and the signal's store must reach the device's memory.
        let atomic = |op: &str| {
            ["relaxed.gpu", "acquire.gpu", "release.gpu", "volatile"]
                .iter()
                .any(|order| ptx.text.contains(&format!("{op}.{order}.global")))
        };
        match name {
            "wait" => assert!(atomic("ld"), "wait: the poll is not atomic:\n{}", ptx.text),
            "signal" => assert!(
                atomic("st"),
                "signal: the store is not atomic:\n{}",
                ptx.text
            ),
            _ => {}
        }
        match &ptxas {
            Some(ptxas) => {
                let said = ptx::assemble(ptxas, &ptx, &dir)
                    .unwrap_or_else(|why| panic!("{name}: {why}\n{}", ptx.text));
                assert!(
                    dir.join(format!("{name}.cubin")).is_file(),
                    "{name}: no machine code"
                );
                println!("{name}: {}", said.trim());
            }
            None => println!("{name}: lowered; no ptxas here to assemble it"),
        }
    }
    if std::env::var_os("SSLHOST_KEEP_PTX").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}
