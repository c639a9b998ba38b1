//! Our own cubecl kernels lower to PTX, and that PTX assembles to machine code, for every
//! GPU architecture CUDA 13 supports (Turing to Blackwell, Hopper's lent H100s and H200s among
//! them), on a machine with no GPU: the CUDA build's lowering (`gpu_kernels::ptx`), then
//! NVIDIA's `ptxas` where one is found (`$PTXAS`, the `PATH`, `$CUDA_HOME`; `.ci/run` fetches
//! it). CI runs it with the CUDA build:
//! `cargo test --profile ci --features cuda --test cuda_ptx`. `SSLHOST_KEEP_PTX=1` keeps the
//! PTX and machine code it wrote, under the temporary folder's `sslhost-ptx-<pid>`.
#![cfg(feature = "cuda")]

use sslhost::kernels::gpu_kernels::ptx;

#[test]
fn our_kernels_lower_to_ptx_and_assemble_for_each_architecture() {
    let ptxas = ptx::find_ptxas();
    let dir = std::env::temp_dir().join(format!("sslhost-ptx-{}", std::process::id()));
    for &(arch, gpus) in ptx::ARCHITECTURES {
        let compiled = ptx::compile(arch, ptx::DRIVER);
        let names: Vec<&str> = compiled.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["hold", "signal", "wait", "copy_words"]);
        for (name, result) in compiled {
            let ptx = result.unwrap_or_else(|why| panic!("{name} ({gpus}): did not lower: {why}"));
            check(&ptx, arch, gpus);
            match &ptxas {
                Some(ptxas) => {
                    let here = dir.join(format!("sm_{arch}"));
                    let said = ptx::assemble(ptxas, &ptx, &here)
                        .unwrap_or_else(|why| panic!("{name} ({gpus}): {why}\n{}", ptx.text));
                    assert!(
                        here.join(format!("{name}.cubin")).is_file(),
                        "{name} ({gpus}): no machine code"
                    );
                    println!("sm_{arch} {name}: {}", said.trim());
                }
                None => println!("sm_{arch} {name}: lowered; no ptxas here to assemble it"),
            }
        }
    }
    if std::env::var_os("SSLHOST_KEEP_PTX").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// What `ptx` must say, whatever assembles it: its target and entry point, and for the
/// handshake's kernels, atomic accesses to the counters.
fn check(ptx: &ptx::Ptx, arch: u32, gpus: &str) {
    let name = ptx.kernel;
    assert!(
        ptx.text.contains(&format!(".target sm_{arch}")),
        "{name}: not for {gpus}:\n{}",
        ptx.text
    );
    assert!(
        ptx.text.contains(&format!(".entry {}", ptx.entry)),
        "{name}: no entry `{}`:\n{}",
        ptx.entry,
        ptx.text
    );
    // The counters are shared with another stream: the wait's poll must be a load the
    // hardware repeats (an atomic one), not a plain load the compiler may hoist out of the
    // loop, and the signal's store must reach the device's memory.
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
}
