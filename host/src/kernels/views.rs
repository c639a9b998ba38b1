//! A parameter's view of its network's vector (`models::flat`) that costs no copy on any
//! backend.
//!
//! burn's `slice` on the cubecl backend returns a view only when both ends of the slice fall
//! on the allocator's alignment (512 bytes on CUDA) and copies otherwise, so most parameters'
//! slices of a vector would be copies, a kernel launch each, every step. A parameter starts on
//! an aligned row of its vector; the view made here keeps the rest of the vector's buffer past
//! the parameter's end (so both ends of its buffer are aligned) and says the parameter's own
//! shape in its metadata, as any view does.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::{Shape, Tensor};

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
}

/// The view as burn's own slice and reshape.
fn sliced<B: Backend>(flat: FloatTensor<B>, offset: usize, shape: Vec<usize>) -> FloatTensor<B> {
    let len: usize = shape.iter().product();
    let slice = B::float_slice(flat, &[burn::tensor::Slice::from(offset..offset + len)]);
    B::float_reshape(slice, Shape::from(shape))
}

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
}

/// The output's shape and type of a view, for fusion's lazy tensors.
#[cfg(any(feature = "cuda", feature = "cubecl-cpu"))]
fn view_spec(
    flat: &burn::backend::fusion::custom::TensorSpec,
    _offset: &usize,
    shape: &Vec<usize>,
) -> burn::backend::fusion::custom::TensorSpec {
    burn::backend::fusion::custom::TensorSpec::new(Shape::from(shape.clone()), flat.dtype)
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
