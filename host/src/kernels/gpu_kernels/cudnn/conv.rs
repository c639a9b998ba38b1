//! Convolutions in cuDNN: forward, input gradient and weight gradient, channels last, with the
//! algorithm for each shape and pass picked once by timing cuDNN's candidates (as PyTorch's
//! `cudnn.benchmark`) and kept for the process.

use std::collections::HashMap;
use std::ffi::c_void;

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cudarc::cudnn::sys as dnn;

use super::{
    Cudnn, CudnnError, ONE, Pointers, ZERO, cast, channels_last, check, contiguous, data_type,
    dims4, empty_channels_last, nhwc_strides, permuted, scale, workspace,
};

/// The most workspace an algorithm may ask for (the fastest one that fits is taken).
const WORKSPACE_LIMIT: usize = 1 << 30;

/// A convolution's sizes and type: `x` `[n, c, h, w]`, `weight` `[k, c, r, r]`, the type
/// both compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    stride: usize,
    padding: usize,
    dtype: DType,
}

impl Geometry {
    /// The geometry of `x` convolved with `weight`, computing in `x`'s type.
    pub fn of(x: &CubeTensor, weight: &CubeTensor, stride: usize, padding: usize) -> Self {
        let [n, c, h, w] = dims4(x);
        let [k, _, r, _] = dims4(weight);
        Geometry {
            n,
            c,
            h,
            w,
            k,
            r,
            stride,
            padding,
            dtype: x.dtype,
        }
    }

    /// Whether cuDNN's channels-last kernels take these channels: in a half type, multiples
    /// of 8 (16-byte vectors), which the 3-channel stem is not (cuDNN 9.14 answered it with
    /// `CUDNN_STATUS_BAD_PARAM` on an H200).
    pub fn vectorised(&self) -> bool {
        self.dtype == DType::F32 || (self.c.is_multiple_of(8) && self.k.is_multiple_of(8))
    }

    fn output(&self) -> [usize; 4] {
        let side = |s: usize| (s + 2 * self.padding - self.r) / self.stride + 1;
        [self.n, self.k, side(self.h), side(self.w)]
    }
}

/// Which of the three convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}

/// The descriptors and chosen algorithm of one pass of one geometry.
#[derive(Clone, Copy)]
pub struct Plan {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
    algo: Algo,
    workspace: usize,
}

/// An algorithm of one of the three passes.
#[derive(Clone, Copy, Debug)]
enum Algo {
    Forward(dnn::cudnnConvolutionFwdAlgo_t),
    InputGrad(dnn::cudnnConvolutionBwdDataAlgo_t),
    WeightGrad(dnn::cudnnConvolutionBwdFilterAlgo_t),
}

impl Algo {
    fn forward(self) -> Result<dnn::cudnnConvolutionFwdAlgo_t, CudnnError> {
        match self {
            Algo::Forward(a) => Ok(a),
            other => Err(CudnnError(format!("{other:?} planned for the forward"))),
        }
    }

    fn input_grad(self) -> Result<dnn::cudnnConvolutionBwdDataAlgo_t, CudnnError> {
        match self {
            Algo::InputGrad(a) => Ok(a),
            other => Err(CudnnError(format!(
                "{other:?} planned for the input gradient"
            ))),
        }
    }

    fn weight_grad(self) -> Result<dnn::cudnnConvolutionBwdFilterAlgo_t, CudnnError> {
        match self {
            Algo::WeightGrad(a) => Ok(a),
            other => Err(CudnnError(format!(
                "{other:?} planned for the weight gradient"
            ))),
        }
    }
}

/// Plans made so far.
#[derive(Default)]
pub struct Plans(HashMap<(Pass, Geometry), Plan>);

/// A 4-D descriptor of `[n, c, h, w]` stored channels last.
fn tensor_desc(
    dims: [usize; 4],
    dtype: dnn::cudnnDataType_t,
) -> Result<dnn::cudnnTensorDescriptor_t, CudnnError> {
    let desc = cudarc::cudnn::result::create_tensor_descriptor()?;
    let [n, c, h, w] = dims.map(|d| d as i32);
    let [sn, sc, sh, sw] = nhwc_strides(dims).map(|d| d as i32);
    // SAFETY: `desc` is a live descriptor.
    unsafe {
        check(
            dnn::cudnnSetTensor4dDescriptorEx(desc, dtype, n, c, h, w, sn, sc, sh, sw),
            "cudnnSetTensor4dDescriptorEx",
        )?;
    }
    Ok(desc)
}

impl Plans {
    /// Whether `pass` of `g` has its plan.
    fn has(&self, pass: Pass, g: Geometry) -> bool {
        self.0.contains_key(&(pass, g))
    }

    /// The plan of `pass` for `g`, made (descriptors, and the fastest algorithm timed on this
    /// device) on first use.
    fn plan(
        &mut self,
        handle: dnn::cudnnHandle_t,
        pass: Pass,
        g: Geometry,
    ) -> Result<Plan, CudnnError> {
        if let Some(plan) = self.0.get(&(pass, g)) {
            return Ok(*plan);
        }
        let dtype = data_type(g.dtype)
            .ok_or_else(|| CudnnError(format!("no cuDNN type for {:?}", g.dtype)))?;
        let x = tensor_desc([g.n, g.c, g.h, g.w], dtype)?;
        let y = tensor_desc(g.output(), dtype)?;
        let w = cudarc::cudnn::result::create_filter_descriptor()?;
        let conv = cudarc::cudnn::result::create_convolution_descriptor()?;
        let (p, s) = (g.padding as i32, g.stride as i32);
        // SAFETY: live descriptors; the sizes are positive.
        unsafe {
            check(
                dnn::cudnnSetFilter4dDescriptor(
                    w,
                    dtype,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
                    g.k as i32,
                    g.c as i32,
                    g.r as i32,
                    g.r as i32,
                ),
                "cudnnSetFilter4dDescriptor",
            )?;
            check(
                dnn::cudnnSetConvolution2dDescriptor(
                    conv,
                    p,
                    p,
                    s,
                    s,
                    1,
                    1,
                    dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "cudnnSetConvolution2dDescriptor",
            )?;
            // Tensor cores for the half types; plain f32 arithmetic for f32, as burn's.
            let math = if g.dtype == DType::F32 {
                dnn::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                dnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
            };
            check(
                dnn::cudnnSetConvolutionMathType(conv, math),
                "cudnnSetConvolutionMathType",
            )?;
        }
        let (algo, workspace) = fastest(handle, pass, x, y, w, conv)?;
        let plan = Plan {
            x,
            y,
            w,
            conv,
            algo,
            workspace,
        };
        tracing::debug!("cuDNN {pass:?} {g:?}: {algo:?}, workspace {workspace} bytes");
        self.0.insert((pass, g), plan);
        Ok(plan)
    }
}

/// What cuDNN's `Find` returns for one candidate, whatever the pass.
struct Candidate {
    algo: Algo,
    ok: bool,
    memory: usize,
    math: dnn::cudnnMathType_t,
}

/// The fastest algorithm that succeeds within [`WORKSPACE_LIMIT`], timed by cuDNN on this
/// device (it allocates its own buffers and synchronises), and its workspace; the
/// convolution's math type is set to the one it was timed with.
fn fastest(
    handle: dnn::cudnnHandle_t,
    pass: Pass,
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
) -> Result<(Algo, usize), CudnnError> {
    const ASK: usize = 8;
    let mut returned = 0i32;
    let ok = |s: dnn::cudnnStatus_t| s == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
    // SAFETY: live descriptors; each perf array holds `ASK` entries and cuDNN writes at most
    // `returned` of them.
    let candidates: Vec<Candidate> = unsafe {
        match pass {
            Pass::Forward => {
                let mut perf = [std::mem::zeroed::<dnn::cudnnConvolutionFwdAlgoPerf_t>(); ASK];
                check(
                    dnn::cudnnFindConvolutionForwardAlgorithm(
                        handle,
                        x,
                        w,
                        conv,
                        y,
                        ASK as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                    ),
                    "cudnnFindConvolutionForwardAlgorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|p| Candidate {
                        algo: Algo::Forward(p.algo),
                        ok: ok(p.status),
                        memory: p.memory,
                        math: p.mathType,
                    })
                    .collect()
            }
            Pass::InputGrad => {
                let mut perf = [std::mem::zeroed::<dnn::cudnnConvolutionBwdDataAlgoPerf_t>(); ASK];
                check(
                    dnn::cudnnFindConvolutionBackwardDataAlgorithm(
                        handle,
                        w,
                        y,
                        conv,
                        x,
                        ASK as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                    ),
                    "cudnnFindConvolutionBackwardDataAlgorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|p| Candidate {
                        algo: Algo::InputGrad(p.algo),
                        ok: ok(p.status),
                        memory: p.memory,
                        math: p.mathType,
                    })
                    .collect()
            }
            Pass::WeightGrad => {
                let mut perf =
                    [std::mem::zeroed::<dnn::cudnnConvolutionBwdFilterAlgoPerf_t>(); ASK];
                check(
                    dnn::cudnnFindConvolutionBackwardFilterAlgorithm(
                        handle,
                        x,
                        y,
                        conv,
                        w,
                        ASK as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                    ),
                    "cudnnFindConvolutionBackwardFilterAlgorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|p| Candidate {
                        algo: Algo::WeightGrad(p.algo),
                        ok: ok(p.status),
                        memory: p.memory,
                        math: p.mathType,
                    })
                    .collect()
            }
        }
    };
    let best = candidates
        .iter()
        .find(|c| c.ok && c.memory <= WORKSPACE_LIMIT)
        .ok_or_else(|| CudnnError(format!("no {pass:?} algorithm runs for this shape")))?;
    // SAFETY: a live descriptor.
    unsafe {
        check(
            dnn::cudnnSetConvolutionMathType(conv, best.math),
            "cudnnSetConvolutionMathType",
        )?;
    }
    Ok((best.algo, best.memory))
}

/// `weight` `[k, c, r, r]` in `dtype` as a contiguous KRSC buffer (cuDNN's NHWC filter).
fn filter(weight: CubeTensor, dtype: DType) -> CubeTensor {
    contiguous(permuted(cast(weight, dtype), [0, 2, 3, 1]))
}

impl Cudnn {
    /// `x` `[n, c, h, w]` convolved with `weight` → `[n, k, h', w']` in `x`'s type, channels last.
    pub(super) fn conv_forward(
        &mut self,
        x: CubeTensor,
        weight: CubeTensor,
        g: Geometry,
    ) -> Result<CubeTensor, CudnnError> {
        if !self.conv.has(Pass::Forward, g) {
            self.drain(&x.client)?;
        }
        let plan = self.conv.plan(self.handle, Pass::Forward, g)?;
        let forward_algo = plan.algo.forward()?;
        let x = channels_last(x);
        let w = filter(weight, g.dtype);
        let y = empty_channels_last(&x, g.output(), g.dtype);
        let ws = workspace(&x, plan.workspace);
        let mut p = Pointers::new(&x.client);
        let (xp, wp, yp) = (p.of(&x)?, p.of(&w)?, p.of(&y)?);
        let wsp = p.address(&ws)? as *mut c_void;
        self.ordered(&x.client, &p, |h| unsafe {
            // SAFETY: every pointer addresses a live, pinned buffer of the described size.
            check(
                dnn::cudnnConvolutionForward(
                    h,
                    scale(&ONE),
                    plan.x,
                    xp,
                    plan.w,
                    wp,
                    plan.conv,
                    forward_algo,
                    wsp,
                    plan.workspace,
                    scale(&ZERO),
                    plan.y,
                    yp,
                ),
                "cudnnConvolutionForward",
            )
        })?;
        Ok(y)
    }

    /// The gradient for `x` (the forward's input, for its shape and type) from `dy`.
    pub(super) fn conv_input_grad(
        &mut self,
        x: &CubeTensor,
        weight: CubeTensor,
        dy: CubeTensor,
        g: Geometry,
    ) -> Result<CubeTensor, CudnnError> {
        if !self.conv.has(Pass::InputGrad, g) {
            self.drain(&x.client)?;
        }
        let plan = self.conv.plan(self.handle, Pass::InputGrad, g)?;
        let data_algo = plan.algo.input_grad()?;
        let w = filter(weight, g.dtype);
        let dy = channels_last(cast(dy, g.dtype));
        let dx = empty_channels_last(x, dims4(x), g.dtype);
        let ws = workspace(x, plan.workspace);
        let mut p = Pointers::new(&x.client);
        let (wp, dyp, dxp) = (p.of(&w)?, p.of(&dy)?, p.of(&dx)?);
        let wsp = p.address(&ws)? as *mut c_void;
        self.ordered(&x.client, &p, |h| unsafe {
            // SAFETY: as in `conv_forward`.
            check(
                dnn::cudnnConvolutionBackwardData(
                    h,
                    scale(&ONE),
                    plan.w,
                    wp,
                    plan.y,
                    dyp,
                    plan.conv,
                    data_algo,
                    wsp,
                    plan.workspace,
                    scale(&ZERO),
                    plan.x,
                    dxp,
                ),
                "cudnnConvolutionBackwardData",
            )
        })?;
        Ok(dx)
    }

    /// The gradient for `weight` (for its shape and type) from `x` and `dy`.
    pub(super) fn conv_weight_grad(
        &mut self,
        x: CubeTensor,
        weight: &CubeTensor,
        dy: CubeTensor,
        g: Geometry,
    ) -> Result<CubeTensor, CudnnError> {
        if !self.conv.has(Pass::WeightGrad, g) {
            self.drain(&x.client)?;
        }
        let plan = self.conv.plan(self.handle, Pass::WeightGrad, g)?;
        let filter_algo = plan.algo.weight_grad()?;
        let x = channels_last(cast(x, g.dtype));
        let dy = channels_last(cast(dy, g.dtype));
        // KRSC: [k, r, r, c] contiguous, handed back viewed as [k, c, r, r].
        let krsc = super::empty(&x, burn::tensor::Shape::new([g.k, g.r, g.r, g.c]), g.dtype);
        let ws = workspace(&x, plan.workspace);
        let mut p = Pointers::new(&x.client);
        let (xp, dyp, dwp) = (p.of(&x)?, p.of(&dy)?, p.of(&krsc)?);
        let wsp = p.address(&ws)? as *mut c_void;
        self.ordered(&x.client, &p, |h| unsafe {
            // SAFETY: as in `conv_forward`.
            check(
                dnn::cudnnConvolutionBackwardFilter(
                    h,
                    scale(&ONE),
                    plan.x,
                    xp,
                    plan.y,
                    dyp,
                    plan.conv,
                    filter_algo,
                    wsp,
                    plan.workspace,
                    scale(&ZERO),
                    plan.w,
                    dwp,
                ),
                "cudnnConvolutionBackwardFilter",
            )
        })?;
        Ok(cast(permuted(krsc, [0, 3, 1, 2]), weight.dtype))
    }
}
