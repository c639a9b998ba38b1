//! The tensor vocabulary of recipes, with shapes checked before Burn runs.
//!
//! Logical dims count from the left of the logical shape; negative dims count from the right
//! (`-1` is the last), as in PyTorch. Reductions over one dim drop it unless `keepdim`.

use burn::tensor::{Device, Int, Tensor, activation};

use super::{DynTensor, MAX_RANK, Values, check_shape, host_copy, padded};
use crate::error::{Error, Result};

/// Elementwise binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

impl BinaryOp {
    fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }
}

/// The broadcast result of two logical shapes, NumPy rules (align right, 1 stretches).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let (pa, pb) = (padded(a), padded(b));
    let mut out = Vec::with_capacity(rank);
    for i in 4 - rank..4 {
        let (x, y) = (pa[i], pb[i]);
        out.push(match (x, y) {
            _ if x == y => x,
            (1, _) => y,
            (_, 1) => x,
            _ => return None,
        });
    }
    Some(out)
}

impl DynTensor {
    /// Maps a logical dim (negative counts from the end) to the stored rank-4 dim.
    pub fn physical_dim(&self, dim: i64, op: &str) -> Result<usize> {
        let rank = self.rank as i64;
        let d = if dim < 0 { dim + rank } else { dim };
        if !(0..rank).contains(&d) {
            return Err(Error::Shape(format!(
                "{op}: dim {dim} is out of range for a rank-{rank} tensor of shape {:?}",
                self.shape()
            )));
        }
        Ok((d + 4 - rank) as usize)
    }

    fn with_float(&self, t: Tensor<4>) -> Self {
        DynTensor::from_float4(t, self.rank)
    }

    /// `a op b` with broadcasting; int op int stays int except for division.
    pub fn binary(&self, other: &DynTensor, op: BinaryOp) -> Result<Self> {
        let shape = broadcast_shape(&self.shape(), &other.shape()).ok_or_else(|| {
            Error::Shape(format!(
                "cannot broadcast shapes {:?} and {:?} for `{}`",
                self.shape(),
                other.shape(),
                op.symbol()
            ))
        })?;
        crate::budget::elements(&shape, op.symbol())?;
        let rank = shape.len();
        if let (Values::Int(a), Values::Int(b)) = (&self.values, &other.values)
            && op != BinaryOp::Div
        {
            let (a, b) = (a.clone(), b.clone());
            let out = match op {
                BinaryOp::Add => a.add(b),
                BinaryOp::Sub => a.sub(b),
                _ => a.mul(b),
            };
            return Ok(DynTensor::from_int4(out, rank));
        }
        let (a, b) = (self.promoted4(), other.promoted4());
        let out = match op {
            BinaryOp::Add => a.add(b),
            BinaryOp::Sub => a.sub(b),
            BinaryOp::Mul => a.mul(b),
            BinaryOp::Div => a.div(b),
        };
        Ok(DynTensor::from_float4(out, rank))
    }

    /// `a op s` for a number `s` (or `s op a` when `scalar_first`).
    pub fn binary_scalar(&self, s: f64, op: BinaryOp, scalar_first: bool) -> Result<Self> {
        let a = self.promoted4();
        let out = match (op, scalar_first) {
            (BinaryOp::Add, _) => a.add_scalar(s),
            (BinaryOp::Mul, _) => a.mul_scalar(s),
            (BinaryOp::Sub, false) => a.sub_scalar(s),
            (BinaryOp::Sub, true) => a.neg().add_scalar(s),
            (BinaryOp::Div, false) => a.div_scalar(s),
            (BinaryOp::Div, true) => a.recip().mul_scalar(s),
        };
        Ok(self.with_float(out))
    }

    /// [`binary_scalar`](Self::binary_scalar) with the number `s` given as a one-element
    /// float tensor: the same values, from a number the device reads rather than one baked
    /// into the kernel (a recorded graph's launches then read each step's).
    pub fn binary_number(&self, s: &DynTensor, op: BinaryOp, scalar_first: bool) -> Result<Self> {
        if s.numel() != 1 {
            return Err(Error::Shape(format!(
                "a number as a tensor has one element, got shape {:?}",
                s.shape()
            )));
        }
        let a = self.promoted4();
        let s = s.promoted4().cast(a.dtype());
        let out = match (op, scalar_first) {
            (BinaryOp::Add, _) => a.add(s),
            (BinaryOp::Mul, _) => a.mul(s),
            (BinaryOp::Sub, false) => a.sub(s),
            (BinaryOp::Sub, true) => a.neg().add(s),
            (BinaryOp::Div, false) => a.div(s),
            (BinaryOp::Div, true) => a.recip().mul(s),
        };
        Ok(self.with_float(out))
    }

    /// `-a`.
    pub fn neg(&self) -> Result<Self> {
        match &self.values {
            Values::Int(t) => Ok(DynTensor::from_int4(t.clone().neg(), self.rank)),
            Values::Float(t) => Ok(self.with_float(t.clone().neg())),
        }
    }

    /// Applies an elementwise float function (`exp`, `log`, ...).
    pub fn unary(&self, op: &str, f: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Result<Self> {
        Ok(self.with_float(f(self.float4(op)?)))
    }

    /// `a ** p` elementwise.
    pub fn pow(&self, p: f64) -> Result<Self> {
        self.unary("pow", |t| t.powf_scalar(p))
    }

    /// Matrix product over the last two dims, batch dims broadcast.
    pub fn matmul(&self, other: &DynTensor) -> Result<Self> {
        let (sa, sb) = (self.shape(), other.shape());
        if sa.len() < 2 || sb.len() < 2 {
            return Err(Error::Shape(format!(
                "matmul needs tensors of rank 2 or more, got shapes {sa:?} and {sb:?}"
            )));
        }
        let (m, k1) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k1 != k2 {
            return Err(Error::Shape(format!(
                "matmul: inner dimensions differ: {sa:?} @ {sb:?} ({k1} != {k2})"
            )));
        }
        let batch = broadcast_shape(&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let batch = match (sa.len(), sb.len()) {
            (2, 2) => Some(vec![]),
            (2, _) => Some(sb[..sb.len() - 2].to_vec()),
            (_, 2) => Some(sa[..sa.len() - 2].to_vec()),
            _ => batch,
        }
        .ok_or_else(|| {
            Error::Shape(format!(
                "matmul: batch dimensions of {sa:?} and {sb:?} do not broadcast"
            ))
        })?;
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        crate::budget::elements(&out_shape, "matmul output")?;
        let expand = |t: Tensor<4>, rows: usize, cols: usize| {
            let mut s = batch.clone();
            s.extend([rows, cols]);
            t.expand(padded(&s))
        };
        let a = expand(self.float4("matmul")?, m, k1);
        let b = expand(other.float4("matmul")?, k2, n);
        Ok(DynTensor::from_float4(a.matmul(b), out_shape.len()))
    }

    /// Swaps two dims.
    pub fn swap_dims(&self, d1: i64, d2: i64) -> Result<Self> {
        let (p1, p2) = (
            self.physical_dim(d1, "transpose")?,
            self.physical_dim(d2, "transpose")?,
        );
        Ok(match &self.values {
            Values::Float(t) => self.with_float(t.clone().swap_dims(p1, p2)),
            Values::Int(t) => DynTensor::from_int4(t.clone().swap_dims(p1, p2), self.rank),
        })
    }

    /// Swaps the last two dims (`t()`); a rank-1 tensor is returned unchanged.
    pub fn t(&self) -> Result<Self> {
        if self.rank < 2 {
            return Ok(self.clone());
        }
        self.swap_dims(-2, -1)
    }

    /// A new shape with the same elements; one entry may be -1.
    pub fn reshape(&self, shape: &[i64]) -> Result<Self> {
        let numel = self.numel();
        let known: i64 = shape.iter().filter(|&&d| d != -1).product();
        let inferred = shape.iter().filter(|&&d| d == -1).count();
        if inferred > 1 || shape.iter().any(|&d| d == 0 || d < -1) || known <= 0 {
            return Err(Error::Shape(format!(
                "reshape: invalid target shape {shape:?}"
            )));
        }
        let target: Vec<usize> = shape
            .iter()
            .map(|&d| {
                if d == -1 {
                    numel / known as usize
                } else {
                    d as usize
                }
            })
            .collect();
        check_shape(&target)?;
        if target.iter().product::<usize>() != numel {
            return Err(Error::Shape(format!(
                "reshape: cannot view {:?} ({numel} elements) as {shape:?}",
                self.shape()
            )));
        }
        let p = padded(&target);
        Ok(match &self.values {
            Values::Float(t) => DynTensor::from_float4(t.clone().reshape(p), target.len()),
            Values::Int(t) => DynTensor::from_int4(t.clone().reshape(p), target.len()),
        })
    }

    /// The logical shape after removing dim `p` (physical), or `[1]` if nothing would remain.
    fn shape_without(&self, p: usize) -> Vec<usize> {
        let d = p + self.rank - 4;
        let mut s = self.shape();
        s.remove(d);
        if s.is_empty() { vec![1] } else { s }
    }

    fn reduce_dim(
        &self,
        dim: i64,
        keepdim: bool,
        op: &str,
        f: impl FnOnce(Tensor<4>, usize) -> Tensor<4>,
    ) -> Result<Self> {
        let p = self.physical_dim(dim, op)?;
        let out = f(self.promoted4(), p);
        if keepdim {
            return Ok(self.with_float(out));
        }
        let s = self.shape_without(p);
        Ok(DynTensor::from_float4(out.reshape(padded(&s)), s.len()))
    }

    fn scalar(t: Tensor<1>) -> Self {
        DynTensor::from_float4(t.reshape([1, 1, 1, 1]), 1)
    }

    /// Sum of all elements, shape `[1]`.
    pub fn sum(&self) -> Result<Self> {
        Ok(Self::scalar(self.promoted4().sum()))
    }

    /// Mean of all elements, shape `[1]`.
    pub fn mean(&self) -> Result<Self> {
        Ok(Self::scalar(self.promoted4().mean()))
    }

    /// Sum over one dim.
    pub fn sum_dim(&self, dim: i64, keepdim: bool) -> Result<Self> {
        self.reduce_dim(dim, keepdim, "sum", |t, p| t.sum_dim(p))
    }

    /// Mean over one dim.
    pub fn mean_dim(&self, dim: i64, keepdim: bool) -> Result<Self> {
        self.reduce_dim(dim, keepdim, "mean", |t, p| t.mean_dim(p))
    }

    /// Maximum over one dim.
    pub fn max_dim(&self, dim: i64, keepdim: bool) -> Result<Self> {
        self.reduce_dim(dim, keepdim, "max", |t, p| t.max_dim(p))
    }

    /// The largest of all elements, shape `[1]`.
    pub fn max_all(&self) -> Result<Self> {
        let t = self.float4("max")?;
        Ok(Self::scalar(t.max()))
    }

    /// Euclidean norm of all elements, shape `[1]`.
    pub fn norm(&self) -> Result<Self> {
        let t = self.float4("norm")?;
        Ok(Self::scalar(t.powf_scalar(2.0).sum().sqrt()))
    }

    /// Euclidean norm over one dim.
    pub fn norm_dim(&self, dim: i64, keepdim: bool) -> Result<Self> {
        self.float4("norm")?;
        self.reduce_dim(dim, keepdim, "norm", |t, p| {
            t.powf_scalar(2.0).sum_dim(p).sqrt()
        })
    }

    /// `x / max(||x||, 1e-12)` along `dim`, as `torch.nn.functional.normalize`.
    pub fn normalize(&self, dim: i64) -> Result<Self> {
        let p = self.physical_dim(dim, "normalize")?;
        let t = self.float4("normalize")?;
        let norm = t
            .clone()
            .powf_scalar(2.0)
            .sum_dim(p)
            .sqrt()
            .clamp_min(1e-12);
        Ok(self.with_float(t.div(norm)))
    }

    /// Softmax along `dim`.
    pub fn softmax(&self, dim: i64) -> Result<Self> {
        let p = self.physical_dim(dim, "softmax")?;
        Ok(self.with_float(activation::softmax(self.float4("softmax")?, p)))
    }

    /// Log-softmax along `dim`.
    pub fn log_softmax(&self, dim: i64) -> Result<Self> {
        let p = self.physical_dim(dim, "log_softmax")?;
        Ok(self.with_float(activation::log_softmax(self.float4("log_softmax")?, p)))
    }

    /// Index of the largest value along `dim` (int tensor, dim dropped).
    pub fn argmax(&self, dim: i64) -> Result<Self> {
        let p = self.physical_dim(dim, "argmax")?;
        let size = self.promoted4().dims()[p];
        let out = self.promoted4().argmax(p);
        let s = self.shape_without(p);
        let mut indices = DynTensor::from_int4(out.reshape(padded(&s)), s.len());
        indices.bound = Some(size);
        Ok(indices)
    }

    /// The entries at `indices` (a rank-1 int tensor) along `dim`, in their order (repeats
    /// allowed); gradients flow back to the rows taken. NNCLR's nearest neighbours are
    /// `support.select(0, sim.argmax(1))`.
    pub fn select(&self, dim: i64, indices: &DynTensor) -> Result<Self> {
        let p = self.physical_dim(dim, "select")?;
        if indices.rank() != 1 || !indices.is_int() {
            return Err(Error::Shape(format!(
                "select: indices must be a rank-1 int tensor (use .int()), got a {} tensor of shape {:?}",
                indices.dtype_name(),
                indices.shape()
            )));
        }
        let size = self.promoted4().dims()[p];
        let idx = indices.int4("select")?.reshape([indices.numel()]);
        // Out-of-range indices are an error here, not a panic in the backend: checked against
        // what their making guarantees (an argmax's), or the host's copy, or else read back
        // (a device read, which a step recorded as a graph cannot make).
        let values: Vec<i64> = match (indices.bound, indices.host_values()) {
            (Some(bound), _) if bound <= size => Vec::new(),
            (_, Some(host)) => host.iter().map(|&v| v as i64).collect(),
            _ => crate::tensor::int_values(idx.clone())?,
        };
        if let Some(bad) = values.into_iter().find(|&i| i < 0 || i as usize >= size) {
            return Err(Error::Shape(format!(
                "select: index {bad} is out of range for dim {dim} of size {size} (shape {:?})",
                self.shape()
            )));
        }
        let mut shape = self.shape();
        shape[p + self.rank - 4] = indices.numel();
        if self.is_int() {
            Ok(DynTensor::from_int4(
                self.int4("select")?.select(p, idx),
                self.rank,
            ))
        } else {
            Ok(self.with_float(self.float4("select")?.select(p, idx)))
        }
    }

    /// 1.0 where `a == b`, else 0.0 (float, broadcast).
    pub fn eq(&self, other: &DynTensor) -> Result<Self> {
        let shape = broadcast_shape(&self.shape(), &other.shape()).ok_or_else(|| {
            Error::Shape(format!(
                "eq: cannot broadcast shapes {:?} and {:?}",
                self.shape(),
                other.shape()
            ))
        })?;
        crate::budget::elements(&shape, "eq")?;
        let p = padded(&shape);
        let out = match (&self.values, &other.values) {
            (Values::Int(a), Values::Int(b)) => {
                a.clone().expand(p).equal(b.clone().expand(p)).float()
            }
            _ => self
                .promoted4()
                .expand(p)
                .equal(other.promoted4().expand(p))
                .float(),
        };
        Ok(DynTensor::from_float4(out, shape.len()))
    }

    /// Concatenates tensors of one rank along `dim`.
    pub fn cat(tensors: &[DynTensor], dim: i64) -> Result<Self> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::Invalid("cat needs at least one tensor".into()))?;
        let p = first.physical_dim(dim, "cat")?;
        let s0 = first.shape();
        for t in tensors {
            let s = t.shape();
            let same = s.len() == s0.len()
                && s.iter()
                    .zip(&s0)
                    .enumerate()
                    .all(|(i, (a, b))| i + 4 - s0.len() == p || a == b);
            if !same {
                return Err(Error::Shape(format!(
                    "cat along dim {dim}: shapes {s0:?} and {s:?} differ outside that dim"
                )));
            }
        }
        // Vectors the host made stay known on the host.
        let host = tensors
            .iter()
            .map(DynTensor::host_values)
            .collect::<Option<Vec<_>>>()
            .and_then(|parts| host_copy(&[parts.iter().map(|v| v.len()).sum()], || parts.concat()));
        if tensors.iter().all(DynTensor::is_int) {
            let parts = tensors
                .iter()
                .map(|t| t.int4("cat"))
                .collect::<Result<_>>()?;
            return Ok(DynTensor::from_int4(Tensor::cat(parts, p), first.rank).with_host(host));
        }
        let parts = tensors.iter().map(DynTensor::promoted4).collect();
        Ok(DynTensor::from_float4(Tensor::cat(parts, p), first.rank).with_host(host))
    }

    /// Stacks tensors of one shape along a new dim `dim` (0..=rank).
    pub fn stack(tensors: &[DynTensor], dim: i64) -> Result<Self> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::Invalid("stack needs at least one tensor".into()))?;
        let s0 = first.shape();
        if s0.len() >= MAX_RANK {
            return Err(Error::Shape(format!(
                "stack would make a rank-{} tensor; the limit is {MAX_RANK}",
                s0.len() + 1
            )));
        }
        if let Some(t) = tensors.iter().find(|t| t.shape() != s0) {
            return Err(Error::Shape(format!(
                "stack needs equal shapes, got {s0:?} and {:?}",
                t.shape()
            )));
        }
        let rank = s0.len() as i64 + 1;
        let d = if dim < 0 { dim + rank } else { dim };
        if !(0..rank).contains(&d) {
            return Err(Error::Shape(format!(
                "stack: dim {dim} is out of range for the result's rank {rank}"
            )));
        }
        let mut s = s0.clone();
        s.insert(d as usize, 1);
        let parts: Vec<DynTensor> = tensors
            .iter()
            .map(|t| t.reshape(&s.iter().map(|&x| x as i64).collect::<Vec<_>>()))
            .collect::<Result<_>>()?;
        Self::cat(&parts, d)
    }

    /// Elements `start..end` along `dim` (negative indices count from the end).
    pub fn slice(&self, dim: i64, start: i64, end: i64) -> Result<Self> {
        let p = self.physical_dim(dim, "slice")?;
        let len = self.dims4()[p] as i64;
        let fix = |i: i64| if i < 0 { i + len } else { i };
        let (s, e) = (fix(start), fix(end).min(len));
        if s < 0 || s >= e {
            return Err(Error::Shape(format!(
                "slice({dim}, {start}, {end}) is empty or out of range for size {len}"
            )));
        }
        let (s, n) = (s as usize, (e - s) as usize);
        Ok(match &self.values {
            Values::Float(t) => self.with_float(t.clone().narrow(p, s, n)),
            Values::Int(t) => DynTensor::from_int4(t.clone().narrow(p, s, n), self.rank),
        })
    }

    /// The diagonal of a matrix (rank 2 -> rank 1) or a diagonal matrix from a vector.
    pub fn diag(&self) -> Result<Self> {
        let device = self.device();
        let t = self.float4("diag")?;
        match self.shape().as_slice() {
            [n] => {
                let eye = Tensor::<2>::eye(*n, &device).reshape([1, 1, *n, *n]);
                Ok(DynTensor::from_float4(eye.mul(t.swap_dims(2, 3)), 2))
            }
            [r, c] => {
                let n = (*r).min(*c);
                let square = t.narrow(2, 0, n).narrow(3, 0, n);
                let eye = Tensor::<2>::eye(n, &device).reshape([1, 1, n, n]);
                let d = square.mul(eye).sum_dim(3).reshape([1, 1, 1, n]);
                Ok(DynTensor::from_float4(d, 1))
            }
            s => Err(Error::Shape(format!(
                "diag needs a rank-1 or rank-2 tensor, got shape {s:?}"
            ))),
        }
    }

    /// A float copy (ints converted).
    pub fn to_float(&self) -> Self {
        self.with_float(self.promoted4())
    }

    /// An int copy; floats are truncated toward zero.
    pub fn to_int(&self) -> Self {
        match &self.values {
            Values::Int(_) => self.clone(),
            Values::Float(t) => DynTensor::from_int4(t.clone().detach().int(), self.rank),
        }
    }

    /// One-hot float rows `[.., num_classes]` from integer labels: an int tensor, or a float
    /// tensor of whole numbers. Reads the labels once to check them.
    pub fn one_hot(&self, num_classes: usize) -> Result<Self> {
        if self.rank >= MAX_RANK {
            return Err(Error::Shape(
                "one_hot of a rank-4 tensor would be rank 5".into(),
            ));
        }
        self.check_class_labels(num_classes, "one_hot")?;
        let labels = self.to_int().int4("one_hot")?;
        let flat: Tensor<1, Int> = labels.reshape([self.numel()]);
        let hot: Tensor<2> = flat.one_hot::<2>(num_classes).float();
        let mut s = self.shape();
        s.push(num_classes);
        Ok(DynTensor::from_float4(hot.reshape(padded(&s)), s.len()))
    }

    /// Checks that the values are class indices in `0..classes` (reads the device unless the
    /// host made them): an error names `op` when one is not a whole number or is out of range.
    fn check_class_labels(&self, classes: usize, op: &str) -> Result<()> {
        let v = self.to_f64_vec()?;
        if let Some(x) = v.iter().find(|x| x.fract() != 0.0 || !x.is_finite()) {
            return Err(Error::Dtype(format!(
                "{op}: labels must be whole numbers, found {x}"
            )));
        }
        if let Some(x) = v.iter().find(|&&x| x < 0.0 || x >= classes as f64) {
            return Err(Error::Invalid(format!(
                "{op}: label {x} is outside 0..{classes}"
            )));
        }
        Ok(())
    }

    /// Cross-entropy of each row of `logits` `[N, C]` against its label (`labels` `[N]`,
    /// whole numbers in `0..C`): `logsumexp(row) − row[label]`, `[N]`.
    pub fn cross_entropy_per_row(&self, labels: &DynTensor) -> Result<Self> {
        let shape = self.shape();
        let &[rows, classes] = shape.as_slice() else {
            return Err(Error::Shape(format!(
                "cross_entropy: logits must be [N, C], got {shape:?}"
            )));
        };
        if labels.shape() != [rows] {
            return Err(Error::Shape(format!(
                "cross_entropy: {rows} rows of logits need labels of shape [{rows}], got {:?}",
                labels.shape()
            )));
        }
        // Checked here; the kernel takes the labels' device values (no upload a recorded
        // graph would keep).
        labels.check_class_labels(classes, "cross_entropy")?;
        let targets: Tensor<1, Int> = labels.to_int().int4("cross_entropy")?.reshape([rows]);
        let logits: Tensor<2> = self.float4("cross_entropy")?.reshape([rows, classes]);
        let losses = crate::kernels::cross_entropy(logits, targets);
        Ok(DynTensor::from_float4(losses.reshape([1, 1, 1, rows]), 1))
    }

    /// The same values, cut from the autodiff graph.
    pub fn detach(&self) -> Self {
        match &self.values {
            Values::Float(t) => self.with_float(t.clone().detach()),
            Values::Int(_) => self.clone(),
        }
    }

    /// Marks a float leaf as requiring gradients.
    pub fn require_grad(&self) -> Result<Self> {
        Ok(self.with_float(self.float4("require_grad")?.require_grad()))
    }

    /// The same values outside autodiff: ops on them build no graph.
    pub fn without_autodiff(&self) -> Self {
        match &self.values {
            Values::Float(t) => self.with_float(t.clone().inner()),
            Values::Int(t) => DynTensor::from_int4(t.clone().inner(), self.rank),
        }
    }

    /// Moves the tensor to another device.
    pub fn to_device(&self, device: &Device) -> Self {
        match &self.values {
            Values::Float(t) => self.with_float(t.clone().to_device(device)),
            Values::Int(t) => DynTensor::from_int4(t.clone().to_device(device), self.rank),
        }
    }

    /// Writes `src`'s values over this tensor's, in its buffer where the backend can (cubecl:
    /// a replayed graph reads them there; burn-flex keeps buffers to their first owner, and
    /// nothing is written). Shapes and element types must match; this tensor must be
    /// contiguous, as a tensor a step makes from scratch is.
    pub fn write_values(&self, src: &DynTensor) -> Result<()> {
        if self.shape() != src.shape() || self.is_int() != src.is_int() {
            return Err(Error::Shape(format!(
                "write_values: a {} tensor of shape {:?} written over a {} one of shape {:?}",
                src.dtype_name(),
                src.shape(),
                self.dtype_name(),
                self.shape()
            )));
        }
        let n = self.numel();
        match (&self.values, &src.values) {
            (Values::Float(dst), Values::Float(from)) => {
                crate::kernels::views::write_into(
                    &dst.clone().reshape([n]),
                    from.clone().reshape([n]),
                );
            }
            (Values::Int(dst), Values::Int(from)) => {
                crate::kernels::views::write_into_int(
                    &dst.clone().reshape([n]),
                    from.clone().reshape([n]),
                );
            }
            _ => unreachable!("element types checked above"),
        }
        Ok(())
    }

    /// True if every element is finite. Reads the device.
    pub fn all_finite(&self) -> Result<bool> {
        match &self.values {
            Values::Int(_) => Ok(true),
            Values::Float(t) => {
                super::note_device_read();
                Ok(t.clone().is_finite().all().into_scalar::<bool>())
            }
        }
    }
}

/// Creation functions.
impl DynTensor {
    /// Zeros of a shape.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Self> {
        check_shape(shape)?;
        let host = host_copy(shape, || vec![0.0; shape[0]]);
        Ok(
            DynTensor::from_float4(Tensor::zeros(padded(shape), device), shape.len())
                .with_host(host),
        )
    }

    /// Ones of a shape.
    pub fn ones(shape: &[usize], device: &Device) -> Result<Self> {
        check_shape(shape)?;
        let host = host_copy(shape, || vec![1.0; shape[0]]);
        Ok(
            DynTensor::from_float4(Tensor::ones(padded(shape), device), shape.len())
                .with_host(host),
        )
    }

    /// The identity matrix.
    pub fn eye(n: usize, device: &Device) -> Result<Self> {
        check_shape(&[n, n])?;
        Ok(DynTensor::from_float(Tensor::<2>::eye(n, device)))
    }

    /// Integers `start..end` (int tensor).
    pub fn arange(start: i64, end: i64, device: &Device) -> Result<Self> {
        if end <= start {
            return Err(Error::Invalid(format!(
                "arange({start}, {end}) is empty: end must be greater than start"
            )));
        }
        let host = host_copy(&[(end - start) as usize], || {
            (start..end).map(|v| v as f64).collect()
        });
        Ok(DynTensor::from_int(Tensor::<1, Int>::arange(start..end, device)).with_host(host))
    }
}
