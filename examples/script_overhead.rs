//! The cost of the scripting layer: N tiny tensor ops (`a = a + b` on 4 floats) from Rhai,
//! from Rust through the same `DynTensor` the scripts use, and from plain Burn, in one run.
//!
//!     cargo run --release --example script_overhead -- 100000

use std::path::Path;
use std::time::Instant;

use burn::tensor::Tensor;
use sslhost::engine::ScriptEngine;
use sslhost::session::{self, Session};
use sslhost::tensor::{BinaryOp, DynTensor};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let device = sslhost::device::cpu();
    session::install(Session::new(device.clone(), 0));

    // Plain Burn.
    let b = Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0], &device);
    let mut a = b.clone();
    let start = Instant::now();
    for _ in 0..n {
        a = a + b.clone();
    }
    let _ = a.into_data();
    let burn_ns = start.elapsed().as_nanos() as f64 / n as f64;

    // The host's dynamic-rank tensor (what every script op calls).
    let b = DynTensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4], &device).unwrap();
    let mut a = b.clone();
    let start = Instant::now();
    for _ in 0..n {
        a = a.binary(&b, BinaryOp::Add).unwrap();
    }
    let _ = a.to_f64_vec();
    let host_ns = start.elapsed().as_nanos() as f64 / n as f64;

    // Rhai: the loop, the variable lookups, the operator dispatch and the call.
    let mut engine = ScriptEngine::new(Path::new(".")).unwrap();
    let src = format!(
        "let b = tensor([1.0, 2.0, 3.0, 4.0]);\nlet a = b;\nfor i in 0..{n} {{ a = a + b; }}\na.sum().item()"
    );
    let ast = engine.compile("overhead.rhai", &src).unwrap();
    let start = Instant::now();
    let total = engine.run("overhead.rhai", &ast).unwrap();
    let rhai_ns = start.elapsed().as_nanos() as f64 / n as f64;

    // An empty Rhai loop of the same length: the interpreter's own share.
    let empty = format!("let x = 0;\nfor i in 0..{n} {{ x = x + 1; }}\nx");
    let ast = engine.compile("empty.rhai", &empty).unwrap();
    let start = Instant::now();
    let _ = engine.run("empty.rhai", &ast).unwrap();
    let loop_ns = start.elapsed().as_nanos() as f64 / n as f64;

    println!("{n} ops of a = a + b on 4 floats (result {total}):");
    println!("  burn Tensor<1>          {burn_ns:8.0} ns/op");
    println!("  host DynTensor          {host_ns:8.0} ns/op");
    println!("  Rhai script             {rhai_ns:8.0} ns/op");
    println!("  Rhai empty int loop     {loop_ns:8.0} ns/iteration");
    println!(
        "  scripting layer cost    {:8.0} ns/op over the host tensor ({:.2}x)",
        rhai_ns - host_ns,
        rhai_ns / host_ns
    );
}
