//! A parameter's view of its network's vector (`models::flat`) that costs no copy on any
//! backend, and a write of new values into the vector that its views then read.
//!
//! burn's `slice` on the cubecl backend returns a view only when both ends of the slice fall
//! on the allocator's alignment (512 bytes on CUDA) and copies otherwise, so most parameters'
//! slices of a vector would be copies, a kernel launch each, every step. A parameter starts on
//! an aligned row of its vector; the view made here keeps the rest of the vector's buffer past
//! the parameter's end (so both ends of its buffer are aligned) and says the parameter's own
//! shape in its metadata, as any view does.
//!
//! A captured step (`train::capture`) replays against the buffers it was recorded with, so its
//! update must land in the vector's own buffer: [`write_into`] does that on the cubecl backend,
//! where burn's ops write in place only into a buffer nothing else holds (and the views hold
//! the vector's). For the same reason what the host changes every step (a batch, a learning
//! rate) reaches the kernels as a [`DeviceInput`] or [`DeviceScalar`], written into its buffer
//! before the step.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::{Device, Int, Shape, Tensor, TensorData};

use crate::error::{Error, Result};

/// Views of a contiguous vector.
#[backend_extension(
    Flex,
    Cube: cfg(any(feature = "cuda", feature = "cubecl-cpu")),
    Fusion: cfg(any(feature = "cuda", feature = "cubecl-cpu"))
)]
pub trait FlatViews: Backend {
    /// The values of `flat` (`[n]`, contiguous) from `offset`, as a tensor of `shape` over the
    /// same memory.
    #[fusion(meta = super::views::view_spec)]
    fn flat_view(flat: FloatTensor<Self>, offset: usize, shape: Vec<usize>) -> FloatTensor<Self> {
        sliced::<Self>(flat, offset, shape)
    }

    /// `src`'s values (`[n]`, like `dst`) written over `dst`'s, in `dst`'s buffer where the
    /// backend can (its views see them); the tensor holding the values.
    #[fusion(dtype = dst, shape = dst)]
    fn flat_write_into(dst: FloatTensor<Self>, src: FloatTensor<Self>) -> FloatTensor<Self> {
        let _ = dst;
        src
    }

    /// [`flat_write_into`](FlatViews::flat_write_into) for integers (labels a replayed step
    /// reads from where the recording read them).
    #[fusion(dtype = dst, shape = dst)]
    fn flat_write_into_int(dst: IntTensor<Self>, src: IntTensor<Self>) -> IntTensor<Self> {
        let _ = dst;
        src
    }
}

/// The view as burn's own slice and reshape.
fn sliced<B: Backend>(flat: FloatTensor<B>, offset: usize, shape: Vec<usize>) -> FloatTensor<B> {
    let len: usize = shape.iter().product();
    let slice = B::float_slice(flat, &[burn::tensor::Slice::from(offset..offset + len)]);
    B::float_reshape(slice, Shape::from(shape))
}

/// burn-flex shares storage copy-on-write: a write through one holder of a buffer cannot
/// reach the others, so the result is `src` and callers take views of it afresh.
impl FlatViews for Flex {}

#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
impl FlatViews for burn_cubecl::CubeBackend {
    fn flat_view(flat: FloatTensor<Self>, offset: usize, shape: Vec<usize>) -> FloatTensor<Self> {
        use burn::backend::TensorMetadata;
        let start = (offset * flat.dtype.size()) as u64;
        let alignment = flat.client.properties().memory.alignment;
        if flat.shape().num_dims() != 1 || !flat.is_contiguous() || !start.is_multiple_of(alignment)
        {
            return sliced::<Self>(flat, offset, shape);
        }
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        let meta = burn_cubecl::cubecl::zspace::metadata::Metadata::new(shape, strides);
        let handle = flat.handle.clone().offset_start(start);
        burn_cubecl::tensor::CubeTensor::new(
            flat.client.clone(),
            handle,
            meta,
            flat.device.clone(),
            flat.dtype,
        )
    }

    fn flat_write_into(dst: FloatTensor<Self>, src: FloatTensor<Self>) -> FloatTensor<Self> {
        copy::into(dst, src)
    }

    fn flat_write_into_int(dst: IntTensor<Self>, src: IntTensor<Self>) -> IntTensor<Self> {
        copy::into(dst, src)
    }
}

#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
pub(crate) mod copy {
    use burn::backend::TensorMetadata;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;
    use burn_cubecl::tensor::CubeTensor;

    /// `to[i] = from[i]` for every `i` in both: 32-bit words, whatever they hold.
    #[cube(launch)]
    pub fn copy_words(from: &[u32], to: &mut [u32]) {
        if ABSOLUTE_POS < to.len() {
            to[ABSOLUTE_POS] = from[ABSOLUTE_POS];
        }
    }

    /// Units a cube of [`copy_words`].
    const THREADS: u32 = 256;

    /// The kernel as [`into`] launches it, built where there is no device, for
    /// `gpu_kernels::ptx` to compile.
    #[cfg(feature = "cuda")]
    pub(crate) fn offline(
        device: std::sync::Arc<DeviceProperties>,
        target: std::sync::Arc<TargetProperties>,
    ) -> Box<dyn CubeKernel> {
        let words = || BufferCompilationArg { inplace: None };
        Box::new(copy_words::CopyWords::new(
            crate::kernels::gpu_kernels::ptx::launch_settings(CubeDim::new_1d(THREADS)),
            device,
            target,
            words(),
            words(),
        ))
    }

    /// `src`'s values written over `dst`'s, in `dst`'s buffer, as 32-bit words: `dst` when
    /// both have the same type (of 4 or 8 bytes), element count and `dst` is contiguous, else
    /// `src` (the values, in a buffer of their own).
    pub fn into(dst: CubeTensor, src: CubeTensor) -> CubeTensor {
        let n = dst.shape().num_elements();
        let size = dst.dtype.size();
        let writable = src.dtype == dst.dtype
            && (size == 4 || size == 8)
            && dst.is_contiguous()
            && src.shape().num_elements() == n;
        if !writable {
            return src;
        }
        let src = burn_cubecl::kernel::into_contiguous(src);
        let words = n * size / 4;
        let count = CubeCount::Static(words.div_ceil(THREADS as usize).max(1) as u32, 1, 1);
        // SAFETY: both buffers hold `n` elements of `size` bytes, `words` 32-bit words (checked
        // above), and the kernel touches no index past `words`.
        unsafe {
            let (from, to) = (
                BufferArg::from_raw_parts(src.handle.clone(), words),
                BufferArg::from_raw_parts(dst.handle.clone(), words),
            );
            copy_words::launch(&dst.client, count, CubeDim::new_1d(THREADS), from, to);
        }
        dst
    }
}

/// The output's shape and type of a view, for fusion's lazy tensors.
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
fn view_spec(
    flat: &burn::backend::fusion::custom::TensorSpec,
    _offset: &usize,
    shape: &[usize],
) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(Shape::from(shape.to_vec()), flat.dtype)
}

/// The values of `flat` (`[n]`) from `offset` as a tensor of `dims`, over the same memory,
/// without autodiff.
pub fn flat_view<const D: usize>(flat: &Tensor<1>, offset: usize, dims: [usize; D]) -> Tensor<D> {
    let view = <burn::backend::Dispatch as FlatViews>::flat_view(
        flat.clone().without_autodiff().into_dispatch(),
        offset,
        dims.to_vec(),
    );
    Tensor::from_dispatch(view)
}

/// `src`'s values (`[n]`) written over `dst`'s, without autodiff; the vector to keep. On the
/// cubecl backend that is `dst` itself, its buffer rewritten, so the views taken of it before
/// read the new values (what a replayed graph needs); on burn-flex it is `src`, and views of
/// `dst` keep the old values.
pub fn write_into(dst: &Tensor<1>, src: Tensor<1>) -> Tensor<1> {
    let written = <burn::backend::Dispatch as FlatViews>::flat_write_into(
        dst.clone().without_autodiff().into_dispatch(),
        src.without_autodiff().into_dispatch(),
    );
    Tensor::from_dispatch(written)
}

/// [`write_into`] for integers.
pub fn write_into_int(dst: &Tensor<1, Int>, src: Tensor<1, Int>) -> Tensor<1, Int> {
    let written = <burn::backend::Dispatch as FlatViews>::flat_write_into_int(
        dst.clone().without_autodiff().into_dispatch(),
        src.without_autodiff().into_dispatch(),
    );
    Tensor::from_dispatch(written)
}

/// `new`, to hold in place of `old` (of the same shape): while a step is recorded (the kernel
/// policy's `capture`), written into `old`'s buffer ([`write_into`]), which a replay reads and
/// writes again; otherwise `new` itself.
pub fn replace<const D: usize>(old: &Tensor<D>, new: Tensor<D>) -> Tensor<D> {
    if !crate::kernels::current().capture {
        return new;
    }
    let dims = old.dims();
    let n = dims.iter().product::<usize>();
    write_into(&old.clone().reshape([n]), new.reshape([n])).reshape(dims)
}

/// Float values the host sets each step and kernels read from device memory (a batch, a
/// learning rate), in a tensor of a fixed shape without autodiff. While a step is recorded
/// (the kernel policy's `capture`), new values are written into the same buffer, the one a
/// replay reads; otherwise each set is a fresh upload.
#[derive(Debug, Clone)]
pub struct DeviceInput<const D: usize>(Tensor<D>);

impl<const D: usize> DeviceInput<D> {
    /// `values` (row-major) in `shape` on `device`; an error unless there are as many as the
    /// shape holds.
    pub fn new(values: Vec<f32>, shape: [usize; D], device: &Device) -> Result<Self> {
        fits(&values, shape)?;
        Ok(DeviceInput(upload(values, shape, device)))
    }

    /// Sets the values kernels issued from now on read; an error (and nothing set) unless
    /// there are as many as the shape holds.
    pub fn set(&mut self, values: Vec<f32>) -> Result<()> {
        fits(&values, self.0.dims())?;
        self.write(values);
        Ok(())
    }

    /// [`DeviceInput::set`] with values known to fit.
    fn write(&mut self, values: Vec<f32>) {
        let new = upload(values, self.0.dims(), &self.0.device());
        self.0 = replace(&self.0, new);
    }

    /// The values.
    pub fn tensor(&self) -> Tensor<D> {
        self.0.clone()
    }
}

/// An error unless `values` fill `shape`.
fn fits<const D: usize>(values: &[f32], shape: [usize; D]) -> Result<()> {
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(Error::Shape(format!(
            "device input of shape {shape:?} takes {n} values, got {}",
            values.len()
        )));
    }
    Ok(())
}

fn upload<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), device).without_autodiff()
}

/// One number the host sets each step (a learning rate, an EMA rate, a bias correction), so
/// that no step's value is part of a kernel: a [`DeviceInput`] of one value.
#[derive(Debug, Clone)]
pub struct DeviceScalar(DeviceInput<1>);

impl DeviceScalar {
    /// `value` on `device` (without autodiff).
    pub fn new(value: f64, device: &Device) -> Self {
        DeviceScalar(DeviceInput(upload(vec![value as f32], [1], device)))
    }

    /// Sets the value kernels issued from now on read.
    pub fn set(&mut self, value: f64) {
        self.0.write(vec![value as f32]);
    }

    /// The value as a `[1]` tensor.
    pub fn tensor(&self) -> Tensor<1> {
        self.0.tensor()
    }

    /// The value as a `[1, 1]` tensor, to broadcast over a matrix's rows and columns.
    pub fn column(&self) -> Tensor<2> {
        self.tensor().reshape([1, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn on_burn_flex_a_write_gives_the_new_values_and_leaves_earlier_views_alone() {
        let device = crate::device::cpu();
        let old: Vec<f32> = (0..2048).map(|i| i as f32).collect();
        let v = Tensor::<1>::from_data(TensorData::new(old.clone(), [2048]), &device);
        let view: Tensor<2> = flat_view(&v, 1024, [2, 2]);
        let kept = write_into(&v, v.clone() + 1.0);
        assert!(!kept.is_autodiff());
        assert_eq!(
            values(kept),
            old.iter().map(|x| x + 1.0).collect::<Vec<_>>()
        );
        assert_eq!(values(view), [1024.0, 1025.0, 1026.0, 1027.0]);
    }

    #[test]
    fn device_inputs_read_back_what_was_set_last_with_and_without_capture() {
        let device = crate::device::cpu();
        let before = crate::kernels::installed();
        for capture in [false, true] {
            crate::kernels::install(crate::kernels::current().with_capture(capture));
            let mut s = DeviceScalar::new(0.5, &device);
            assert_eq!(values(s.tensor()), [0.5]);
            s.set(0.25);
            assert_eq!(values(s.column()), [0.25]);
            assert!(!s.tensor().is_autodiff());
            let mut batch = DeviceInput::new(vec![1.0, 2.0, 3.0, 4.0], [2, 2], &device).unwrap();
            batch.set(vec![5.0, 6.0, 7.0, 8.0]).unwrap();
            assert_eq!(batch.tensor().dims(), [2, 2]);
            assert_eq!(values(batch.tensor()), [5.0, 6.0, 7.0, 8.0]);
            // Values that do not fill the shape are an error, and leave the input as it was.
            let err = batch.set(vec![1.0; 3]).unwrap_err().to_string();
            assert!(err.contains("takes 4 values, got 3"), "{err}");
            assert_eq!(values(batch.tensor()), [5.0, 6.0, 7.0, 8.0]);
            assert!(DeviceInput::new(vec![0.0; 5], [2, 2], &device).is_err());
        }
        crate::kernels::restore(before);
    }
}
