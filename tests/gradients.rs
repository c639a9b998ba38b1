//! Gradients from `backward` match central finite differences for the tensor ops scripts use.
//!
//! Each case is a Rhai function `f(x)`; the test differentiates `sum(f(x) * w)` for a fixed
//! random `w`, so every output element contributes with its own weight. Float32 central
//! differences with h = 1e-2 agree with the true derivative to about 1e-3 for these smooth
//! functions; the tolerance is 1e-2 absolute plus 1e-2 relative.

use std::path::Path;

use rhai::Scope;
use sslhost::engine::ScriptEngine;
use sslhost::session::{self, Session};
use sslhost::tensor::{DynTensor, HostRng};

/// (name, body of `f(x)`, input shape, input range)
type Case = (&'static str, &'static str, &'static [usize], (f64, f64));

const CASES: &[Case] = &[
    (
        "add",
        "x + tensor([[0.5, -1.0, 2.0]])",
        &[2, 3],
        (-1.0, 1.0),
    ),
    ("sub_scalar_first", "1.5 - x", &[4], (-1.0, 1.0)),
    ("mul", "x * x", &[2, 3], (-1.0, 1.0)),
    (
        "div",
        "tensor([[1.0, 2.0], [3.0, 4.0]]) / x",
        &[2, 2],
        (0.5, 1.5),
    ),
    (
        "matmul",
        "x.matmul(tensor([[1.0, -2.0], [0.5, 1.0], [2.0, 0.0]]))",
        &[2, 3],
        (-1.0, 1.0),
    ),
    ("matmul_self_t", "x.matmul(x.t())", &[3, 2], (-1.0, 1.0)),
    (
        "transpose_reshape",
        "x.transpose(0, 1).reshape([6])",
        &[2, 3],
        (-1.0, 1.0),
    ),
    ("sum_dim", "x.sum(1)", &[3, 4], (-1.0, 1.0)),
    ("mean_keepdim", "x - x.mean(0, true)", &[3, 2], (-1.0, 1.0)),
    ("norm_dim", "x.norm(1)", &[3, 4], (0.2, 1.0)),
    ("normalize", "x.normalize(1)", &[2, 4], (-1.0, 1.0)),
    ("exp", "x.exp()", &[5], (-1.0, 1.0)),
    ("log", "x.log()", &[5], (0.5, 2.0)),
    ("sqrt", "x.sqrt()", &[5], (0.5, 2.0)),
    ("pow", "x.pow(3)", &[5], (-1.0, 1.0)),
    ("softmax", "x.softmax(1)", &[2, 4], (-1.0, 1.0)),
    ("log_softmax", "x.log_softmax(0)", &[3, 2], (-1.0, 1.0)),
    ("cat", "cat([x, x * 2.0], 0)", &[2, 2], (-1.0, 1.0)),
    ("stack", "stack([x, x.exp()], 0)", &[3], (-1.0, 1.0)),
    ("slice", "x.slice(1, 1, 3)", &[2, 4], (-1.0, 1.0)),
    ("diag", "x.diag()", &[3, 3], (-1.0, 1.0)),
    ("diag_vector", "x.diag()", &[3], (-1.0, 1.0)),
    ("relu", "x.relu()", &[6], (0.2, 1.0)),
    ("abs_neg", "(-x).abs()", &[4], (0.2, 1.0)),
    (
        "rank4",
        "(x * x).sum(3).mean(1)",
        &[2, 3, 2, 2],
        (-1.0, 1.0),
    ),
    (
        "cross_entropy_per_row",
        "x.cross_entropy_per_row(tensor([3.0, 0.0, 1.0]))",
        &[3, 5],
        (-2.0, 2.0),
    ),
    (
        "cross_entropy",
        "cross_entropy(x, tensor([2, 0]).int()) * ones([1])",
        &[2, 3],
        (-1.0, 1.0),
    ),
    (
        "byol_loss",
        "byol_loss(x, tensor([[1.0, 0.5, -0.5], [0.2, 0.1, 1.0]]))",
        &[2, 3],
        (-1.0, 1.0),
    ),
    (
        "nt_xent",
        "nt_xent(x.slice(0, 0, 2), x.slice(0, 2, 4), 0.5)",
        &[4, 3],
        (-1.0, 1.0),
    ),
];

fn eval(engine: &ScriptEngine, ast: &rhai::AST, x: &DynTensor, w: &DynTensor) -> f64 {
    let out: DynTensor = engine
        .engine()
        .call_fn(&mut Scope::new(), ast, "weighted", (x.clone(), w.clone()))
        .unwrap_or_else(|e| panic!("{e}"));
    out.item().unwrap()
}

#[test]
fn backward_matches_finite_differences() {
    let device = sslhost::device::cpu();
    session::install(Session::new(device.clone(), 7));
    let mut rng = HostRng::new(42);
    let mut failures = Vec::new();
    for (name, body, shape, (lo, hi)) in CASES {
        let mut engine = ScriptEngine::new(Path::new(".")).unwrap();
        let src = format!("fn f(x) {{ {body} }}\nfn weighted(x, w) {{ (f(x) * w).sum() }}\n");
        let ast = engine.compile(name, &src).unwrap();
        let n: usize = shape.iter().product();
        let values = rng.uniform_vec(n, *lo, *hi);
        let x = DynTensor::from_vec(values.clone(), shape, &device).unwrap();
        let out: DynTensor = engine
            .engine()
            .call_fn(&mut Scope::new(), &ast, "f", (x.clone(),))
            .unwrap();
        let w = rng.randn(&out.shape(), &device).unwrap();

        let leaf = x.require_grad().unwrap();
        let loss: DynTensor = engine
            .engine()
            .call_fn(
                &mut Scope::new(),
                &ast,
                "weighted",
                (leaf.clone(), w.clone()),
            )
            .unwrap();
        let grads = loss.float4("test").unwrap().backward();
        let analytic = leaf
            .float4("test")
            .unwrap()
            .grad(&grads)
            .map(|g| DynTensor::from_float4(g, shape.len()).to_f64_vec().unwrap())
            .unwrap_or_else(|| panic!("{name}: no gradient"));

        let h = 1e-2f32;
        for i in 0..n {
            let mut plus = values.clone();
            plus[i] += h;
            let mut minus = values.clone();
            minus[i] -= h;
            let fp = eval(
                &engine,
                &ast,
                &DynTensor::from_vec(plus, shape, &device).unwrap(),
                &w,
            );
            let fm = eval(
                &engine,
                &ast,
                &DynTensor::from_vec(minus, shape, &device).unwrap(),
                &w,
            );
            let numeric = (fp - fm) / (2.0 * h as f64);
            let tol = 1e-2 + 1e-2 * numeric.abs();
            if (analytic[i] - numeric).abs() > tol {
                failures.push(format!(
                    "{name}[{i}]: backward {:.5}, finite difference {numeric:.5}",
                    analytic[i]
                ));
            }
        }
    }
    assert!(CASES.len() >= 12);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
