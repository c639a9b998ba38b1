//! `Tensor` in scripts: creation, arithmetic, reductions, autodiff.

use rhai::plugin::*;
use rhai::{Array, Dynamic};

use crate::api::args;
use crate::error::{Error, Result};
use crate::tensor::{BinaryOp, DynTensor, tape};

/// Tensors of rank 1–4 on the run's device; autodiff flows through every op.
#[export_module]
pub mod tensor_api {
    use std::cell::RefCell;
    use std::rc::Rc;

    use burn::tensor::Gradients;
    use rhai::{Array, Dynamic};

    use crate::api::args::{self, RhaiResult, run, taped};
    use crate::error::Error;
    use crate::session;
    use crate::tensor::tape;
    use crate::tensor::{BinaryOp, DynTensor, StateTensor};

    use super::{flatten, nest, scalar_op, tensor_list};

    /// A tensor of rank 1–4 (float or int) on the run's device.
    pub type Tensor = DynTensor;

    /// Gradients from `loss.backward()`; read one with `g.get(x)`.
    pub type Grads = Rc<Gradients>;

    // ---- creation ----------------------------------------------------------------------

    /// A float tensor from a (nested) array of numbers.
    ///
    /// ```rhai
    /// let x = tensor([[1.0, 2.0], [3.0, 4.0]]);   // shape [2, 2]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn tensor(values: Array) -> RhaiResult<Tensor> {
        run(|| {
            let mut shape = Vec::new();
            let mut flat = Vec::new();
            flatten(&values, 0, &mut shape, &mut flat)?;
            DynTensor::from_vec(flat, &shape, &session::device())
        })
    }

    /// Zeros of the given shape.
    ///
    /// ```rhai
    /// let z = zeros([4, 8]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn zeros(shape: Array) -> RhaiResult<Tensor> {
        run(|| {
            let dims = args::shape(&shape, "zeros")?;
            let key: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            tape::call("zeros", &[], &key, move |_| {
                DynTensor::zeros(&dims, &session::device())
            })
        })
    }

    /// Ones of the given shape.
    ///
    /// ```rhai
    /// let o = ones([3]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn ones(shape: Array) -> RhaiResult<Tensor> {
        run(|| {
            let dims = args::shape(&shape, "ones")?;
            let key: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            tape::call("ones", &[], &key, move |_| {
                DynTensor::ones(&dims, &session::device())
            })
        })
    }

    /// Standard normal values from the run's seeded generator.
    ///
    /// ```rhai
    /// let noise = randn([16, 128]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn randn(shape: Array) -> RhaiResult<Tensor> {
        run(|| {
            let s = args::shape(&shape, "randn")?;
            session::with(|sess| sess.rng.randn(&s, &sess.device))
        })
    }

    /// Uniform values in [0, 1) from the run's seeded generator.
    ///
    /// ```rhai
    /// let u = rand([4]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn rand(shape: Array) -> RhaiResult<Tensor> {
        run(|| {
            let s = args::shape(&shape, "rand")?;
            session::with(|sess| sess.rng.rand(&s, &sess.device))
        })
    }

    /// The `n x n` identity matrix.
    ///
    /// ```rhai
    /// let i = eye(4);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn eye(n: i64) -> RhaiResult<Tensor> {
        run(|| {
            let n = args::count(n, "eye size")?;
            tape::call("eye", &[], &[n as u64], move |_| {
                DynTensor::eye(n, &session::device())
            })
        })
    }

    /// Integers `0..n` as an int tensor.
    ///
    /// ```rhai
    /// let labels = arange(8);   // [0, 1, ..., 7]
    /// ```
    #[rhai_fn(name = "arange", return_raw)]
    pub fn arange_n(n: i64) -> RhaiResult<Tensor> {
        taped("arange", &[], &[0, n as u64], move |_| {
            DynTensor::arange(0, n, &session::device())
        })
    }

    /// Integers `start..end` as an int tensor.
    ///
    /// ```rhai
    /// let idx = arange(2, 6);   // [2, 3, 4, 5]
    /// ```
    #[rhai_fn(name = "arange", return_raw)]
    pub fn arange_range(start: i64, end: i64) -> RhaiResult<Tensor> {
        taped("arange", &[], &[start as u64, end as u64], move |_| {
            DynTensor::arange(start, end, &session::device())
        })
    }

    // ---- arithmetic ----------------------------------------------------------------------

    /// Elementwise sum with broadcasting.
    ///
    /// ```rhai
    /// let y = x + ones([x.shape[1]]);
    /// ```
    #[rhai_fn(name = "+", return_raw)]
    pub fn add(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("add", &[&a, &b], &[], |x| x[0].binary(&x[1], BinaryOp::Add))
    }

    /// Elementwise difference with broadcasting.
    ///
    /// ```rhai
    /// let d = a - b;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn sub(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("sub", &[&a, &b], &[], |x| x[0].binary(&x[1], BinaryOp::Sub))
    }

    /// Elementwise product with broadcasting.
    ///
    /// ```rhai
    /// let p = a * b;
    /// ```
    #[rhai_fn(name = "*", return_raw)]
    pub fn mul(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("mul", &[&a, &b], &[], |x| x[0].binary(&x[1], BinaryOp::Mul))
    }

    /// Elementwise quotient with broadcasting.
    ///
    /// ```rhai
    /// let q = a / b;
    /// ```
    #[rhai_fn(name = "/", return_raw)]
    pub fn div(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("div", &[&a, &b], &[], |x| x[0].binary(&x[1], BinaryOp::Div))
    }

    /// Negation.
    ///
    /// ```rhai
    /// let n = -x;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn neg(a: Tensor) -> RhaiResult<Tensor> {
        taped("neg", &[&a], &[], |x| x[0].neg())
    }

    /// Tensor plus a number.
    ///
    /// ```rhai
    /// let y = x + 1.0;
    /// ```
    #[rhai_fn(name = "+", return_raw)]
    pub fn add_f(a: Tensor, s: f64) -> RhaiResult<Tensor> {
        scalar_op("add_f", &a, s, BinaryOp::Add, false)
    }

    /// Tensor plus an integer.
    ///
    /// ```rhai
    /// let y = x + 1;
    /// ```
    #[rhai_fn(name = "+", return_raw)]
    pub fn add_i(a: Tensor, s: i64) -> RhaiResult<Tensor> {
        scalar_op("add_i", &a, s as f64, BinaryOp::Add, false)
    }

    /// A number plus a tensor.
    ///
    /// ```rhai
    /// let y = 1.0 + x;
    /// ```
    #[rhai_fn(name = "+", return_raw)]
    pub fn f_add(s: f64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("f_add", &a, s, BinaryOp::Add, true)
    }

    /// An integer plus a tensor.
    ///
    /// ```rhai
    /// let y = 1 + x;
    /// ```
    #[rhai_fn(name = "+", return_raw)]
    pub fn i_add(s: i64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("i_add", &a, s as f64, BinaryOp::Add, true)
    }

    /// Tensor minus a number.
    ///
    /// ```rhai
    /// let y = x - 0.5;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn sub_f(a: Tensor, s: f64) -> RhaiResult<Tensor> {
        scalar_op("sub_f", &a, s, BinaryOp::Sub, false)
    }

    /// Tensor minus an integer.
    ///
    /// ```rhai
    /// let y = x - 1;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn sub_i(a: Tensor, s: i64) -> RhaiResult<Tensor> {
        scalar_op("sub_i", &a, s as f64, BinaryOp::Sub, false)
    }

    /// A number minus a tensor.
    ///
    /// ```rhai
    /// let loss = 2.0 - 2.0 * cos;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn f_sub(s: f64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("f_sub", &a, s, BinaryOp::Sub, true)
    }

    /// An integer minus a tensor.
    ///
    /// ```rhai
    /// let loss = 2 - 2 * cos;
    /// ```
    #[rhai_fn(name = "-", return_raw)]
    pub fn i_sub(s: i64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("i_sub", &a, s as f64, BinaryOp::Sub, true)
    }

    /// Tensor times a number.
    ///
    /// ```rhai
    /// let y = x * 0.5;
    /// ```
    #[rhai_fn(name = "*", return_raw)]
    pub fn mul_f(a: Tensor, s: f64) -> RhaiResult<Tensor> {
        scalar_op("mul_f", &a, s, BinaryOp::Mul, false)
    }

    /// Tensor times an integer.
    ///
    /// ```rhai
    /// let y = x * 2;
    /// ```
    #[rhai_fn(name = "*", return_raw)]
    pub fn mul_i(a: Tensor, s: i64) -> RhaiResult<Tensor> {
        scalar_op("mul_i", &a, s as f64, BinaryOp::Mul, false)
    }

    /// A number times a tensor.
    ///
    /// ```rhai
    /// let y = 0.5 * x;
    /// ```
    #[rhai_fn(name = "*", return_raw)]
    pub fn f_mul(s: f64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("f_mul", &a, s, BinaryOp::Mul, true)
    }

    /// An integer times a tensor.
    ///
    /// ```rhai
    /// let y = 2 * x;
    /// ```
    #[rhai_fn(name = "*", return_raw)]
    pub fn i_mul(s: i64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("i_mul", &a, s as f64, BinaryOp::Mul, true)
    }

    /// Tensor divided by a number.
    ///
    /// ```rhai
    /// let logits = sim / 0.1;
    /// ```
    #[rhai_fn(name = "/", return_raw)]
    pub fn div_f(a: Tensor, s: f64) -> RhaiResult<Tensor> {
        scalar_op("div_f", &a, s, BinaryOp::Div, false)
    }

    /// Tensor divided by an integer.
    ///
    /// ```rhai
    /// let half = x / 2;
    /// ```
    #[rhai_fn(name = "/", return_raw)]
    pub fn div_i(a: Tensor, s: i64) -> RhaiResult<Tensor> {
        scalar_op("div_i", &a, s as f64, BinaryOp::Div, false)
    }

    /// A number divided by a tensor.
    ///
    /// ```rhai
    /// let inv = 1.0 / x;
    /// ```
    #[rhai_fn(name = "/", return_raw)]
    pub fn f_div(s: f64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("f_div", &a, s, BinaryOp::Div, true)
    }

    /// An integer divided by a tensor.
    ///
    /// ```rhai
    /// let inv = 1 / x;
    /// ```
    #[rhai_fn(name = "/", return_raw)]
    pub fn i_div(s: i64, a: Tensor) -> RhaiResult<Tensor> {
        scalar_op("i_div", &a, s as f64, BinaryOp::Div, true)
    }

    /// Matrix product over the last two dims; batch dims broadcast.
    ///
    /// ```rhai
    /// let sim = z1.matmul(z2.t());   // [N, N]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn matmul(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("matmul", &[&a, &b], &[], |x| x[0].matmul(&x[1]))
    }

    /// Swaps the last two dims (a rank-1 tensor is returned as is).
    ///
    /// ```rhai
    /// let wt = w.t();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn t(a: Tensor) -> RhaiResult<Tensor> {
        taped("t", &[&a], &[], |x| x[0].t())
    }

    /// Swaps the last two dims.
    ///
    /// ```rhai
    /// let wt = w.transpose();
    /// ```
    #[rhai_fn(name = "transpose", return_raw)]
    pub fn transpose_last(a: Tensor) -> RhaiResult<Tensor> {
        taped("transpose_last", &[&a], &[], |x| x[0].t())
    }

    /// Swaps two dims.
    ///
    /// ```rhai
    /// let nhwc = images.transpose(1, 3);   // [N, C, H, W] -> [N, W, H, C]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn transpose(a: Tensor, d1: i64, d2: i64) -> RhaiResult<Tensor> {
        taped("transpose", &[&a], &[d1 as u64, d2 as u64], move |x| {
            x[0].swap_dims(d1, d2)
        })
    }

    /// The same elements in a new shape; one entry may be -1.
    ///
    /// ```rhai
    /// let flat = x.reshape([x.shape[0], -1]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn reshape(a: Tensor, shape: Array) -> RhaiResult<Tensor> {
        run(|| {
            let dims = args::ints(&shape, "reshape")?;
            let key: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            tape::call("reshape", &[&a], &key, move |x| x[0].reshape(&dims))
        })
    }

    // ---- reductions ----------------------------------------------------------------------

    /// Sum of all elements (shape `[1]`).
    ///
    /// ```rhai
    /// let total = x.sum();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sum(a: Tensor) -> RhaiResult<Tensor> {
        taped("sum", &[&a], &[], |x| x[0].sum())
    }

    /// Sum over `dim`, dropping it.
    ///
    /// ```rhai
    /// let per_row = x.sum(1);   // [N]
    /// ```
    #[rhai_fn(name = "sum", return_raw)]
    pub fn sum_dim(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("sum_dim", &[&a], &[dim as u64], move |x| {
            x[0].sum_dim(dim, false)
        })
    }

    /// Sum over `dim`, keeping it as size 1 when `keepdim`.
    ///
    /// ```rhai
    /// let p = e / e.sum(1, true);
    /// ```
    #[rhai_fn(name = "sum", return_raw)]
    pub fn sum_dim_keep(a: Tensor, dim: i64, keepdim: bool) -> RhaiResult<Tensor> {
        taped(
            "sum_dim_keep",
            &[&a],
            &[dim as u64, keepdim as u64],
            move |x| x[0].sum_dim(dim, keepdim),
        )
    }

    /// Mean of all elements (shape `[1]`).
    ///
    /// ```rhai
    /// let loss = per_sample.mean();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn mean(a: Tensor) -> RhaiResult<Tensor> {
        taped("mean", &[&a], &[], |x| x[0].mean())
    }

    /// Mean over `dim`, dropping it.
    ///
    /// ```rhai
    /// let centre = z.mean(0);   // [D]
    /// ```
    #[rhai_fn(name = "mean", return_raw)]
    pub fn mean_dim(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("mean_dim", &[&a], &[dim as u64], move |x| {
            x[0].mean_dim(dim, false)
        })
    }

    /// Mean over `dim`, keeping it as size 1 when `keepdim`.
    ///
    /// ```rhai
    /// let centred = z - z.mean(0, true);
    /// ```
    #[rhai_fn(name = "mean", return_raw)]
    pub fn mean_dim_keep(a: Tensor, dim: i64, keepdim: bool) -> RhaiResult<Tensor> {
        taped(
            "mean_dim_keep",
            &[&a],
            &[dim as u64, keepdim as u64],
            move |x| x[0].mean_dim(dim, keepdim),
        )
    }

    /// The largest element (shape `[1]`).
    ///
    /// ```rhai
    /// let worst = (a - b).abs().max().item();
    /// ```
    #[rhai_fn(name = "max", return_raw)]
    pub fn max_all(a: Tensor) -> RhaiResult<Tensor> {
        taped("max_all", &[&a], &[], |x| x[0].max_all())
    }

    /// Maximum over `dim`, dropping it.
    ///
    /// ```rhai
    /// let m = logits.max(1);
    /// ```
    #[rhai_fn(name = "max", return_raw)]
    pub fn max_dim(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("max_dim", &[&a], &[dim as u64], move |x| {
            x[0].max_dim(dim, false)
        })
    }

    /// Maximum over `dim`, keeping it when `keepdim`.
    ///
    /// ```rhai
    /// let stable = logits - logits.max(1, true);
    /// ```
    #[rhai_fn(name = "max", return_raw)]
    pub fn max_dim_keep(a: Tensor, dim: i64, keepdim: bool) -> RhaiResult<Tensor> {
        taped(
            "max_dim_keep",
            &[&a],
            &[dim as u64, keepdim as u64],
            move |x| x[0].max_dim(dim, keepdim),
        )
    }

    /// Euclidean norm of all elements (shape `[1]`).
    ///
    /// ```rhai
    /// let n = w.norm();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn norm(a: Tensor) -> RhaiResult<Tensor> {
        taped("norm", &[&a], &[], |x| x[0].norm())
    }

    /// Euclidean norm over `dim`, dropping it.
    ///
    /// ```rhai
    /// let lengths = z.norm(1);   // [N]
    /// ```
    #[rhai_fn(name = "norm", return_raw)]
    pub fn norm_dim(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("norm_dim", &[&a], &[dim as u64], move |x| {
            x[0].norm_dim(dim, false)
        })
    }

    /// Euclidean norm over `dim`, keeping it when `keepdim`.
    ///
    /// ```rhai
    /// let unit = z / z.norm(1, true);
    /// ```
    #[rhai_fn(name = "norm", return_raw)]
    pub fn norm_dim_keep(a: Tensor, dim: i64, keepdim: bool) -> RhaiResult<Tensor> {
        taped(
            "norm_dim_keep",
            &[&a],
            &[dim as u64, keepdim as u64],
            move |x| x[0].norm_dim(dim, keepdim),
        )
    }

    /// `x / max(‖x‖, 1e-12)` along `dim`.
    ///
    /// ```rhai
    /// let z = z.normalize(1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn normalize(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("normalize", &[&a], &[dim as u64], move |x| {
            x[0].normalize(dim)
        })
    }

    // ---- elementwise ----------------------------------------------------------------------

    /// `e^x`.
    ///
    /// ```rhai
    /// let e = x.exp();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn exp(a: Tensor) -> RhaiResult<Tensor> {
        taped("exp", &[&a], &[], |x| x[0].unary("exp", |t| t.exp()))
    }

    /// Natural logarithm.
    ///
    /// ```rhai
    /// let l = p.log();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn log(a: Tensor) -> RhaiResult<Tensor> {
        taped("log", &[&a], &[], |x| x[0].unary("log", |t| t.log()))
    }

    /// Square root.
    ///
    /// ```rhai
    /// let s = v.sqrt();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sqrt(a: Tensor) -> RhaiResult<Tensor> {
        taped("sqrt", &[&a], &[], |x| x[0].unary("sqrt", |t| t.sqrt()))
    }

    /// Absolute value.
    ///
    /// ```rhai
    /// let a = x.abs();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn abs(a: Tensor) -> RhaiResult<Tensor> {
        taped("abs", &[&a], &[], |x| x[0].unary("abs", |t| t.abs()))
    }

    /// `max(x, 0)`.
    ///
    /// ```rhai
    /// let h = x.relu();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn relu(a: Tensor) -> RhaiResult<Tensor> {
        taped("relu", &[&a], &[], |x| {
            x[0].unary("relu", burn::tensor::activation::relu)
        })
    }

    /// GELU, `x * Phi(x)` (the exact form, as PyTorch's default): the activation of DINO's
    /// head and of transformers.
    ///
    /// ```rhai
    /// let h = x.gelu();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn gelu(a: Tensor) -> RhaiResult<Tensor> {
        taped("gelu", &[&a], &[], |x| {
            x[0].unary("gelu", burn::tensor::activation::gelu)
        })
    }

    /// The entries at `indices` (a rank-1 int tensor; repeats allowed) along `dim`, in that
    /// order; gradients flow back to the entries taken. An index out of range is an error.
    ///
    /// ```rhai
    /// let support = randn([32, 4]);
    /// let nearest = support.select(0, z.matmul(support.t()).argmax(1));   // [N, 4]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn select(a: Tensor, dim: i64, indices: Tensor) -> RhaiResult<Tensor> {
        taped("select", &[&a, &indices], &[dim as u64], move |x| {
            x[0].select(dim, &x[1])
        })
    }

    /// `x ** p` elementwise.
    ///
    /// ```rhai
    /// let sq = x.pow(2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn pow(a: Tensor, p: Dynamic) -> RhaiResult<Tensor> {
        run(|| {
            let p = args::number(&p, "pow exponent")?;
            tape::call("pow", &[&a], &[p.to_bits()], move |x| x[0].pow(p))
        })
    }

    /// Softmax along `dim`.
    ///
    /// ```rhai
    /// let p = logits.softmax(1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn softmax(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("softmax", &[&a], &[dim as u64], move |x| x[0].softmax(dim))
    }

    /// Log-softmax along `dim`.
    ///
    /// ```rhai
    /// let lp = logits.log_softmax(1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn log_softmax(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("log_softmax", &[&a], &[dim as u64], move |x| {
            x[0].log_softmax(dim)
        })
    }

    /// Cross-entropy of each row of logits `[N, C]` against its label (`labels` `[N]`: an
    /// int tensor, or a float tensor of whole numbers in `0..C`), `[N]`. On the CPU one fused
    /// op (two passes forward, one backward); the stdlib's `cross_entropy` is its mean.
    ///
    /// ```rhai
    /// let per_sample = logits.cross_entropy_per_row(labels);   // [N]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn cross_entropy_per_row(logits: Tensor, labels: Tensor) -> RhaiResult<Tensor> {
        taped("cross_entropy_per_row", &[&logits, &labels], &[], |x| {
            x[0].cross_entropy_per_row(&x[1])
        })
    }

    // ---- structure ----------------------------------------------------------------------

    /// Concatenates tensors along `dim`.
    ///
    /// ```rhai
    /// let z = cat([z1, z2], 0);   // [2N, D]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn cat(tensors: Array, dim: i64) -> RhaiResult<Tensor> {
        run(|| {
            let list = tensor_list(&tensors, "cat")?;
            let inputs: Vec<&DynTensor> = list.iter().collect();
            tape::call("cat", &inputs, &[dim as u64], move |x| {
                DynTensor::cat(x, dim)
            })
        })
    }

    /// Stacks same-shaped tensors along a new `dim`.
    ///
    /// ```rhai
    /// let pair = stack([a, b], 0);   // [2, ..]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn stack(tensors: Array, dim: i64) -> RhaiResult<Tensor> {
        run(|| {
            let list = tensor_list(&tensors, "stack")?;
            let inputs: Vec<&DynTensor> = list.iter().collect();
            tape::call("stack", &inputs, &[dim as u64], move |x| {
                DynTensor::stack(x, dim)
            })
        })
    }

    /// Elements `start..end` along `dim` (negative indices count from the end).
    ///
    /// ```rhai
    /// let first_half = z.slice(0, 0, n);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn slice(a: Tensor, dim: i64, start: i64, end: i64) -> RhaiResult<Tensor> {
        taped(
            "slice",
            &[&a],
            &[dim as u64, start as u64, end as u64],
            move |x| x[0].slice(dim, start, end),
        )
    }

    /// Burn's and NumPy's form: one range per leading dimension, `start..end` or
    /// `start..=end` (negative indices count from the end); dimensions without a range are
    /// kept whole.
    ///
    /// ```rhai
    /// let corner = x.slice([0..6, 0..1]);
    /// ```
    #[rhai_fn(name = "slice", return_raw)]
    pub fn slice_ranges(a: Tensor, ranges: Array) -> RhaiResult<Tensor> {
        run(|| {
            let mut bounds = Vec::with_capacity(ranges.len());
            for (dim, r) in ranges.iter().enumerate() {
                bounds.push(
                    if let Some(r) = r.clone().try_cast::<std::ops::Range<i64>>() {
                        (r.start, r.end)
                    } else if let Some(r) = r.clone().try_cast::<std::ops::RangeInclusive<i64>>() {
                        (*r.start(), *r.end() + 1)
                    } else {
                        return Err(crate::error::Error::Invalid(format!(
                            "slice: entry {dim} must be a range such as 0..6, got {}",
                            r.type_name()
                        )));
                    },
                );
            }
            let key: Vec<u64> = bounds
                .iter()
                .flat_map(|&(start, end)| [start as u64, end as u64])
                .collect();
            tape::call("slice_ranges", &[&a], &key, move |x| {
                let mut out = x[0].clone();
                for (dim, &(start, end)) in bounds.iter().enumerate() {
                    out = out.slice(dim as i64, start, end)?;
                }
                Ok(out)
            })
        })
    }

    /// The diagonal of a matrix, or a diagonal matrix from a vector.
    ///
    /// ```rhai
    /// let pos = sim.diag();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn diag(a: Tensor) -> RhaiResult<Tensor> {
        taped("diag", &[&a], &[], |x| x[0].diag())
    }

    /// The shape as an array.
    ///
    /// ```rhai
    /// let n = x.shape()[0];
    /// ```
    pub fn shape(a: &mut Tensor) -> Array {
        crate::profiling::host_time(|| {
            a.shape()
                .into_iter()
                .map(|d| Dynamic::from(d as i64))
                .collect()
        })
    }

    /// The shape as an array (property form).
    ///
    /// ```rhai
    /// let n = x.shape[0];
    /// ```
    #[rhai_fn(get = "shape", name = "shape")]
    pub fn get_shape(a: &mut Tensor) -> Array {
        shape(a)
    }

    /// The number of elements.
    ///
    /// ```rhai
    /// let n = x.numel();
    /// ```
    pub fn numel(a: &mut Tensor) -> i64 {
        a.numel() as i64
    }

    /// The rank (1–4).
    ///
    /// ```rhai
    /// if x.rank() == 4 { print("images"); }
    /// ```
    pub fn rank(a: &mut Tensor) -> i64 {
        a.rank() as i64
    }

    // ---- dtype ----------------------------------------------------------------------

    /// A float copy.
    ///
    /// ```rhai
    /// let y = labels.float();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn float(a: Tensor) -> RhaiResult<Tensor> {
        taped("float", &[&a], &[], |x| Ok(x[0].to_float()))
    }

    /// An int copy (floats truncated toward zero).
    ///
    /// ```rhai
    /// let labels = tensor([0.0, 1.0]).int();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn int(a: Tensor) -> RhaiResult<Tensor> {
        taped("int", &[&a], &[], |x| Ok(x[0].to_int()))
    }

    /// Index of the largest value along `dim` (int tensor).
    ///
    /// ```rhai
    /// let predicted = logits.argmax(1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn argmax(a: Tensor, dim: i64) -> RhaiResult<Tensor> {
        taped("argmax", &[&a], &[dim as u64], move |x| x[0].argmax(dim))
    }

    /// 1.0 where equal, else 0.0 (broadcast).
    ///
    /// ```rhai
    /// let accuracy = eq(logits.argmax(1), labels).mean().item();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn eq(a: Tensor, b: Tensor) -> RhaiResult<Tensor> {
        taped("eq", &[&a, &b], &[], |x| x[0].eq(&x[1]))
    }

    /// One-hot rows from integer labels (int, or float with whole values).
    ///
    /// ```rhai
    /// let targets = labels.one_hot(10);   // [N, 10]
    /// ```
    #[rhai_fn(return_raw)]
    pub fn one_hot(a: Tensor, num_classes: i64) -> RhaiResult<Tensor> {
        run(|| {
            let n = args::count(num_classes, "one_hot classes")?;
            if n == 0 {
                return Err(Error::Invalid("one_hot needs at least one class".into()));
            }
            tape::call("one_hot", &[&a], &[n as u64], move |x| x[0].one_hot(n))
        })
    }

    // ---- values ----------------------------------------------------------------------

    /// The value of a one-element tensor (reads the device: a sync on GPUs).
    ///
    /// ```rhai
    /// log(step, #{ loss: loss.item() });
    /// ```
    #[rhai_fn(return_raw)]
    pub fn item(a: Tensor) -> RhaiResult<f64> {
        run(|| tape::resolve(&a)?.item())
    }

    /// The values as a nested array (small tensors only: at most 65,536 elements).
    ///
    /// ```rhai
    /// print(x.to_array());
    /// ```
    #[rhai_fn(return_raw)]
    pub fn to_array(a: Tensor) -> RhaiResult<Array> {
        run(|| {
            let a = tape::resolve(&a)?;
            const LIMIT: usize = 65_536;
            if a.numel() > LIMIT {
                return Err(Error::Invalid(format!(
                    "to_array is for small tensors (at most {LIMIT} elements), got shape {:?}",
                    a.shape()
                )));
            }
            let values = a.to_f64_vec()?;
            let int = a.is_int();
            Ok(nest(&values, &a.shape(), int))
        })
    }

    /// `Tensor[2, 3] float`.
    ///
    /// ```rhai
    /// print(x);
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn to_string(a: &mut Tensor) -> String {
        format!("Tensor{:?} {}", a.shape(), a.dtype_name())
    }

    // ---- autodiff ----------------------------------------------------------------------

    /// The same values, cut from the autodiff graph.
    ///
    /// ```rhai
    /// let z = target.forward(x).detach();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn detach(a: Tensor) -> RhaiResult<Tensor> {
        taped("detach", &[&a], &[], |x| Ok(x[0].detach()))
    }

    /// Marks a float tensor as a leaf that collects gradients.
    ///
    /// ```rhai
    /// let w = randn([4, 2]).require_grad();
    /// ```
    #[rhai_fn(return_raw)]
    pub fn require_grad(a: Tensor) -> RhaiResult<Tensor> {
        taped("require_grad", &[&a], &[], |x| x[0].require_grad())
    }

    /// Gradients of a one-element tensor with respect to every tracked leaf.
    ///
    /// ```rhai
    /// let g = loss.backward();
    /// let dw = g.get(w);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn backward(a: Tensor) -> RhaiResult<Grads> {
        run(|| {
            let a = tape::resolve(&a)?;
            if a.numel() != 1 {
                return Err(Error::Shape(format!(
                    "backward needs a one-element tensor, got shape {:?}",
                    a.shape()
                )));
            }
            let t = a.float4("backward")?;
            if !t.is_tracked() {
                return Err(Error::Invalid(
                    "backward: this value does not depend on any tensor marked with require_grad()"
                        .into(),
                ));
            }
            Ok(Rc::new(t.backward()))
        })
    }

    /// The gradient of a leaf marked with `require_grad()`.
    ///
    /// ```rhai
    /// let g = loss.backward();
    /// let dw = g.get(w);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn get(g: &mut Grads, x: Tensor) -> RhaiResult<Tensor> {
        run(|| {
            let x = tape::resolve(&x)?;
            let t = x.float4("get")?;
            match t.grad(g) {
                Some(grad) => Ok(DynTensor::from_float4(grad.autodiff(), x.rank())),
                None => Err(Error::Invalid(
                    "this tensor has no gradient: mark the leaf with require_grad() before using it"
                        .into(),
                )),
            }
        })
    }

    // ---- state tensors -------------------------------------------------------------------

    /// A tensor a method carries from step to step outside any network (UniGrad's moving
    /// correlation, DINO's centre). Put it in the checkpoint map: `checkpoint` saves it and
    /// `resume` restores it (a shape that differs from the checkpoint's is an error naming
    /// both). Holds float values without gradients; copies of the handle share the value.
    pub type State = Rc<RefCell<StateTensor>>;

    /// A state tensor starting at `init` (detached).
    ///
    /// ```rhai
    /// let centre = state_tensor(zeros([1, 128]));
    /// let state = #{ centre: centre };
    /// ```
    #[rhai_fn(return_raw)]
    pub fn state_tensor(init: Tensor) -> RhaiResult<State> {
        run(|| {
            let init = tape::resolve(&init)?;
            Ok(Rc::new(RefCell::new(StateTensor::new(&init)?)))
        })
    }

    /// The current value (no gradient flows into the state).
    ///
    /// ```rhai
    /// let centre = state_tensor(zeros([1, 4]));
    /// let centred = z - centre.value;
    /// ```
    #[rhai_fn(get = "value", pure, return_raw)]
    pub fn state_value(s: &mut State) -> RhaiResult<Tensor> {
        // Taped: under a replay it reads the state when the step's work runs, after the
        // step's `set`s before it.
        let id = Rc::as_ptr(s) as u64;
        let s = s.clone();
        taped("state.value", &[], &[id], move |_| Ok(s.borrow().value()))
    }

    /// The shape, fixed when the state was made.
    ///
    /// ```rhai
    /// let f = state_tensor(eye(4));
    /// print(f.shape);   // [4, 4]
    /// ```
    #[rhai_fn(get = "shape", pure)]
    pub fn state_shape(s: &mut State) -> Array {
        s.borrow()
            .shape()
            .into_iter()
            .map(|d| Dynamic::from(d as i64))
            .collect()
    }

    /// Replaces the value (detached); the new value must have the state's shape.
    ///
    /// ```rhai
    /// let centre = state_tensor(zeros([1, 4]));
    /// centre.set(0.9 * centre.value + 0.1 * z.mean(0, true));
    /// ```
    #[rhai_fn(name = "set", return_raw)]
    pub fn state_set(s: &mut State, value: Tensor) -> RhaiResult<()> {
        session::note_update();
        run(|| tape::effect_on("state.set", &value, s, StateTensor::set))
    }

    /// `State[128, 128]`.
    ///
    /// ```rhai
    /// print(state_tensor(eye(3)));
    /// ```
    #[rhai_fn(global, name = "to_string", name = "to_debug")]
    pub fn state_to_string(s: &mut State) -> String {
        format!("State{:?}", s.borrow().shape())
    }

    // ---- helpers (not exported) ----------------------------------------------------------
}

/// `a op s` (or `s op a` when `scalar_first`) through the step's tape, which may take the
/// number as an input (`tape::call_number`: a schedule's number then changes without the
/// step departing from its recording).
fn scalar_op(
    name: &'static str,
    a: &DynTensor,
    s: f64,
    op: BinaryOp,
    scalar_first: bool,
) -> args::RhaiResult<DynTensor> {
    args::run(|| {
        tape::call_number(
            name,
            &[a],
            &[],
            s,
            move |x, s| x[0].binary_scalar(s, op, scalar_first),
            move |x| x[0].binary_number(&x[1], op, scalar_first),
        )
    })
}

pub fn tensor_list(arr: &Array, op: &str) -> Result<Vec<DynTensor>> {
    arr.iter()
        .map(|v| {
            v.clone().try_cast::<DynTensor>().ok_or_else(|| {
                Error::Invalid(format!(
                    "{op} takes an array of tensors, found a {}",
                    v.type_name()
                ))
            })
        })
        .collect()
}

pub fn flatten(v: &Array, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) -> Result<()> {
    if depth == shape.len() {
        shape.push(v.len());
    } else if shape[depth] != v.len() {
        return Err(Error::Shape(format!(
            "ragged array: a row of length {} where {} was expected",
            v.len(),
            shape[depth]
        )));
    }
    for x in v {
        if let Some(inner) = x.read_lock::<Array>() {
            flatten(&inner, depth + 1, shape, out)?;
        } else if depth + 1 != shape.len() {
            return Err(Error::Shape("ragged array: numbers mixed with rows".into()));
        } else {
            out.push(args::number(x, "tensor element")? as f32);
        }
    }
    Ok(())
}

pub fn nest(values: &[f64], shape: &[usize], int: bool) -> Array {
    if shape.len() == 1 {
        return values
            .iter()
            .map(|&v| {
                if int {
                    Dynamic::from(v as i64)
                } else {
                    Dynamic::from(v)
                }
            })
            .collect();
    }
    let stride: usize = shape[1..].iter().product();
    values
        .chunks(stride)
        .map(|c| Dynamic::from(nest(c, &shape[1..], int)))
        .collect()
}
