//! Training batch norm in cuDNN (`cudnnBatchNormalization{ForwardTraining,Backward}Ex`,
//! spatial-persistent mode, channels last), with the ReLU or residual-add-and-ReLU tail fused
//! into the same kernels.
//!
//! The fused forms keep a "reserve space" from the forward for the backward (where the ReLU
//! passed). The extension's tensors cannot carry it, so it is kept here by the address of the
//! forward's output, which the backward receives: an output lives until its backward has run,
//! so its address names one forward. A forward whose backward never comes (a target network's)
//! leaves its reserve until another output takes the address or the table is cleared at
//! [`RESERVES_KEPT`] entries; a backward that finds no reserve computes its gradients with the
//! reference ops instead.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::null_mut;

use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::tensor::CubeTensor;
use cudarc::cudnn::sys as dnn;

use super::{
    Cudnn, CudnnError, ONE, Pointers, ZERO, cast, channels_last, check, contiguous, data_type,
    dims4, empty, empty_channels_last, nhwc_strides, scale, workspace,
};
use crate::kernels::gpu_kernels::reference;

/// Reserves kept before the table is cleared.
const RESERVES_KEPT: usize = 4096;

/// cuDNN's smallest epsilon (`CUDNN_BN_MIN_EPSILON`).
const MIN_EPSILON: f64 = 1e-5;

const MODE: dnn::cudnnBatchNormMode_t =
    dnn::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL_PERSISTENT;

/// What follows the normalisation in the same kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tail {
    /// Nothing.
    None,
    /// ReLU.
    Relu,
    /// The residual added, then ReLU.
    AddRelu,
}

impl Tail {
    /// The tail of a batch norm followed by a ReLU or not, with a residual added or not.
    pub fn of(relu: bool, add: bool) -> Self {
        match (relu, add) {
            (_, true) => Tail::AddRelu,
            (true, false) => Tail::Relu,
            (false, false) => Tail::None,
        }
    }

    fn ops(self) -> dnn::cudnnBatchNormOps_t {
        match self {
            Tail::None => dnn::cudnnBatchNormOps_t::CUDNN_BATCHNORM_OPS_BN,
            Tail::Relu => dnn::cudnnBatchNormOps_t::CUDNN_BATCHNORM_OPS_BN_ACTIVATION,
            Tail::AddRelu => dnn::cudnnBatchNormOps_t::CUDNN_BATCHNORM_OPS_BN_ADD_ACTIVATION,
        }
    }
}

/// The name cuDNN's refusals are remembered by: the tail, the shape and the type.
pub fn key(x: &CubeTensor, tail: Tail) -> String {
    format!("batch norm {tail:?} {:?} {:?}", x.shape(), x.dtype)
}

/// What a batch norm's backward is given besides `x`, `y` and `dy`.
pub struct Saved {
    /// `[C]`, f32.
    pub gamma: CubeTensor,
    /// `[C]`, f32.
    pub beta: CubeTensor,
    /// The batch mean `[C]`, f32.
    pub mean: CubeTensor,
    /// `1/sqrt(var + ε)` `[C]`, f32.
    pub inv_std: CubeTensor,
    /// ε.
    pub epsilon: f64,
}

impl Saved {
    /// The gradients by the reference ops: (dx, dz, dgamma, dbeta).
    pub fn reference(
        &self,
        x: CubeTensor,
        y: CubeTensor,
        dy: CubeTensor,
        relu: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor) {
        reference::batch_norm_backward::<CubeBackend>(
            x,
            y,
            dy,
            self.gamma.clone(),
            self.mean.clone(),
            self.inv_std.clone(),
            relu,
        )
    }
}

/// Descriptors per shape and type, the ReLU, and the forwards' reserves.
#[derive(Default)]
pub struct Plans {
    /// The activations' and the `[C]` vectors' descriptors.
    descs:
        HashMap<([usize; 4], DType), (dnn::cudnnTensorDescriptor_t, dnn::cudnnTensorDescriptor_t)>,
    relu: Option<dnn::cudnnActivationDescriptor_t>,
    /// By the forward output's address: the reserve and its size.
    reserves: HashMap<u64, (Handle, usize)>,
}

impl Plans {
    fn descs(
        &mut self,
        dims: [usize; 4],
        dtype: DType,
    ) -> Result<(dnn::cudnnTensorDescriptor_t, dnn::cudnnTensorDescriptor_t), CudnnError> {
        if let Some(d) = self.descs.get(&(dims, dtype)) {
            return Ok(*d);
        }
        let data =
            data_type(dtype).ok_or_else(|| CudnnError(format!("no cuDNN type for {dtype:?}")))?;
        let x = cudarc::cudnn::result::create_tensor_descriptor()?;
        let bn = cudarc::cudnn::result::create_tensor_descriptor()?;
        let [n, c, h, w] = dims.map(|d| d as i32);
        let [sn, sc, sh, sw] = nhwc_strides(dims).map(|d| d as i32);
        // SAFETY: live descriptors, positive sizes.
        unsafe {
            check(
                dnn::cudnnSetTensor4dDescriptorEx(x, data, n, c, h, w, sn, sc, sh, sw),
                "cudnnSetTensor4dDescriptorEx",
            )?;
            check(
                dnn::cudnnSetTensor4dDescriptor(
                    bn,
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    1,
                    c,
                    1,
                    1,
                ),
                "cudnnSetTensor4dDescriptor",
            )?;
        }
        self.descs.insert((dims, dtype), (x, bn));
        Ok((x, bn))
    }

    /// The ReLU's descriptor, for the fused tails (null for none).
    fn activation(&mut self, tail: Tail) -> Result<dnn::cudnnActivationDescriptor_t, CudnnError> {
        if tail == Tail::None {
            return Ok(null_mut());
        }
        if let Some(a) = self.relu {
            return Ok(a);
        }
        let a = cudarc::cudnn::result::create_activation_descriptor()?;
        // SAFETY: a live descriptor.
        unsafe {
            check(
                dnn::cudnnSetActivationDescriptor(
                    a,
                    dnn::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                    dnn::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                    0.0,
                ),
                "cudnnSetActivationDescriptor",
            )?;
        }
        self.relu = Some(a);
        Ok(a)
    }
}

/// A `[C]` f32 vector, contiguous.
fn vector(t: CubeTensor) -> CubeTensor {
    contiguous(cast(t, DType::F32))
}

impl Cudnn {
    /// The forward: (y in `x`'s type, mean, inv_std). `z` is the residual of an add tail.
    pub(super) fn norm_forward(
        &mut self,
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        z: Option<CubeTensor>,
        tail: Tail,
        epsilon: f64,
    ) -> Result<(CubeTensor, CubeTensor, CubeTensor), CudnnError> {
        if x.shape().num_dims() != 4 || epsilon < MIN_EPSILON {
            return Err(CudnnError("not a 4-D input with ε ≥ 1e-5".into()));
        }
        let (dims, dtype) = (dims4(&x), x.dtype);
        let (desc, bn) = self.norm.descs(dims, dtype)?;
        let act = self.norm.activation(tail)?;
        let ops = tail.ops();
        let z_desc = if z.is_some() { desc } else { null_mut() };
        let (mut ws_size, mut reserve_size) = (0usize, 0usize);
        // SAFETY: live descriptors; cuDNN writes the two sizes.
        unsafe {
            check(
                dnn::cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
                    self.handle,
                    MODE,
                    ops,
                    desc,
                    z_desc,
                    desc,
                    bn,
                    act,
                    &mut ws_size,
                ),
                "cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize",
            )?;
            check(
                dnn::cudnnGetBatchNormalizationTrainingExReserveSpaceSize(
                    self.handle,
                    MODE,
                    ops,
                    act,
                    desc,
                    &mut reserve_size,
                ),
                "cudnnGetBatchNormalizationTrainingExReserveSpaceSize",
            )?;
        }
        let x = channels_last(x);
        let z = z.map(|z| channels_last(cast(z, dtype)));
        let (gamma, beta) = (vector(gamma), vector(beta));
        let y = empty_channels_last(&x, dims, dtype);
        let c = Shape::new([dims[1]]);
        let (mean, inv_std) = (empty(&x, c.clone(), DType::F32), empty(&x, c, DType::F32));
        let ws = workspace(&x, ws_size);
        let reserve = workspace(&x, reserve_size);
        let mut p = Pointers::new(&x.client);
        let (xp, yp, gp, bp) = (p.of(&x)?, p.of(&y)?, p.of(&gamma)?, p.of(&beta)?);
        let (mp, ip) = (p.of(&mean)?, p.of(&inv_std)?);
        let zp = match &z {
            Some(z) => p.of(z)?,
            None => null_mut(),
        };
        let wsp = p.address(&ws)? as *mut c_void;
        let rp = p.address(&reserve)? as *mut c_void;
        self.ordered(&x.client, &p, |h| unsafe {
            // SAFETY: every pointer addresses a live, pinned buffer of the described size; no
            // running averages are asked for (both null).
            check(
                dnn::cudnnBatchNormalizationForwardTrainingEx(
                    h,
                    MODE,
                    ops,
                    scale(&ONE),
                    scale(&ZERO),
                    desc,
                    xp,
                    z_desc,
                    zp,
                    desc,
                    yp,
                    bn,
                    gp,
                    bp,
                    0.0,
                    null_mut(),
                    null_mut(),
                    epsilon,
                    mp,
                    ip,
                    act,
                    wsp,
                    ws_size,
                    rp,
                    reserve_size,
                ),
                "cudnnBatchNormalizationForwardTrainingEx",
            )
        })?;
        if reserve_size > 0 {
            let reserves = &mut self.norm.reserves;
            if reserves.len() >= RESERVES_KEPT {
                reserves.clear();
            }
            reserves.insert(yp as u64, (reserve, reserve_size));
        }
        Ok((y, mean, inv_std))
    }

    /// The backward: (dx, dz for an add tail, dgamma, dbeta).
    pub(super) fn norm_backward(
        &mut self,
        x: &CubeTensor,
        y: &CubeTensor,
        dy: CubeTensor,
        saved: &Saved,
        tail: Tail,
    ) -> Result<(CubeTensor, Option<CubeTensor>, CubeTensor, CubeTensor), CudnnError> {
        if x.shape().num_dims() != 4 || saved.epsilon < MIN_EPSILON {
            return Err(CudnnError("not a 4-D input with ε ≥ 1e-5".into()));
        }
        let (dims, dtype) = (dims4(x), x.dtype);
        let y = channels_last(y.clone());
        let mut p = Pointers::new(&x.client);
        let yp = p.of(&y)?;
        let (reserve, reserve_size) = match self.norm.reserves.remove(&(yp as u64)) {
            Some((handle, size)) => (Some(handle), size),
            None => (None, 0),
        };
        if tail != Tail::None && reserve.is_none() {
            // The forward's reserve is gone: the reference ops, from the same saved values.
            let relu = tail != Tail::None;
            let (dx, dz, dg, db) = saved.reference(x.clone(), y, dy, relu);
            return Ok((dx, (tail == Tail::AddRelu).then_some(dz), dg, db));
        }
        let (desc, bn) = self.norm.descs(dims, dtype)?;
        let act = self.norm.activation(tail)?;
        let ops = tail.ops();
        let add = tail == Tail::AddRelu;
        let dz_desc = if add { desc } else { null_mut() };
        let mut ws_size = 0usize;
        // SAFETY: live descriptors; cuDNN writes the size.
        unsafe {
            check(
                dnn::cudnnGetBatchNormalizationBackwardExWorkspaceSize(
                    self.handle,
                    MODE,
                    ops,
                    desc,
                    desc,
                    desc,
                    dz_desc,
                    desc,
                    bn,
                    act,
                    &mut ws_size,
                ),
                "cudnnGetBatchNormalizationBackwardExWorkspaceSize",
            )?;
        }
        let x = channels_last(x.clone());
        let dy = channels_last(cast(dy, dtype));
        let dx = empty_channels_last(&x, dims, dtype);
        let dz = add.then(|| empty_channels_last(&x, dims, dtype));
        let c = Shape::new([dims[1]]);
        let (dgamma, dbeta) = (empty(&x, c.clone(), DType::F32), empty(&x, c, DType::F32));
        let (gamma, beta) = (vector(saved.gamma.clone()), vector(saved.beta.clone()));
        let (mean, inv_std) = (vector(saved.mean.clone()), vector(saved.inv_std.clone()));
        let ws = workspace(&x, ws_size);
        let (xp, dyp, dxp) = (p.of(&x)?, p.of(&dy)?, p.of(&dx)?);
        let (gp, bp, dgp, dbp) = (p.of(&gamma)?, p.of(&beta)?, p.of(&dgamma)?, p.of(&dbeta)?);
        let (mp, ip) = (p.of(&mean)?, p.of(&inv_std)?);
        let dzp = match &dz {
            Some(dz) => p.of(dz)?,
            None => null_mut(),
        };
        let wsp = p.address(&ws)? as *mut c_void;
        let rp = match &reserve {
            Some(r) => p.address(r)? as *mut c_void,
            None => null_mut(),
        };
        let epsilon = saved.epsilon;
        self.ordered(&x.client, &p, |h| unsafe {
            // SAFETY: as in `norm_forward`; the reserve is the forward's.
            check(
                dnn::cudnnBatchNormalizationBackwardEx(
                    h,
                    MODE,
                    ops,
                    scale(&ONE),
                    scale(&ZERO),
                    scale(&ONE),
                    scale(&ZERO),
                    desc,
                    xp,
                    desc,
                    yp,
                    desc,
                    dyp,
                    dz_desc,
                    dzp,
                    desc,
                    dxp,
                    bn,
                    gp,
                    bp,
                    dgp,
                    dbp,
                    epsilon,
                    mp,
                    ip,
                    act,
                    wsp,
                    ws_size,
                    rp,
                    reserve_size,
                ),
                "cudnnBatchNormalizationBackwardEx",
            )
        })?;
        Ok((dx, dz, dgamma, dbeta))
    }
}
