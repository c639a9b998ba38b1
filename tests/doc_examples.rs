//! Every ```rhai example in the host's doc comments runs (```rhai no_run ones compile), so the
//! API reference of `sslhost docs` shows no example that fails. Examples use the names a
//! reader expects from the page they are on (`x`, `net`, `b`, `opt`): each page has a prelude
//! that defines them on tiny data, and the example runs after it in check mode (datasets cut,
//! two steps of every loop, no run directory).

use std::path::Path;

use sslhost::engine::{self, ScriptEngine};
use sslhost::reference;
use sslhost::session::Session;

/// Names shared by the pages about training: a tiny dataset, a loader, a batch, networks, an
/// optimiser and a loss.
const TRAINING: &str = r#"
let cfg = #{ epochs: 1, batch_size: 8, max_steps: 2 };
let ds = dataset("synthetic", #{ classes: 4, samples: 256, size: 28, channels: 1 });
let train_ds = ds;
let test_ds = dataset("synthetic", #{ classes: 4, samples: 32, size: 28, channels: 1, split: "test" });
let test = test_ds;
let loader = loader(ds, #{ batch_size: 8 });
let train = loader;
let total = cfg.epochs * loader.len;
let b = ();
for batch in loader.epoch(0) { b = batch; break; }
let backbone = resnet(18, #{ cifar_stem: true, widths: [8, 8, 16, 16], blocks: [1, 1, 1, 1], in_channels: 1 });
let projector = mlp([16, 32, 8]);
let predictor = mlp([8, 16, 8]);
let online = sequential([backbone, projector]);
let target = momentum_copy(online);
let classifier = linear(16, ds.classes);
let net = backbone;
let opt = sgd([online, predictor], #{ lr: 0.05, momentum: 0.9 });
let eval_view = transform([normalize([0.5], [0.25])]);
let view1 = transform([random_resized_crop(28), hflip(0.5)]);
let images = b.images;
let z1 = online.forward(images);
let z2 = target.forward(images).detach();
let p1 = predictor.forward(z1);
let p2 = predictor.forward(online.forward(images));
let loss = byol_loss(p1, z2);
let logits = classifier.forward(backbone.forward(images));
let rate = 0.05;
let lr = rate;
let step = 0;
let q1 = randn([8, 128]).normalize(1);
let k1 = randn([8, 128]).normalize(1);
let k2 = randn([8, 128]).normalize(1);
let q = queue(64, 128);
fn objective(images) { global_objective(images) }
fn loss_of(images) { global_objective(images) }
fn global_objective(images) { (images * images).mean().require_grad() }
"#;

/// The schedule the pages about training pass through `live(..)` (the live page's examples
/// define their own).
const SCHEDULE: &str = r#"
fn lr(step, total) { warmup_cosine(step, total, total / 10, 0.05, 0.0) }
"#;

/// Tensors of the shapes the tensor page's examples talk about.
const TENSORS: &str = r#"
let x = rand([8, 4]) + 0.5;
let a = rand([8, 4]) + 0.5;
let b = rand([8, 4]) + 0.5;
let v = rand([4]) + 0.5;
let w = randn([4, 2]).require_grad();
let z = randn([8, 4]);
let z1 = randn([8, 4]);
let z2 = randn([8, 4]);
let n = 4;
let p = x.softmax(1);
let e = x.exp();
let images = rand([2, 3, 8, 8]);
let logits = randn([8, 10]);
let labels = arange(8);
let sim = z1.matmul(z2.t());
let cos = (z1.normalize(1) * z2.normalize(1)).sum(1).mean();
let per_sample = logits.cross_entropy_per_row(labels);
let loss = x.matmul(w).sum();
let step = 0;
let target = linear(4, 4);
"#;

/// Names the live page's examples call through `live(..)`.
const LIVE: &str = r#"
fn info_nce_loss(q, k, queue, temperature, weight) { info_nce(q, k, queue, temperature) * weight }
fn objective(p1, p2, z1, z2) { byol_loss(p1, z2) + byol_loss(p2, z1) }
let queue = q.tensor();
let q = q1;
let k = k2;
"#;

fn prelude(page: &str) -> String {
    match page {
        "tensor" => TENSORS.to_string(),
        "live" => format!("{TRAINING}{LIVE}"),
        _ => format!("{TRAINING}{SCHEDULE}"),
    }
}

#[test]
fn every_doc_example_runs() {
    // Examples write files (`views.png`, `features.safetensors`): in a folder of their own.
    let dir = std::env::temp_dir().join(format!("sslhost-doc-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_current_dir(&dir).unwrap();

    let mut failures = Vec::new();
    let (mut ran, mut compiled) = (0, 0);
    for page in reference::pages().expect("the reference pages") {
        for f in &page.functions {
            for (i, ex) in f.examples.iter().enumerate() {
                let name = format!("{}::{} (example {})", page.name, f.name, i + 1);
                let text = format!("{}\n{}", prelude(&page.name), ex.code);
                let result = if ex.run {
                    ran += 1;
                    let session = Session::new(sslhost::device::cpu(), 0);
                    engine::check_source(&name, &text, Path::new("."), session)
                } else {
                    compiled += 1;
                    ScriptEngine::new(Path::new("."))
                        .and_then(|mut e| e.compile(&name, &text))
                        .map(|_| ())
                };
                if let Err(e) = result {
                    failures.push(format!("{name}:\n{}\n{e}", ex.code));
                }
            }
        }
    }
    std::env::set_current_dir(std::env::temp_dir()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failures.len(),
        ran + compiled,
        failures.join("\n\n")
    );
    // Every host page has examples; a parser that finds none would pass vacuously.
    assert!(ran > 150, "only {ran} examples ran");
    assert!(compiled >= 2, "the no_run examples were not found");
}

#[test]
fn every_host_function_has_text_and_an_example() {
    let mut missing = Vec::new();
    for page in reference::pages().unwrap() {
        if page.name.starts_with("stdlib-") {
            continue;
        }
        for f in &page.functions {
            if f.text.is_empty() || f.examples.is_empty() {
                missing.push(format!("{}::{}", page.name, f.signature()));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:#?}");
}

/// `sslhost docs --out DIR`: a page per module with signatures in script names, the stdlib,
/// and the language server's definitions; a file as DIR is refused.
#[test]
fn docs_writes_the_reference_and_the_definitions() {
    let dir = std::env::temp_dir().join(format!("sslhost-docs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["docs", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let index = read("index.md");
    for page in [
        "tensor",
        "models",
        "data",
        "stdlib-losses",
        "stdlib-transforms",
    ] {
        assert!(index.contains(&format!("]({page}.md)")), "{index}");
    }
    let tensor = read("tensor.md");
    assert!(
        tensor.contains("`slice(a: Tensor, dim: int, start: int, end: int) -> Tensor`"),
        "{tensor}"
    );
    assert!(tensor.contains("`a.shape -> Array`"), "{tensor}");
    assert!(tensor.contains("let sim = z1.matmul(z2.t());"), "{tensor}");
    assert!(read("data.md").contains("`b.labels -> Tensor`"));
    assert!(read("stdlib-losses.md").contains("`byol_loss(p, z)`"));
    let defs = read("definitions/sslhost.d.rhai");
    assert!(defs.starts_with("module static;"));
    for want in [
        "fn tensor(values: Array) -> Tensor;",
        "fn get shape(a: Tensor) -> Array;",
        "op +(a: Tensor, b: Tensor) -> Tensor;",
        "fn byol_loss(p: ?, z: ?) -> ?;",
    ] {
        assert!(defs.contains(want), "no `{want}` in the definitions");
    }
    assert!(read("definitions/__builtin__.d.rhai").contains("fn print("));

    let file = dir.join("index.md");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sslhost"))
        .args(["docs", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a file"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
