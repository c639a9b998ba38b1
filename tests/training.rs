//! Training works end to end from a script: an MLP learns a non-linear two-class problem.

use std::path::Path;
use std::time::Instant;

use sslhost::engine;
use sslhost::session::Session;

#[test]
fn an_mlp_learns_xor_blobs_from_a_script() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let start = Instant::now();
    let accuracy = engine::run_file(
        &dir.join("two_class.rhai"),
        Session::new(sslhost::device::cpu(), 11),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .as_float()
    .expect("the script returns its accuracy");
    eprintln!("accuracy {accuracy:.3} in {:.1?}", start.elapsed());
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
}
