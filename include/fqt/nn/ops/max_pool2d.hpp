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

namespace fqt {
namespace nn {

/// \brief Shape of a 2-D max pooling over C channels of H×W; padding counts as −∞.
///
/// The size accessors do not check for overflow: call validate() first (the ops do).
struct Pool2dGeometry {
  Index channels = 0;        ///< C
  Index in_height = 0;       ///< H
  Index in_width = 0;        ///< W
  Index kernel_height = 2;   ///< kh
  Index kernel_width = 2;    ///< kw
  Index stride_height = 2;   ///< sh
  Index stride_width = 2;    ///< sw
  Index padding_height = 0;  ///< ph, at most kh/2
  Index padding_width = 0;   ///< pw, at most kw/2

  Pool2dGeometry() = default;
  /// \brief A square window; stride 0 means stride = kernel (a negative stride is kept, for
  /// validate() to reject).
  Pool2dGeometry(Index channels_, Index in_height_, Index in_width_, Index kernel, Index stride = 0,
                 Index padding = 0)
      : channels(channels_),
        in_height(in_height_),
        in_width(in_width_),
        kernel_height(kernel),
        kernel_width(kernel),
        stride_height(stride != 0 ? stride : kernel),
        stride_width(stride != 0 ? stride : kernel),
        padding_height(padding),
        padding_width(padding) {}

  /// \brief Output height.
  Index out_height() const {
    return (in_height + 2 * padding_height - kernel_height) / stride_height + 1;
  }
  /// \brief Output width.
  Index out_width() const {
    return (in_width + 2 * padding_width - kernel_width) / stride_width + 1;
  }
  /// \brief Columns of an input batch, C·H·W.
  Index input_size() const { return channels * in_height * in_width; }
  /// \brief Columns of an output batch, C·Ho·Wo.
  Index output_size() const { return channels * out_height() * out_width(); }

  /// \brief Throws std::invalid_argument naming `where`, the fields and the values unless sizes
  /// are positive, padding ≤ kernel/2, the window fits in the padded input, every derived size
  /// (H + 2·ph, W + 2·pw, C·H·W, C·Ho·Wo) fits in an Index and C·H·W fits the int32 argmax of
  /// MaxPool2dCache.
  void validate(const char* where) const {
    check(channels > 0 && in_height > 0 && in_width > 0, where,
          "channels and spatial sizes must be positive, got channels ", channels, ", in_height ",
          in_height, ", in_width ", in_width);
    check(kernel_height > 0 && kernel_width > 0 && stride_height > 0 && stride_width > 0, where,
          "kernel and stride must be positive, got kernel ", kernel_height, " x ", kernel_width,
          ", stride ", stride_height, " x ", stride_width);
    // p ≤ k/2 rather than 2·p ≤ k: no product that could overflow.
    check(padding_height >= 0 && padding_width >= 0 && padding_height <= kernel_height / 2 &&
              padding_width <= kernel_width / 2,
          where, "padding must be in [0, kernel/2], got ", padding_height, " x ", padding_width,
          " for kernel ", kernel_height, " x ", kernel_width);
    const Index padded_height =
        detail::checked_sum(where, "in_height + padding_height + padding_height",
                            {in_height, padding_height, padding_height});
    const Index padded_width =
        detail::checked_sum(where, "in_width + padding_width + padding_width",
                            {in_width, padding_width, padding_width});
    check(kernel_height <= padded_height && kernel_width <= padded_width, where, "kernel ",
          kernel_height, " x ", kernel_width, " is larger than the padded input ", padded_height,
          " x ", padded_width);
    const Index size = detail::checked_product(where, "channels * in_height * in_width",
                                               {channels, in_height, in_width});
    check(size <= std::numeric_limits<std::int32_t>::max(), where,
          "channels * in_height * in_width = ", channels, " * ", in_height, " * ", in_width, " = ",
          size, " exceeds the int32 argmax index limit ", std::numeric_limits<std::int32_t>::max());
    detail::checked_product(where, "channels * out_height * out_width",
                            {channels, out_height(), out_width()});
  }
};

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
          Scalar best = -std::numeric_limits<Scalar>::infinity();
          Index best_at = -1;
          for (Index i = 0; i < g.kernel_height; ++i) {
            const Index iy = oy * g.stride_height - g.padding_height + i;
            if (iy < 0 || iy >= g.in_height) continue;
            for (Index j = 0; j < g.kernel_width; ++j) {
              const Index ix = ox * g.stride_width - g.padding_width + j;
              if (ix < 0 || ix >= g.in_width) continue;
              const Index at = (c * g.in_height + iy) * g.in_width + ix;
              if (best_at < 0 || x[at] > best) {
                best = x[at];
                best_at = at;
              }
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
