//! The kernels as a Burn backend extension: forwards for burn-flex and hand-written
//! backwards for `Autodiff<Flex>`, both on the slice kernels in [`super::conv`] and
//! [`super::batch_norm`].

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::{DType, TensorData};
use burn_flex::FlexTensor;

use super::batch_norm::{self, Epilogue, NormShape};
use super::conv::{self, ConvShape};
use super::cross_entropy;
use super::linear::{self, LinearShape};
use super::{direct, direct_wide, update, winograd};
use crate::kernels::conv_options;

/// The CPU kernels a training step spends its time in.
#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: Backend {
    /// A 2-D convolution without bias, square kernel, equal stride and padding on both axes:
    /// `x` `[N, C, H, W]`, `weight` `[C_out, C, k, k]` → `[N, C_out, H', W']`.
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// Batch norm with the batch's own statistics, then ReLU when `relu` (in the same pass):
    /// `x` `[N, C, ..]`, `gamma` and `beta` `[C]` → (output, mean `[C]`, biased variance
    /// `[C]`). Only the output is differentiated.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`fused_batch_norm_train`](CpuKernels::fused_batch_norm_train) with `residual` (the
    /// shape of `x`) added before the ReLU: the end of a ResNet block, in one pass.
    fn fused_batch_norm_add_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// A linear layer without bias, the weight in PyTorch's layout: `x` `[N, in]`, `weight`
    /// `[out, in]` → `x · weightᵀ` `[N, out]`.
    fn gemm_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Per-row cross-entropy of f32 `logits` `[N, C]` against `targets` `[N]` (f32 class
    /// indices, each below `C`): `logsumexp(row) − row[target]` `[N]`.
    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The geometry, when both tensors are f32 and the shapes are ones the kernels take.
fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: usize,
    padding: usize,
) -> Option<ConvShape> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    let (xs, ws) = (x.shape(), weight.shape());
    if xs.num_dims() != 4 || ws.num_dims() != 4 || ws[1] != xs[1] || ws[2] != ws[3] {
        return None;
    }
    let s = ConvShape {
        batch: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        k: ws[2],
        stride,
        pad: padding,
    };
    let nonempty = s.batch > 0 && s.c_in > 0 && s.c_out > 0;
    (nonempty && s.is_valid()).then_some(s)
}

/// The sizes, when both tensors are f32 matrices with matching inner sizes.
fn linear_shape(x: &FlexTensor, weight: &FlexTensor) -> Option<LinearShape> {
    let (xs, ws) = (x.shape(), weight.shape());
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    if !f32s || xs.num_dims() != 2 || ws.num_dims() != 2 || xs[1] != ws[1] {
        return None;
    }
    let s = LinearShape {
        rows: xs[0],
        d_in: xs[1],
        d_out: ws[0],
    };
    (s.rows > 0 && s.d_in > 0 && s.d_out > 0).then_some(s)
}

/// `x · weightᵀ` with burn's own ops, for what the kernel does not take.
fn burn_linear<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>) -> FloatTensor<B> {
    B::float_matmul(x, B::float_transpose(weight))
}

/// A tensor's f32 values in row-major order: borrowed where they already lie so (contiguous
/// at any offset: a parameter is a view of its network's vector), else a contiguous copy.
/// (`to_contiguous` copies any view that does not start at its buffer's start.)
enum RowMajor<'a> {
    Borrowed(&'a [f32]),
    Copied(FlexTensor),
}

impl<'a> RowMajor<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        match t.as_slice::<f32>() {
            Some(values) => RowMajor::Borrowed(values),
            None => RowMajor::Copied(t.to_contiguous()),
        }
    }

    fn values(&self) -> &[f32] {
        match self {
            RowMajor::Borrowed(values) => values,
            RowMajor::Copied(t) => t.storage::<f32>(),
        }
    }
}

fn flex(values: Vec<f32>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// The `[batch, channels, plane]` view, when every tensor is f32, `gamma`, `beta` have one
/// value per channel and `residual` (if any) has the shape of `x`.
fn norm_shape(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    residual: Option<&FlexTensor>,
) -> Option<NormShape> {
    let all_f32 = [x, gamma, beta]
        .into_iter()
        .chain(residual)
        .all(|t| t.dtype() == DType::F32);
    let dims = x.shape();
    if !all_f32 || dims.num_dims() < 2 || residual.is_some_and(|r| r.shape() != dims) {
        return None;
    }
    let s = NormShape {
        batch: dims[0],
        channels: dims[1],
        plane: dims.iter().skip(2).product(),
    };
    let per_channel = |t: &FlexTensor| t.shape().num_elements() == s.channels;
    let nonempty = s.batch > 0 && s.channels > 0 && s.plane > 0;
    (nonempty && per_channel(gamma) && per_channel(beta)).then_some(s)
}

/// `relu?(out + residual)` with the backend's own ops, for what the kernels do not take.
fn burn_epilogue<B: Backend>(
    out: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    relu: bool,
) -> FloatTensor<B> {
    let out = match residual {
        Some(r) => B::float_add(out, r),
        None => out,
    };
    if relu { B::relu(out) } else { out }
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.shape().iter().copied().collect()
}

/// Which kernel computes each pass of a convolution: the first that pays for that pass, in
/// this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvPath {
    /// Up to 32 channels, and stems: pixels in the vector lanes (`direct.rs`).
    Direct,
    /// Small maps: channels in the lanes (`direct_wide.rs`).
    DirectWide,
    /// Wider 3x3 layers on larger maps (`winograd.rs`).
    Winograd,
    /// Everything else (`conv.rs`).
    Im2col,
}

impl ConvPath {
    /// The first path whose test passes for `s`.
    fn first(
        s: &ConvShape,
        direct_wide: fn(&ConvShape) -> bool,
        winograd: fn(&ConvShape) -> bool,
    ) -> ConvPath {
        if direct::pays(s) {
            ConvPath::Direct
        } else if direct_wide(s) {
            ConvPath::DirectWide
        } else if winograd(s) {
            ConvPath::Winograd
        } else {
            ConvPath::Im2col
        }
    }

    /// The forward pass's kernel.
    fn forward(s: &ConvShape) -> ConvPath {
        ConvPath::first(s, direct_wide::pays_forward, winograd::pays)
    }

    /// The input gradient's (the same convolution with the kernels turned 180°).
    fn input_gradient(s: &ConvShape) -> ConvPath {
        ConvPath::first(s, direct_wide::pays_input_gradient, winograd::pays)
    }

    /// The weight gradient's.
    fn weight_gradient(s: &ConvShape) -> ConvPath {
        ConvPath::first(s, direct_wide::pays_weight, winograd::pays_weight)
    }
}

impl CpuKernels for Flex {
    fn gemm_conv2d(x: FlexTensor, weight: FlexTensor, stride: usize, padding: usize) -> FlexTensor {
        let Some(s) = geometry(&x, &weight, stride, padding) else {
            return Flex::conv2d(x, weight, None, conv_options(stride, padding));
        };
        let (x, weight) = (RowMajor::of(&x), RowMajor::of(&weight));
        let (x, weight) = (x.values(), weight.values());
        let out = match ConvPath::forward(&s) {
            ConvPath::Direct => direct::forward(&s, x, weight),
            ConvPath::DirectWide => direct_wide::forward(&s, x, weight),
            ConvPath::Winograd => winograd::forward(&s, x, weight),
            ConvPath::Im2col => conv::forward(&s, x, weight),
        };
        flex(out, [s.batch, s.c_out, s.oh(), s.ow()])
    }

    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        relu: bool,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_batch_norm(x, gamma, beta, None, relu, epsilon)
    }

    fn fused_batch_norm_add_relu_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        residual: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_batch_norm(x, gamma, beta, Some(residual), true, epsilon)
    }

    fn gemm_linear(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        let Some(s) = linear_shape(&x, &weight) else {
            return burn_linear::<Flex>(x, weight);
        };
        let (x, weight) = (RowMajor::of(&x), RowMajor::of(&weight));
        let y = linear::forward(&s, x.values(), weight.values());
        flex(y, [s.rows, s.d_out])
    }

    fn fused_cross_entropy(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        flex_cross_entropy(logits, &class_indices(&targets)).0
    }
}

/// The class indices of a `[N]` f32 tensor.
fn class_indices(targets: &FlexTensor) -> Vec<usize> {
    let targets = targets.to_contiguous();
    targets
        .storage::<f32>()
        .iter()
        .map(|&t| t as usize)
        .collect()
}

/// Per-row cross-entropy on burn-flex against class indices, and each row's log-sum-exp
/// (for the backward).
fn flex_cross_entropy(logits: FlexTensor, targets: &[usize]) -> (FlexTensor, FlexTensor) {
    let logits = logits.to_contiguous();
    let classes = logits.shape()[1];
    let (losses, lse) = cross_entropy::forward(logits.storage::<f32>(), classes, targets);
    let rows = targets.len();
    (flex(losses, [rows]), flex(lse, [rows]))
}

/// Batch norm and its epilogue on burn-flex: the kernel, or burn's ops for what it does not
/// take.
fn flex_batch_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    residual: Option<FlexTensor>,
    relu: bool,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let Some(s) = norm_shape(&x, &gamma, &beta, residual.as_ref()) else {
        let out = <Flex as ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon);
        let output = burn_epilogue::<Flex>(out.output, residual, relu);
        return (output, out.mean, out.variance);
    };
    let shape = dims(&x);
    let (x, gamma, beta) = (RowMajor::of(&x), RowMajor::of(&gamma), RowMajor::of(&beta));
    let residual = residual.as_ref().map(RowMajor::of);
    let epilogue = Epilogue {
        residual: residual.as_ref().map(RowMajor::values),
        relu,
    };
    let (out, mean, var) = batch_norm::forward(
        &s,
        x.values(),
        gamma.values(),
        beta.values(),
        epilogue,
        epsilon,
    );
    (
        flex(out, shape),
        flex(mean, [s.channels]),
        flex(var, [s.channels]),
    )
}

/// The backward step of batch norm and its epilogue: the input, `gamma`, `beta` and (with
/// `N = 4`) residual gradients.
#[derive(Debug)]
struct BatchNormBackward<const N: usize>;

/// What [`BatchNormBackward`] keeps from the forward.
#[derive(Debug, Clone)]
struct BatchNormState {
    /// The input's checkpoint.
    x: NodeId,
    gamma: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    epsilon: f64,
    /// The output, when a ReLU was applied: where it is positive, gradients pass.
    relu_out: Option<FlexTensor>,
}

impl<const N: usize> Backward<Flex, N> for BatchNormBackward<N> {
    type State = BatchNormState;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta, node_residual] =
            crate::kernels::norm_parents(ops.parents);
        let state = ops.state;
        let mut dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        if let Some(out) = &state.relu_out {
            let out = out.to_contiguous();
            let dz = batch_norm::relu_backward(dy.storage::<f32>(), out.storage::<f32>());
            dy = flex(dz, dims(&out));
        }
        if let Some(node) = node_residual {
            grads.register::<Flex>(node.id, dy.clone());
        }
        let x = checkpointer
            .retrieve_node_output::<FlexTensor>(state.x)
            .to_contiguous();
        // beta is not kept for the backward; gamma has the same `[C]` shape.
        let Some(s) = norm_shape(&x, &state.gamma, &state.gamma, None) else {
            unreachable!(
                "fused_batch_norm_train recorded a backward for a shape it does not handle"
            );
        };
        let (dx, dgamma, dbeta) = batch_norm::backward(
            &s,
            x.storage::<f32>(),
            state.gamma.storage::<f32>(),
            state.mean.storage::<f32>(),
            state.var.storage::<f32>(),
            state.epsilon,
            dy.storage::<f32>(),
        );
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, dims(&x)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, [s.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, [s.channels]));
        }
    }
}

/// The backward step: both gradients in one pass over the column matrices.
#[derive(Debug)]
struct GemmConvBackward;

impl Backward<Flex, 2> for GemmConvBackward {
    /// The checkpoints of the input and the weight, the stride and the padding.
    type State = (NodeId, NodeId, usize, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (stride, padding) = (ops.state.2, ops.state.3);
        input_and_weight_backward(
            ops,
            grads,
            checkpointer,
            |state| (state.0, state.1),
            |x, weight, dy, want_dx| {
                let Some(s) = geometry(x, weight, stride, padding) else {
                    // Shapes the kernels do not take never reach here: the forward sent them
                    // to burn's own conv, whose backward node is burn's too.
                    unreachable!("gemm_conv2d recorded a backward for a shape it does not handle");
                };
                let (x, weight, dy) = (
                    x.storage::<f32>(),
                    weight.storage::<f32>(),
                    dy.storage::<f32>(),
                );
                // Each gradient by its own path; im2col + GEMM computes both in one pass over
                // the batch when it takes both.
                let dx_path = want_dx.then(|| ConvPath::input_gradient(&s));
                let (dw, dx) = match ConvPath::weight_gradient(&s) {
                    ConvPath::Direct => (direct::weight_gradient(&s, x, dy), None),
                    ConvPath::DirectWide => (direct_wide::weight_gradient(&s, x, dy), None),
                    ConvPath::Winograd => (winograd::weight_gradient(&s, x, dy), None),
                    ConvPath::Im2col => {
                        let both = dx_path == Some(ConvPath::Im2col);
                        conv::backward(&s, x, weight, dy, both)
                    }
                };
                let dx = match dx_path {
                    _ if dx.is_some() => dx,
                    None => None,
                    Some(ConvPath::Direct) => Some(direct::input_gradient(&s, weight, dy)),
                    Some(ConvPath::DirectWide) => Some(direct_wide::input_gradient(&s, weight, dy)),
                    Some(ConvPath::Winograd) => Some(winograd::input_gradient(&s, weight, dy)),
                    Some(ConvPath::Im2col) => Some(conv::input_gradient(&s, weight, dy)),
                };
                (
                    flex(dw, [s.c_out, s.c_in, s.k, s.k]),
                    dx.map(|dx| flex(dx, [s.batch, s.c_in, s.h, s.w])),
                )
            },
        );
    }
}

/// The backward of an op on an input and a weight (the convolution, the linear layer):
/// takes the output's gradient, retrieves both checkpoints (`checkpoints` names them in the
/// state), and registers what `gradients(x, weight, dy, want_dx)` returns: the weight's
/// gradient and, when asked, the input's. All three tensors come contiguous.
fn input_and_weight_backward<S>(
    ops: Ops<S, 2>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
    checkpoints: impl FnOnce(&S) -> (NodeId, NodeId),
    gradients: impl FnOnce(
        &FlexTensor,
        &FlexTensor,
        &FlexTensor,
        bool,
    ) -> (FlexTensor, Option<FlexTensor>),
) {
    let [node_x, node_weight] = ops.parents;
    let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
    let (x_state, weight_state) = checkpoints(&ops.state);
    let x = checkpointer
        .retrieve_node_output::<FlexTensor>(x_state)
        .to_contiguous();
    let weight = checkpointer
        .retrieve_node_output::<FlexTensor>(weight_state)
        .to_contiguous();
    let (dw, dx) = gradients(&x, &weight, &dy, node_x.is_some());
    if let (Some(node), Some(dx)) = (node_x, dx) {
        grads.register::<Flex>(node.id, dx);
    }
    if let Some(node) = node_weight {
        grads.register::<Flex>(node.id, dw);
    }
}

/// The forward of an op on an input and a weight (the convolution, the linear layer) under
/// autodiff: when either needs a gradient, both are checkpointed for `backward`, whose state
/// `state(x_checkpoint, weight_checkpoint)` builds; `forward` computes the output either way.
fn input_and_weight_op<C: CheckpointStrategy, K: Backward<Flex, 2>>(
    backward: K,
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    state: impl FnOnce(NodeId, NodeId) -> K::State,
    forward: impl FnOnce(FlexTensor, FlexTensor) -> FlexTensor,
) -> FloatTensor<Autodiff<Flex, C>> {
    match backward
        .prepare::<C>([x.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let weight_state = prep.checkpoint(&weight);
            let out = forward(x.into_primitive(), weight.into_primitive());
            prep.finish(state(x_state, weight_state), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(x.into_primitive(), weight.into_primitive()))
        }
    }
}

impl<C: CheckpointStrategy> CpuKernels for Autodiff<Flex, C> {
    fn gemm_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        if geometry(x.primitive(), weight.primitive(), stride, padding).is_none() {
            return <Self as ModuleOps<Self>>::conv2d(
                x,
                weight,
                None,
                conv_options(stride, padding),
            );
        }
        input_and_weight_op::<C, _>(
            GemmConvBackward,
            x,
            weight,
            |x, weight| (x, weight, stride, padding),
            |x, weight| Flex::gemm_conv2d(x, weight, stride, padding),
        )
    }

    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        autodiff_batch_norm::<C>(x, gamma, beta, None, relu, epsilon)
    }

    fn fused_batch_norm_add_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        autodiff_batch_norm::<C>(x, gamma, beta, Some(residual), true, epsilon)
    }

    fn gemm_linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        if linear_shape(x.primitive(), weight.primitive()).is_none() {
            return burn_linear::<Self>(x, weight);
        }
        input_and_weight_op::<C, _>(
            LinearBackward,
            x,
            weight,
            |x, weight| (x, weight),
            Flex::gemm_linear,
        )
    }

    fn fused_cross_entropy(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let indices = class_indices(targets.primitive());
        match CrossEntropyBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let logits_state = prep.checkpoint(&logits);
                let (losses, lse) = flex_cross_entropy(logits.into_primitive(), &indices);
                prep.finish((logits_state, indices, lse), losses)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(flex_cross_entropy(logits.into_primitive(), &indices).0)
            }
        }
    }
}

/// The backward step of a linear layer: both gradients, contiguous.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// The checkpoints of the input and the weight.
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        input_and_weight_backward(
            ops,
            grads,
            checkpointer,
            |&state| state,
            |x, weight, dy, want_dx| {
                let Some(s) = linear_shape(x, weight) else {
                    unreachable!("gemm_linear recorded a backward for a shape it does not handle");
                };
                let (dw, dx) = linear::backward(
                    &s,
                    x.storage::<f32>(),
                    weight.storage::<f32>(),
                    dy.storage::<f32>(),
                    want_dx,
                );
                (
                    flex(dw, [s.d_out, s.d_in]),
                    dx.map(|dx| flex(dx, [s.rows, s.d_in])),
                )
            },
        );
    }
}

/// The backward step of cross-entropy: `dloss · (softmax − one-hot)`, one pass.
#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    /// The logits' checkpoint, the class indices and each row's log-sum-exp.
    type State = (NodeId, Vec<usize>, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_logits] = ops.parents;
        let dloss = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Some(node) = node_logits else {
            return;
        };
        let (logits_state, targets, lse) = ops.state;
        let logits = checkpointer
            .retrieve_node_output::<FlexTensor>(logits_state)
            .to_contiguous();
        let shape = dims(&logits);
        let grad = cross_entropy::backward(
            logits.storage::<f32>(),
            shape[1],
            &targets,
            lse.storage::<f32>(),
            dloss.storage::<f32>(),
        );
        grads.register::<Flex>(node.id, flex(grad, shape));
    }
}

type AutodiffFloat<C> = FloatTensor<Autodiff<Flex, C>>;

/// Batch norm and its epilogue on `Autodiff<Flex>`: recorded with [`BatchNormBackward`], or
/// burn's ops for what the kernel does not take.
fn autodiff_batch_norm<C: CheckpointStrategy>(
    x: AutodiffFloat<C>,
    gamma: AutodiffFloat<C>,
    beta: AutodiffFloat<C>,
    residual: Option<AutodiffFloat<C>>,
    relu: bool,
    epsilon: f64,
) -> (AutodiffFloat<C>, AutodiffFloat<C>, AutodiffFloat<C>) {
    type B<C> = Autodiff<Flex, C>;
    let shape = norm_shape(
        x.primitive(),
        gamma.primitive(),
        beta.primitive(),
        residual.as_ref().map(|r| r.primitive()),
    );
    if shape.is_none() {
        let out = <B<C> as ModuleOps<B<C>>>::batch_norm_train(x, gamma, beta, epsilon);
        let output = burn_epilogue::<B<C>>(out.output, residual, relu);
        return (output, out.mean, out.variance);
    }
    let (out, mean, var) = match residual {
        None => {
            let nodes = [x.node(), gamma.node(), beta.node()];
            batch_norm_tracked::<C, 3>(nodes, (x, gamma, beta), None, relu, epsilon)
        }
        Some(r) => {
            let nodes = [x.node(), gamma.node(), beta.node(), r.node()];
            let r = Some(r.into_primitive());
            batch_norm_tracked::<C, 4>(nodes, (x, gamma, beta), r, relu, epsilon)
        }
    };
    // The statistics leave as constants: callers only feed them to running averages.
    let constant = AutodiffFloat::<C>::new;
    (out, constant(mean), constant(var))
}

/// Records the fused batch norm on the autodiff graph, `nodes` being the parents in the
/// order [`BatchNormBackward`] reads them.
fn batch_norm_tracked<C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    (x, gamma, beta): (AutodiffFloat<C>, AutodiffFloat<C>, AutodiffFloat<C>),
    residual: Option<FlexTensor>,
    relu: bool,
    epsilon: f64,
) -> (AutodiffFloat<C>, FlexTensor, FlexTensor) {
    match BatchNormBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            // Contiguous: the backward reads its storage, and a view (a parameter laid in a
            // network's vector) starts elsewhere in it.
            let gamma_value = gamma.primitive().to_contiguous();
            let (out, mean, var) = flex_batch_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                residual,
                relu,
                epsilon,
            );
            let state = BatchNormState {
                x: x_state,
                gamma: gamma_value,
                mean: mean.clone(),
                var: var.clone(),
                epsilon,
                relu_out: relu.then(|| out.clone()),
            };
            (prep.finish(state, out), mean, var)
        }
        OpsKind::UnTracked(prep) => {
            let (out, mean, var) = flex_batch_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                residual,
                relu,
                epsilon,
            );
            (prep.finish(out), mean, var)
        }
    }
}

/// The optimiser and EMA updates over parameter vectors (`[chunks, CHUNK]`, see
/// [`super::update`]), each in one or two passes on burn-flex. Without autodiff: updates run
/// on plain tensors.
#[backend_extension(Flex)]
pub trait UpdateKernels: Backend {
    /// SGD: `(p', buf')`; `buf` is read unless `first`; `buf'` is empty without momentum.
    #[allow(clippy::too_many_arguments)]
    fn fused_sgd(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        buf: FloatTensor<Self>,
        decay: FloatTensor<Self>,
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Each row's `Σ p²` and `Σ d²`, `d = g + wd·decay·p` (`[chunks]` each).
    fn fused_lars_norms(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        decay: FloatTensor<Self>,
        weight_decay: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// LARS given each row's trust ratio (`[chunks, 1]`): `(p', buf')`.
    #[allow(clippy::too_many_arguments)]
    fn fused_lars(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        buf: FloatTensor<Self>,
        decay: FloatTensor<Self>,
        trust: FloatTensor<Self>,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// AdamW: `(p', m', v')`, with this step's bias corrections `c1`, `c2`.
    #[allow(clippy::too_many_arguments)]
    fn fused_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        decay: FloatTensor<Self>,
        lr: f64,
        betas: (f64, f64),
        epsilon: f64,
        weight_decay: f64,
        corrections: (f64, f64),
        first: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The EMA `m·t + (1 − m)·o`.
    fn fused_mix(t: FloatTensor<Self>, o: FloatTensor<Self>, m: f64) -> FloatTensor<Self>;
}

impl UpdateKernels for Flex {
    fn fused_sgd(
        p: FlexTensor,
        g: FlexTensor,
        buf: FlexTensor,
        decay: FlexTensor,
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
        first: bool,
    ) -> (FlexTensor, FlexTensor) {
        let shape = dims(&p);
        let (pv, gv, bv, dv) = (
            RowMajor::of(&p),
            RowMajor::of(&g),
            RowMajor::of(&buf),
            RowMajor::of(&decay),
        );
        let settings = update::Sgd {
            momentum: momentum as f32,
            undamped: (1.0 - dampening) as f32,
            nesterov,
            weight_decay: weight_decay as f32,
        };
        let old = (!first).then(|| bv.values());
        let (new_p, new_buf) = update::sgd(
            pv.values(),
            gv.values(),
            old,
            dv.values(),
            lr as f32,
            settings,
        );
        let buf_shape = if new_buf.is_empty() {
            vec![0]
        } else {
            shape.clone()
        };
        (flex(new_p, shape), flex(new_buf, buf_shape))
    }

    fn fused_lars_norms(
        p: FlexTensor,
        g: FlexTensor,
        decay: FlexTensor,
        weight_decay: f64,
    ) -> (FlexTensor, FlexTensor) {
        let (pv, gv, dv) = (RowMajor::of(&p), RowMajor::of(&g), RowMajor::of(&decay));
        let rows = dv.values().len();
        let (pp, dd) =
            update::lars_row_norms(pv.values(), gv.values(), dv.values(), weight_decay as f32);
        (flex(pp, [rows]), flex(dd, [rows]))
    }

    fn fused_lars(
        p: FlexTensor,
        g: FlexTensor,
        buf: FlexTensor,
        decay: FlexTensor,
        trust: FlexTensor,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        first: bool,
    ) -> (FlexTensor, FlexTensor) {
        let shape = dims(&p);
        let (pv, gv, bv) = (RowMajor::of(&p), RowMajor::of(&g), RowMajor::of(&buf));
        let (dv, tv) = (RowMajor::of(&decay), RowMajor::of(&trust));
        let rows: Vec<update::RowFactors> = dv
            .values()
            .iter()
            .zip(tv.values())
            .map(|(&decay, &trust)| update::RowFactors { decay, trust })
            .collect();
        let old = (!first).then(|| bv.values());
        let (new_p, new_buf) = update::lars(
            pv.values(),
            gv.values(),
            old,
            &rows,
            weight_decay as f32,
            momentum as f32,
            lr as f32,
        );
        (flex(new_p, shape.clone()), flex(new_buf, shape))
    }

    fn fused_adamw(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        decay: FlexTensor,
        lr: f64,
        betas: (f64, f64),
        epsilon: f64,
        weight_decay: f64,
        corrections: (f64, f64),
        first: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = dims(&p);
        let (pv, gv, mv, vv, dv) = (
            RowMajor::of(&p),
            RowMajor::of(&g),
            RowMajor::of(&m),
            RowMajor::of(&v),
            RowMajor::of(&decay),
        );
        let settings = update::AdamW {
            beta1: betas.0 as f32,
            beta2: betas.1 as f32,
            rest1: (1.0 - betas.0) as f32,
            rest2: (1.0 - betas.1) as f32,
            epsilon: epsilon as f32,
            weight_decay: weight_decay as f32,
            c1: corrections.0 as f32,
            c2: corrections.1 as f32,
        };
        let old = (!first).then(|| (mv.values(), vv.values()));
        let (new_p, new_m, new_v) = update::adamw(
            pv.values(),
            gv.values(),
            old,
            dv.values(),
            lr as f32,
            settings,
        );
        (
            flex(new_p, shape.clone()),
            flex(new_m, shape.clone()),
            flex(new_v, shape),
        )
    }

    fn fused_mix(t: FlexTensor, o: FlexTensor, m: f64) -> FlexTensor {
        let shape = dims(&t);
        let (tv, ov) = (RowMajor::of(&t), RowMajor::of(&o));
        let rest = (1.0 - m) as f32;
        flex(update::mix(tv.values(), ov.values(), m as f32, rest), shape)
    }
}
