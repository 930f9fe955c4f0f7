#pragma once
/// \file
/// \brief 2-D max pooling as plain functions.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/geometry.hpp"

namespace fqt {
namespace nn {

/// \brief The argmax of each pooling window, for max_pool2d_backward.
template <class Scalar = float>
struct MaxPool2dCache {
  /// True once max_pool2d_forward has completed into this cache; false when default-constructed
  /// or when the last forward threw after it started filling the cache (max_pool2d_backward then
  /// throws std::logic_error).
  bool complete = false;
  Pool2dGeometry geometry;  ///< the geometry of the forward pass
  Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>
      argmax;  ///< N × (C·Ho·Wo): input column of each output's maximum (first on ties)
};

/// \brief output = the maximum of each window. **Overwrites** output (N × (C·Ho·Wo)).
/// \param cache filled with the argmax of every window; unchanged when an argument check throws,
///        marked incomplete (backward throws std::logic_error) when a later step throws
/// \throws std::invalid_argument on a bad geometry or shape (sizes overflowing Index or the int32
///         argmax included), std::domain_error on NaN/Inf in the input
template <class Scalar>
void max_pool2d_forward(const detail::ConstMatrix<Scalar>& input, const Pool2dGeometry& geometry,
                        MaxPool2dCache<Scalar>& cache, detail::OutMatrix<Scalar> output) {
  constexpr const char* kWhere = "nn::max_pool2d_forward";
  geometry.validate(kWhere);
  const Pool2dGeometry& g = geometry;
  check(input.cols() == g.input_size(), kWhere, "input has ", input.cols(),
        " columns per sample, expected channels * in_height * in_width = ", g.input_size());
  detail::check_shape(output, input.rows(), g.output_size(), kWhere, "output");
  detail::check_finite(input, kWhere, "input");
  // Every check has passed: from here on the cache is incomplete until the pass finishes.
  cache.complete = false;
  cache.geometry = g;
  if (cache.argmax.rows() != input.rows() || cache.argmax.cols() != g.output_size()) {
    cache.argmax.resize(input.rows(), g.output_size());
  }
  const Index ho = g.out_height(), wo = g.out_width();
  parallel_for(input.rows(), g.input_size(), [&](Index s) {
    const Scalar* x = input.data() + s * input.outerStride();
    Scalar* y = output.data() + s * output.outerStride();
    std::int32_t* arg = cache.argmax.data() + s * cache.argmax.cols();
    for (Index c = 0; c < g.channels; ++c) {
      for (Index oy = 0; oy < ho; ++oy) {
        for (Index ox = 0; ox < wo; ++ox) {
          // The window's rows and columns inside the input (never empty: the padding is at most
          // half the kernel), then a branch-free scan: the first maximum wins ties.
          const Index y0 = oy * g.stride_height - g.padding_height;
          const Index x0 = ox * g.stride_width - g.padding_width;
          const Index i0 = std::max<Index>(0, -y0),
                      i1 = std::min(g.kernel_height, g.in_height - y0);
          const Index j0 = std::max<Index>(0, -x0), j1 = std::min(g.kernel_width, g.in_width - x0);
          Index best_at = (c * g.in_height + y0 + i0) * g.in_width + x0 + j0;
          Scalar best = x[best_at];
          for (Index i = i0; i < i1; ++i) {
            const Index row = (c * g.in_height + y0 + i) * g.in_width + x0;
            for (Index j = j0; j < j1; ++j) {
              const Scalar v = x[row + j];
              const bool larger = v > best;
              best = larger ? v : best;
              best_at = larger ? row + j : best_at;
            }
          }
          const Index o = (c * ho + oy) * wo + ox;
          y[o] = best;
          arg[o] = static_cast<std::int32_t>(best_at);
        }
      }
    }
  });
  cache.complete = true;
}

/// \brief Routes each output gradient to its window's maximum. **Overwrites** grad_input.
/// \throws std::logic_error when the cache holds no completed forward pass; std::invalid_argument
///         / std::domain_error on a bad shape or NaN/Inf in grad_output, before anything is written
template <class Scalar>
void max_pool2d_backward(const detail::ConstMatrix<Scalar>& grad_output,
                         const MaxPool2dCache<Scalar>& cache,
                         detail::OutMatrix<Scalar> grad_input) {
  constexpr const char* kWhere = "nn::max_pool2d_backward";
  detail::require_complete_forward(cache.complete, kWhere, "nn::max_pool2d_forward");
  const Pool2dGeometry& g = cache.geometry;
  detail::check_shape(grad_output, cache.argmax.rows(), cache.argmax.cols(), kWhere, "grad_output");
  detail::check_shape(grad_input, cache.argmax.rows(), g.input_size(), kWhere, "grad_input");
  detail::check_finite(grad_output, kWhere, "grad_output");
  grad_input.setZero();
  for (Index s = 0; s < grad_output.rows(); ++s) {
    for (Index o = 0; o < grad_output.cols(); ++o) {
      grad_input(s, cache.argmax(s, o)) += grad_output(s, o);
    }
  }
}

}  // namespace nn
}  // namespace fqt
