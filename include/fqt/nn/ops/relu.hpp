#pragma once
/// \file
/// \brief ReLU as plain functions over any Eigen matrix.

#include "fqt/core/matrix.hpp"
#include "fqt/nn/detail/checks.hpp"

namespace fqt {
namespace nn {

/// \brief output = max(input, 0) elementwise. **Overwrites** output (same shape as input; any
/// Eigen matrix, block or map).
template <class In, class Out>
void relu_forward(const Eigen::MatrixBase<In>& input, Eigen::MatrixBase<Out>& output) {
  detail::check_shape(output, input.rows(), input.cols(), "nn::relu_forward", "output");
  output = input.cwiseMax(typename In::Scalar(0));
}

/// \brief grad_input = grad_output where output > 0, else 0 (the subgradient 0 at 0).
/// **Overwrites** grad_input.
/// \param output the forward output (or input: the mask is the same)
template <class Y, class G, class Out>
void relu_backward(const Eigen::MatrixBase<Y>& output, const Eigen::MatrixBase<G>& grad_output,
                   Eigen::MatrixBase<Out>& grad_input) {
  using Scalar = typename Y::Scalar;
  constexpr const char* kWhere = "nn::relu_backward";
  detail::check_shape(grad_output, output.rows(), output.cols(), kWhere, "grad_output");
  detail::check_shape(grad_input, output.rows(), output.cols(), kWhere, "grad_input");
  detail::check_finite(grad_output, kWhere, "grad_output");
  grad_input = (output.array() > Scalar(0)).select(grad_output.array(), Scalar(0)).matrix();
}

}  // namespace nn
}  // namespace fqt
