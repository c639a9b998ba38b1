//! `sslhost bench` times each method's step on tiny settings and ends with a JSON line whose
//! fields are present and sane (no timing assertions: the machine may be busy).

use std::path::Path;
use std::process::Command;

/// `sslhost bench --device cpu` on tiny settings (batch 4, 16x16, widths 4-8-16-32, one
/// warm-up step, two timed) in `precision`; add arguments and run.
fn tiny_bench(precision: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sslhost"));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR"))).args([
        "bench",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--batch",
        "4",
        "--image",
        "16",
        "--widths",
        "4,8,16,32",
        "--warmup",
        "1",
        "--steps",
        "2",
    ]);
    c
}

/// `sslhost bench` on tiny settings; `half` sets `SSLHOST_HALF_ACTIVATIONS=1`.
fn bench(method: &str, precision: &str, half: bool) -> serde_json::Value {
    let out = tiny_bench(precision)
        .env("SSLHOST_HALF_ACTIVATIONS", if half { "1" } else { "0" })
        .args(["--method", method])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{method}: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{method}: a summary and a JSON line, got {stdout}"
    );
    let products = if precision == "auto" {
        "f32"
    } else {
        precision
    };
    let activations = if half { products } else { "f32" };
    assert!(
        lines[0].starts_with(&format!(
            "{method} resnet18[4,8,16,32] cpu {products} (activations {activations}, batch norm \
             cpu) batch 4 16x16: median "
        )),
        "{}",
        lines[0]
    );
    serde_json::from_str(lines[1]).unwrap_or_else(|e| panic!("{method}: {e}: {}", lines[1]))
}

fn positive(r: &serde_json::Value, key: &str) -> f64 {
    let v = r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {r}"));
    assert!(v.is_finite() && v > 0.0, "`{key}` = {v} in {r}");
    v
}

fn check(method: &str, precision: &str) {
    check_with(method, precision, false);
}

fn check_with(method: &str, precision: &str, half: bool) {
    let r = bench(method, precision, half);
    assert_eq!(r["method"], method);
    assert_eq!(r["device"], "cpu");
    // `auto` is f32 on the CPU.
    let expected = if precision == "auto" {
        "f32"
    } else {
        precision
    };
    assert_eq!(r["precision"], expected);
    // Half activations only where the products are half; batch norm computes in f32 either
    // way, so on the CPU it takes the host's kernels.
    assert_eq!(r["activations"], if half { expected } else { "f32" });
    assert_eq!(r["batch_norm"], "cpu");
    assert_eq!(r["model"], "resnet18[4,8,16,32]");
    assert_eq!(r["batch"], 4);
    assert_eq!(r["image"], 16);
    assert_eq!(r["steps"], 2);
    assert_eq!(r["widths"], serde_json::json!([4, 8, 16, 32]));
    let median = positive(&r, "median_ms");
    let mean = positive(&r, "mean_ms");
    let (min, max) = (positive(&r, "min_ms"), positive(&r, "max_ms"));
    assert!(
        min <= median && median <= max && min <= mean && mean <= max,
        "{r}"
    );
    let img_per_s = positive(&r, "img_per_s");
    assert!(
        (img_per_s - 4000.0 / median).abs() < 1e-6 * img_per_s,
        "{r}"
    );
    assert_eq!(r["step_ms"].as_array().unwrap().len(), 2);
    // Every step's loss, the warm-up's too, each a finite number.
    let losses = r["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 3, "{r}");
    assert!(
        losses
            .iter()
            .all(|l| l.as_f64().is_some_and(f64::is_finite)),
        "{r}"
    );
    // The first (warm-up) step, timed on its own: what compiling and autotuning cost on a GPU.
    positive(&r, "first_step_ms");
    // Peak RSS of the process: more than nothing, less than the whole machine.
    let mem = positive(&r, "peak_mem_mb");
    assert!(mem < 1.0e6, "{r}");
    // The device allocator's figures are a GPU's: the CPU has no pool to report.
    assert!(r["device_memory"].is_null(), "{r}");
    assert!(r["device_memory_before_backward"].is_null(), "{r}");
    assert!(positive(&r, "params") >= 1000.0);
    // The Rhai layer's share is a fraction; host functions take some of the time too.
    let share = r["rhai_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{r}");
    let rhai_ms = positive(&r, "rhai_ms_per_step");
    assert!(rhai_ms < mean, "{r}");
    // Two reads a step on the CPU: opt.step's check of the loss before the update (free
    // there) and the step's `loss.item()` after it, as PyTorch's. On a GPU opt.step reads
    // nothing (tests/gpu_path.rs), so the step's one sync is its end.
    assert_eq!(r["device_reads_per_step"].as_f64(), Some(2.0), "{r}");
    let wait = r["device_wait_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&wait), "{r}");
    let release = r["release_ms_per_step"].as_f64().unwrap();
    assert!((0.0..mean).contains(&release), "{r}");
}

#[test]
fn bench_byol() {
    check("byol", "auto");
}

#[test]
fn bench_moco() {
    check("moco", "auto");
}

#[test]
fn bench_simclr() {
    check("simclr", "auto");
}

#[test]
fn bench_bf16_products() {
    check("byol", "bf16");
    check("moco", "bf16");
}

#[test]
fn bench_bf16_activations() {
    check_with("simclr", "bf16", true);
}

#[test]
fn bench_rejects_bad_widths() {
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args([
            "bench", "--device", "cpu", "--widths", "8,16", "--steps", "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("four stage widths"), "{stderr}");
}

#[test]
fn bench_times_each_variant_in_one_process() {
    // burn's own ops on the CPU, so that batch norm takes the variant's (rows or burn's).
    let out = tiny_bench("bf16")
        .env("SSLHOST_CPU_KERNELS", "burn")
        .args(["--variants", "burn:f32,rows:half,nhwc:f32"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "a summary and a JSON line per variant: {stdout}"
    );
    let runs: Vec<serde_json::Value> = [lines[1], lines[3], lines[5]]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (&runs[0]["batch_norm"], &runs[0]["activations"]),
        (&"burn".into(), &"f32".into())
    );
    assert_eq!(
        (&runs[1]["batch_norm"], &runs[1]["activations"]),
        (&"rows".into(), &"bf16".into())
    );
    assert_eq!(
        (&runs[2]["batch_norm"], &runs[2]["activations"]),
        (&"nhwc".into(), &"f32".into())
    );
    for r in &runs {
        positive(r, "median_ms");
    }
}

#[test]
fn bench_rejects_a_bad_variant() {
    let out = Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["bench", "--device", "cpu", "--variants", "rows:bf8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BATCH_NORM:ACTIVATIONS"), "{stderr}");
}

#[test]
fn bench_times_a_replayed_step_that_computes_what_the_step_computes() {
    // Every step after the first is answered from the recorded one; the losses are the same
    // to the bit, each variant's replay its own.
    let run = |capture: &str| {
        let out = tiny_bench("f32")
            .env("SSLHOST_CPU_KERNELS", "burn")
            .args(["--method", "moco", "--capture", capture])
            .args(["--variants", "burn:f32,rows:f32"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let (eager, replayed) = (run("off"), run("replay"));
    assert_eq!(replayed.len(), 2);
    for (e, r) in eager.iter().zip(&replayed) {
        assert_eq!(e["losses"], r["losses"], "{r}");
        assert_eq!(e["losses"].as_array().unwrap().len(), 3, "{e}");
        assert!(e.get("capture").is_none(), "{e}");
        assert_eq!(r["capture"], "replay", "{r}");
        let report = r["capture_report"].as_str().unwrap();
        assert!(
            report.contains("Replay: 1 step recorded, 2 steps replayed, 0 steps departed"),
            "{report}"
        );
    }
}
