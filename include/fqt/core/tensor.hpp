#pragma once
/// \file
/// \brief Zero-copy N × (rest) matrix views of Eigen tensors (opt-in: includes Eigen's
/// unsupported Tensor module). Rows are the first dimension, as the paper flattens a conv
/// gradient N×C×H×W into N × (C·H·W). Only row-major tensors (PyTorch's layout) have such a view:
/// in a column-major tensor the first index varies fastest, so its rows are not contiguous.

#include <type_traits>
#include <unsupported/Eigen/CXX11/Tensor>

#include "fqt/core/matrix.hpp"

namespace fqt {
namespace detail {

template <class T>
struct tensor_traits;

template <class Scalar, int Rank, int Options, class IndexType>
struct tensor_traits<Eigen::Tensor<Scalar, Rank, Options, IndexType>> {
  using scalar = Scalar;
  static constexpr int rank = Rank;
  static constexpr bool row_major = (Options & Eigen::RowMajor) != 0;
};

template <class Plain, int Options, template <class> class MakePointer>
struct tensor_traits<Eigen::TensorMap<Plain, Options, MakePointer>>
    : tensor_traits<std::remove_const_t<Plain>> {};

template <class Tensor>
void check_viewable() {
  using traits = tensor_traits<std::remove_const_t<Tensor>>;
  static_assert(traits::rank >= 2, "fqt::as_matrix needs a tensor of rank 2 or more");
  static_assert(traits::row_major,
                "fqt::as_matrix needs a RowMajor tensor (PyTorch's layout): in a ColMajor tensor "
                "the rows of the N x (rest) view are not contiguous");
}

template <class Tensor>
Index rest_size(const Tensor& t) {
  Index rest = 1;
  for (int k = 1; k < tensor_traits<std::remove_const_t<Tensor>>::rank; ++k) rest *= t.dimension(k);
  return rest;
}

}  // namespace detail

/// \brief The N × (rest) row-major matrix view of a row-major tensor or tensor map (no copy).
template <class Tensor>
auto as_matrix(Tensor& t) {
  detail::check_viewable<Tensor>();
  using Scalar = typename detail::tensor_traits<std::remove_const_t<Tensor>>::scalar;
  using MatrixType = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(t.data())>>,
                                        const Matrix<Scalar>, Matrix<Scalar>>;
  return Eigen::Map<MatrixType>(t.data(), t.dimension(0), detail::rest_size(t));
}

}  // namespace fqt
