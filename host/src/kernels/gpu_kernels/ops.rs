//! The GPU kernels as a Burn backend extension: convolution (forward, input gradient, weight
//! gradient) and training batch norm with its ReLU or residual-add-and-ReLU tail (forward and
//! backward).
//!
//! Every backend gets [`super::reference`]'s bodies (its own tensor ops); the cubecl backend
//! replaces them with cuDNN on a CUDA device where cuDNN loads (`super::cudnn`), and
//! `Autodiff<B>` records a backward that calls the same trait's backward operations. So the
//! autodiff wiring a GPU run takes is the one the CPU tests check against burn's own autodiff,
//! with only the kernels underneath swapped.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};

use super::reference;

/// Convolution and batch norm as a training step needs them. Shapes: `x` `[N, C, H, W]`,
/// `weight` `[K, C, r, r]` (square kernel, the same stride and zero padding on both axes, no
/// bias), `gamma`, `beta`, `mean`, `inv_std` `[C]` in f32. Convolutions compute in `x`'s type
/// (the weight arrives in it); batch norm computes in f32 and returns its output in `x`'s
/// type, with the batch mean and `1/sqrt(var + ε)`.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "cuda", feature = "cubecl-cpu")),
    Fusion: cfg(any(feature = "cuda", feature = "cubecl-cpu")),
    Autodiff
)]
pub trait GpuKernels: Backend {
    /// `x`, `weight` → `[N, K, H', W']`.
    #[fusion(meta = super::conv_output_spec)]
    fn gpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        reference::conv2d::<Self>(x, weight, stride, padding)
    }

    /// The gradient of [`gpu_conv2d`](GpuKernels::gpu_conv2d) for `x`, from the output's `dy`.
    #[fusion(dtype = x, shape = x)]
    fn gpu_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        reference::conv2d_input_grad::<Self>(x, weight, dy, stride, padding)
    }

    /// The gradient of [`gpu_conv2d`](GpuKernels::gpu_conv2d) for `weight`, in its type.
    #[fusion(dtype = weight, shape = weight)]
    fn gpu_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        reference::conv2d_weight_grad::<Self>(x, weight, dy, stride, padding)
    }

    /// Batch norm, then ReLU when `relu` → (output, mean, inv_std).
    #[fusion(meta = |x, gamma, _beta, _relu, _epsilon| (x.clone(), gamma.clone(), gamma.clone()))]
    fn gpu_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::batch_norm::<Self>(x, gamma, beta, None, relu, epsilon)
    }

    /// `relu(bn(x) + residual)`, the end of a ResNet block → (output, mean, inv_std).
    #[fusion(meta = |x, gamma, _beta, _residual, _epsilon| (x.clone(), gamma.clone(), gamma.clone()))]
    fn gpu_batch_norm_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::batch_norm::<Self>(x, gamma, beta, Some(residual), true, epsilon)
    }

    /// The gradients of [`gpu_batch_norm`](GpuKernels::gpu_batch_norm) from the output's
    /// `dy`, given its input `x`, its output `y` and what it saved → (dx, dgamma, dbeta).
    #[fusion(meta = |x, _y, _dy, gamma, _beta, _mean, _inv_std, _relu, _epsilon| (x.clone(), gamma.clone(), gamma.clone()))]
    #[allow(clippy::too_many_arguments)]
    fn gpu_batch_norm_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = (beta, epsilon);
        let (dx, _, dgamma, dbeta) =
            reference::batch_norm_backward::<Self>(x, y, dy, gamma, mean, inv_std, relu);
        (dx, dgamma, dbeta)
    }

    /// The gradients of [`gpu_batch_norm_add_relu`](GpuKernels::gpu_batch_norm_add_relu)
    /// → (dx, dresidual, dgamma, dbeta).
    #[fusion(meta = |x, y, _dy, gamma, _beta, _mean, _inv_std, _epsilon| (x.clone(), y.clone(), gamma.clone(), gamma.clone()))]
    #[allow(clippy::too_many_arguments)]
    fn gpu_batch_norm_add_relu_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        epsilon: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let _ = (beta, epsilon);
        reference::batch_norm_backward::<Self>(x, y, dy, gamma, mean, inv_std, true)
    }
}

impl GpuKernels for Flex {}

/// The cubecl backend without CUDA (the CPU runtime) runs the reference bodies; with CUDA,
/// `super::cudnn` implements the trait.
#[cfg(all(feature = "cubecl-cpu", not(feature = "cuda")))]
impl GpuKernels for burn_cubecl::CubeBackend {}

type AutodiffFloat<B, C> = FloatTensor<Autodiff<B, C>>;

/// An autodiff tensor that takes no part in the graph (statistics, and the backward
/// operations' results when called on autodiff tensors directly).
fn constant<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> AutodiffFloat<B, C> {
    <AutodiffFloat<B, C>>::new(t)
}

/// `op` on three autodiff tensors' primitives, its result outside the graph: a backward
/// operation called directly.
fn untracked<B: Backend, C: CheckpointStrategy>(
    (x, weight, dy): (
        AutodiffFloat<B, C>,
        AutodiffFloat<B, C>,
        AutodiffFloat<B, C>,
    ),
    op: impl FnOnce(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> AutodiffFloat<B, C> {
    let out = op(
        x.into_primitive(),
        weight.into_primitive(),
        dy.into_primitive(),
    );
    constant::<B, C>(out)
}

impl<B: GpuKernels, C: CheckpointStrategy> GpuKernels for Autodiff<B, C> {
    fn gpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = ConvState {
                    x: prep.checkpoint(&x),
                    weight: prep.checkpoint(&weight),
                    stride,
                    padding,
                };
                let y = B::gpu_conv2d(x.into_primitive(), weight.into_primitive(), stride, padding);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gpu_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                stride,
                padding,
            )),
        }
    }

    fn gpu_conv2d_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        untracked::<B, C>((x, weight, dy), |x, weight, dy| {
            B::gpu_conv2d_input_grad(x, weight, dy, stride, padding)
        })
    }

    fn gpu_conv2d_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        untracked::<B, C>((x, weight, dy), |x, weight, dy| {
            B::gpu_conv2d_weight_grad(x, weight, dy, stride, padding)
        })
    }

    fn gpu_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        norm_forward::<B, C, 3>(nodes, x, gamma, beta, None, relu, epsilon)
    }

    fn gpu_batch_norm_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node(), residual.node()];
        norm_forward::<B, C, 4>(nodes, x, gamma, beta, Some(residual), true, epsilon)
    }

    fn gpu_batch_norm_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        relu: bool,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dgamma, dbeta) = B::gpu_batch_norm_backward(
            x.into_primitive(),
            y.into_primitive(),
            dy.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            inv_std.into_primitive(),
            relu,
            epsilon,
        );
        (
            constant::<B, C>(dx),
            constant::<B, C>(dgamma),
            constant::<B, C>(dbeta),
        )
    }

    fn gpu_batch_norm_add_relu_backward(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        inv_std: FloatTensor<Self>,
        epsilon: f64,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (dx, dz, dgamma, dbeta) = B::gpu_batch_norm_add_relu_backward(
            x.into_primitive(),
            y.into_primitive(),
            dy.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            inv_std.into_primitive(),
            epsilon,
        );
        (
            constant::<B, C>(dx),
            constant::<B, C>(dz),
            constant::<B, C>(dgamma),
            constant::<B, C>(dbeta),
        )
    }
}

/// The convolution's backward step: the input and weight gradients.
#[derive(Debug)]
struct ConvBackward;

/// What [`ConvBackward`] keeps from the forward.
#[derive(Debug, Clone)]
struct ConvState {
    x: NodeId,
    weight: NodeId,
    stride: usize,
    padding: usize,
}

impl<B: GpuKernels> Backward<B, 2> for ConvBackward {
    type State = ConvState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let s = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(s.x);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(s.weight);
        if let Some(node) = node_weight {
            let dw = B::gpu_conv2d_weight_grad(
                x.clone(),
                weight.clone(),
                dy.clone(),
                s.stride,
                s.padding,
            );
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_x {
            let dx = B::gpu_conv2d_input_grad(x, weight, dy, s.stride, s.padding);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// Batch norm's backward step; `N` is 4 when a residual was added (its gradient is the
/// fourth).
#[derive(Debug)]
struct NormBackward<const N: usize>;

/// What [`NormBackward`] keeps from the forward: the input's checkpoint, the output (the next
/// layer keeps it anyway) and the `[C]` vectors.
#[derive(Debug, Clone)]
struct NormState<B: Backend> {
    x: NodeId,
    y: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    inv_std: FloatTensor<B>,
    relu: bool,
    epsilon: f64,
}

#[allow(clippy::too_many_arguments)]
fn norm_forward<B: GpuKernels, C: CheckpointStrategy, const N: usize>(
    nodes: [NodeGuard; N],
    x: AutodiffFloat<B, C>,
    gamma: AutodiffFloat<B, C>,
    beta: AutodiffFloat<B, C>,
    residual: Option<AutodiffFloat<B, C>>,
    relu: bool,
    epsilon: f64,
) -> (
    AutodiffFloat<B, C>,
    AutodiffFloat<B, C>,
    AutodiffFloat<B, C>,
) {
    let run = |x: FloatTensor<B>, gamma: FloatTensor<B>, beta: FloatTensor<B>| match &residual {
        Some(r) => B::gpu_batch_norm_add_relu(x, gamma, beta, r.primitive().clone(), epsilon),
        None => B::gpu_batch_norm(x, gamma, beta, relu, epsilon),
    };
    match NormBackward::<N>
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let (gamma, beta) = (gamma.into_primitive(), beta.into_primitive());
            let (y, mean, inv_std) = run(x.into_primitive(), gamma.clone(), beta.clone());
            let state = NormState {
                x: x_state,
                y: y.clone(),
                gamma,
                beta,
                mean: mean.clone(),
                inv_std: inv_std.clone(),
                relu,
                epsilon,
            };
            let y = prep.finish(state, y);
            (y, constant::<B, C>(mean), constant::<B, C>(inv_std))
        }
        OpsKind::UnTracked(prep) => {
            let (y, mean, inv_std) = run(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
            );
            (
                prep.finish(y),
                constant::<B, C>(mean),
                constant::<B, C>(inv_std),
            )
        }
    }
}

impl<B: GpuKernels, const N: usize> Backward<B, N> for NormBackward<N> {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta, node_residual] =
            crate::kernels::norm_parents(ops.parents);
        let s = ops.state;
        let dy = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(s.x);
        let (dx, dz, dgamma, dbeta) = if N == 4 {
            let (dx, dz, dgamma, dbeta) = B::gpu_batch_norm_add_relu_backward(
                x, s.y, dy, s.gamma, s.beta, s.mean, s.inv_std, s.epsilon,
            );
            (dx, Some(dz), dgamma, dbeta)
        } else {
            let (dx, dgamma, dbeta) = B::gpu_batch_norm_backward(
                x, s.y, dy, s.gamma, s.beta, s.mean, s.inv_std, s.relu, s.epsilon,
            );
            (dx, None, dgamma, dbeta)
        };
        if let (Some(node), Some(dz)) = (node_residual, dz) {
            grads.register::<B>(node.id, dz);
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, dbeta);
        }
    }
}
