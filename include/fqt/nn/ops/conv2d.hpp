#pragma once
/// \file
/// \brief 2-D convolution as plain functions, by im2col and GEMM (see fqt/nn/functional.hpp for
/// the conventions of every op).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/detail/kernels.hpp"
#include "fqt/nn/policy.hpp"

namespace fqt {
namespace nn {

/// \brief Shape of a 2-D convolution: input C×H×W, K output channels, a kh×kw kernel, strides and
/// zero paddings. Output height ⌊(H + 2·ph − kh)/sh⌋ + 1, likewise the width.
///
/// The size accessors (out_height(), input_size(), ...) do not check for overflow: call
/// validate() first, which checks every one of them (the functional and autograd ops do).
struct Conv2dGeometry {
  Index in_channels = 0;     ///< C
  Index in_height = 0;       ///< H
  Index in_width = 0;        ///< W
  Index out_channels = 0;    ///< K
  Index kernel_height = 1;   ///< kh
  Index kernel_width = 1;    ///< kw
  Index stride_height = 1;   ///< sh
  Index stride_width = 1;    ///< sw
  Index padding_height = 0;  ///< ph (zeros above and below)
  Index padding_width = 0;   ///< pw (zeros left and right)

  Conv2dGeometry() = default;
  /// \brief A square kernel with equal strides and paddings in both directions.
  Conv2dGeometry(Index in_channels_, Index in_height_, Index in_width_, Index out_channels_,
                 Index kernel, Index stride = 1, Index padding = 0)
      : in_channels(in_channels_),
        in_height(in_height_),
        in_width(in_width_),
        out_channels(out_channels_),
        kernel_height(kernel),
        kernel_width(kernel),
        stride_height(stride),
        stride_width(stride),
        padding_height(padding),
        padding_width(padding) {}

  /// \brief Output height Ho.
  Index out_height() const {
    return (in_height + 2 * padding_height - kernel_height) / stride_height + 1;
  }
  /// \brief Output width Wo.
  Index out_width() const {
    return (in_width + 2 * padding_width - kernel_width) / stride_width + 1;
  }
  /// \brief Columns of an input batch, C·H·W.
  Index input_size() const { return in_channels * in_height * in_width; }
  /// \brief Columns of an output batch, K·Ho·Wo.
  Index output_size() const { return out_channels * out_height() * out_width(); }
  /// \brief Columns of the weight matrix, C·kh·kw.
  Index patch_size() const { return in_channels * kernel_height * kernel_width; }

  /// \brief Throws std::invalid_argument naming `where` and the offending fields and values
  /// unless every size is positive, paddings are non-negative, the kernel fits in the padded
  /// input and every derived size — H + 2·ph, W + 2·pw, C·H·W, C·kh·kw, Ho·Wo, K·Ho·Wo and the
  /// per-sample im2col buffer C·kh·kw·Ho·Wo — fits in an Index.
  void validate(const char* where) const {
    check(in_channels > 0 && in_height > 0 && in_width > 0 && out_channels > 0, where,
          "channels and spatial sizes must be positive, got in_channels ", in_channels,
          ", in_height ", in_height, ", in_width ", in_width, ", out_channels ", out_channels);
    check(kernel_height > 0 && kernel_width > 0, where, "kernel must be positive, got ",
          kernel_height, " x ", kernel_width);
    check(stride_height > 0 && stride_width > 0, where, "stride must be positive, got ",
          stride_height, " x ", stride_width);
    check(padding_height >= 0 && padding_width >= 0, where, "padding must be >= 0, got ",
          padding_height, " x ", padding_width);
    const Index padded_height =
        detail::checked_sum(where, "in_height + padding_height + padding_height",
                            {in_height, padding_height, padding_height});
    const Index padded_width =
        detail::checked_sum(where, "in_width + padding_width + padding_width",
                            {in_width, padding_width, padding_width});
    check(kernel_height <= padded_height, where, "kernel_height ", kernel_height,
          " is larger than the padded input height ", padded_height, " (in_height ", in_height,
          " + 2 * padding ", padding_height, ")");
    check(kernel_width <= padded_width, where, "kernel_width ", kernel_width,
          " is larger than the padded input width ", padded_width, " (in_width ", in_width,
          " + 2 * padding ", padding_width, ")");
    detail::checked_product(where, "in_channels * in_height * in_width",
                            {in_channels, in_height, in_width});
    detail::checked_product(where, "in_channels * kernel_height * kernel_width",
                            {in_channels, kernel_height, kernel_width});
    // Past the checks above, out_height() ≤ H + 2·ph and out_width() ≤ W + 2·pw cannot overflow.
    const Index ho = out_height(), wo = out_width();
    detail::checked_product(where, "out_channels * out_height * out_width", {out_channels, ho, wo});
    detail::checked_product(where,
                            "in_channels * kernel_height * kernel_width * out_height * out_width",
                            {in_channels, kernel_height, kernel_width, ho, wo});
  }
};

namespace detail {

/// Samples per work chunk of the conv kernels: a fixed partition, so the grad-weight sum has a
/// fixed order whatever the number of threads.
inline constexpr Index kConvChunk = 4;

/// \brief im2col of one sample: columns (C·kh·kw) × (Ho·Wo), row (c, i, j), column (oy, ox).
template <class Scalar>
void im2col(const Scalar* x, const Conv2dGeometry& g, Scalar* columns) {
  const Index ho = g.out_height(), wo = g.out_width(), plane = ho * wo;
  for (Index c = 0; c < g.in_channels; ++c) {
    const Scalar* channel = x + c * g.in_height * g.in_width;
    for (Index i = 0; i < g.kernel_height; ++i) {
      for (Index j = 0; j < g.kernel_width; ++j) {
        Scalar* dst = columns + ((c * g.kernel_height + i) * g.kernel_width + j) * plane;
        for (Index oy = 0; oy < ho; ++oy) {
          Scalar* row = dst + oy * wo;
          const Index iy = oy * g.stride_height - g.padding_height + i;
          if (iy < 0 || iy >= g.in_height) {
            std::fill(row, row + wo, Scalar(0));
            continue;
          }
          const Scalar* src = channel + iy * g.in_width;
          for (Index ox = 0; ox < wo; ++ox) {
            const Index ix = ox * g.stride_width - g.padding_width + j;
            row[ox] = (ix >= 0 && ix < g.in_width) ? src[ix] : Scalar(0);
          }
        }
      }
    }
  }
}

/// \brief col2im of one sample: adds each column entry back to its input position (x += ...).
template <class Scalar>
void col2im_add(const Scalar* columns, const Conv2dGeometry& g, Scalar* x) {
  const Index ho = g.out_height(), wo = g.out_width(), plane = ho * wo;
  for (Index c = 0; c < g.in_channels; ++c) {
    Scalar* channel = x + c * g.in_height * g.in_width;
    for (Index i = 0; i < g.kernel_height; ++i) {
      for (Index j = 0; j < g.kernel_width; ++j) {
        const Scalar* src = columns + ((c * g.kernel_height + i) * g.kernel_width + j) * plane;
        for (Index oy = 0; oy < ho; ++oy) {
          const Index iy = oy * g.stride_height - g.padding_height + i;
          if (iy < 0 || iy >= g.in_height) continue;
          const Scalar* row = src + oy * wo;
          Scalar* dst = channel + iy * g.in_width;
          for (Index ox = 0; ox < wo; ++ox) {
            const Index ix = ox * g.stride_width - g.padding_width + j;
            if (ix >= 0 && ix < g.in_width) dst[ix] += row[ox];
          }
        }
      }
    }
  }
}

template <class Scalar>
using RowMap = Eigen::Map<Matrix<Scalar>>;
template <class Scalar>
using ConstRowMap = Eigen::Map<const Matrix<Scalar>>;

}  // namespace detail

/// \brief What conv2d_backward needs from conv2d_forward, plus its workspaces.
template <class Scalar = float>
struct Conv2dCache {
  /// True once conv2d_forward has completed into this cache; false when default-constructed or
  /// when the last forward threw after it started filling the cache (conv2d_backward then throws
  /// std::logic_error).
  bool complete = false;
  QuantPolicy policy;       ///< the policy of the forward pass
  Conv2dGeometry geometry;  ///< the geometry of the forward pass
  Index batch = 0;          ///< N
  Matrix<Scalar> weight;    ///< Ŵ = Q_f(W) (W in Mode::Exact), K × (C·kh·kw)
  Matrix<Scalar> columns;   ///< im2col of X̂, sample n in rows [n·C·kh·kw, (n+1)·C·kh·kw)
  Matrix<Scalar> input;     ///< workspace: X̂ = Q_f(X), N × (C·H·W) (unused in Mode::Exact)
  Matrix<Scalar> grad_for_input;                  ///< workspace: Q_b1(G), N × (K·Ho·Wo)
  Matrix<Scalar> grad_for_weight;                 ///< workspace: Q_b2(G), N × (K·Ho·Wo)
  std::vector<Matrix<Scalar>> chunk_columns;      ///< workspace per sample chunk: grad of columns
  std::vector<Matrix<Scalar>> chunk_grad_weight;  ///< workspace per sample chunk: partial ∇W
};

/// \brief Y = conv(Q_f(X), Q_f(W)) + b (Exact: conv(X, W) + b), by im2col and GEMM.
/// **Overwrites** output.
/// \param input X, N × (C·H·W) (NCHW rows)
/// \param weight W, K × (C·kh·kw)
/// \param bias b, size K, or size 0 for no bias (never quantized)
/// \param geometry the convolution's shape (validated)
/// \param policy mode and forward bits; recorded in the cache
/// \param cache filled with Ŵ and the columns of X̂; unchanged when an argument check throws,
///        marked incomplete (backward throws std::logic_error) when a later step throws
/// \param output Y, N × (K·Ho·Wo) (unspecified after a throw)
/// \throws std::invalid_argument on a bad policy, geometry or shape or a size that overflows
///         Index (naming the fields and values), std::domain_error on NaN/Inf in the input,
///         weight or bias or when a forward quantizer's range overflows
template <class Scalar>
void conv2d_forward(const detail::ConstMatrix<Scalar>& input,
                    const detail::ConstMatrix<Scalar>& weight,
                    const detail::ConstVector<Scalar>& bias, const Conv2dGeometry& geometry,
                    const QuantPolicy& policy, Conv2dCache<Scalar>& cache,
                    detail::OutMatrix<Scalar> output) {
  detail::static_check_scalar<Scalar>();
  constexpr const char* kWhere = "nn::conv2d_forward";
  policy.validate(kWhere);
  geometry.validate(kWhere);
  const Conv2dGeometry& g = geometry;
  check(input.cols() == g.input_size(), kWhere, "input has ", input.cols(),
        " columns per sample, expected in_channels * in_height * in_width = ", g.in_channels, " * ",
        g.in_height, " * ", g.in_width, " = ", g.input_size());
  check(weight.rows() == g.out_channels && weight.cols() == g.patch_size(), kWhere,
        "weight must be out_channels x (in_channels * kernel_height * kernel_width) = ",
        g.out_channels, " x ", g.patch_size(), ", got ", weight.rows(), " x ", weight.cols());
  check(bias.size() == 0 || bias.size() == g.out_channels, kWhere, "bias has size ", bias.size(),
        ", expected ", g.out_channels, " (or 0 for no bias)");
  detail::check_shape(output, input.rows(), g.output_size(), kWhere, "output");
  const Index n = input.rows(), patch = g.patch_size(), plane = g.out_height() * g.out_width();
  // The im2col buffer of the batch, (N·C·kh·kw) × (Ho·Wo).
  detail::checked_product(
      kWhere, "batch * in_channels * kernel_height * kernel_width * out_height * out_width",
      {n, g.in_channels, g.kernel_height, g.kernel_width, g.out_height(), g.out_width()});
  detail::check_finite(input, kWhere, "input");
  detail::check_finite(weight, kWhere, "weight");
  detail::check_finite(bias, kWhere, "bias");

  // Every check has passed: from here on the cache is incomplete until the pass finishes.
  cache.complete = false;
  cache.policy = policy;
  cache.geometry = g;
  cache.batch = n;
  detail::ensure_shape(cache.weight, weight.rows(), weight.cols());
  const Scalar* source = input.data();
  Index source_stride = input.outerStride();
  if (policy.quantizes_forward()) {
    detail::ensure_shape(cache.input, n, input.cols());
    detail::quantize_activation<Scalar>(policy, input, cache.input);
    detail::quantize_weight<Scalar>(policy, weight, cache.weight);
    source = cache.input.data();
    source_stride = cache.input.cols();
  } else {
    cache.weight = weight;
  }
  detail::ensure_shape(cache.columns, n * patch, plane);
  const Index chunks = (n + detail::kConvChunk - 1) / detail::kConvChunk;
  const double flops = static_cast<double>(n) * g.out_channels * patch * plane;
  detail::run_blocks(chunks, flops, [&](Index chunk) {
    const Index end = std::min(n, (chunk + 1) * detail::kConvChunk);
    for (Index s = chunk * detail::kConvChunk; s < end; ++s) {
      Scalar* columns = cache.columns.data() + s * patch * plane;
      detail::im2col(source + s * source_stride, g, columns);
      detail::RowMap<Scalar> y(output.data() + s * output.outerStride(), g.out_channels, plane);
      y.noalias() = cache.weight * detail::ConstRowMap<Scalar>(columns, patch, plane);
      if (bias.size() > 0) y.colwise() += bias;
    }
  });
  cache.complete = true;
}

/// \brief Backward of conv2d_forward with the straight-through estimator through Q_f.
///
/// G (N × (K·Ho·Wo), one row per sample) is quantized for grad-input with Q_b1 over its sample
/// rows and, independently, for grad-weight with Q_b2 (Mode::FQT; the identity otherwise). Per
/// sample n: grad_input_n = col2im(Ŵᵀ·Q_b1(G)_n), grad_weight += Q_b2(G)_n·columns(X̂_n)ᵀ, and
/// grad_bias += the per-channel sums of G_n (full precision). Per-column Q_b2 takes one range per
/// (k, oy, ox) column over the batch, as the reference does; an integer conv GEMM could factor out
/// only per-output-channel scales (GradWeightQuantizer::PerChannel), so that choice is a
/// simulation.
/// \param grad_output G = ∂L/∂Y, N × (K·Ho·Wo)
/// \param cache the cache of the matching conv2d_forward
/// \param streams the layer's two independent streams
/// \param grad_input ∂L/∂X, N × (C·H·W): **overwritten** (size 0: not computed)
/// \param grad_weight ∂L/∂W, K × (C·kh·kw): **accumulated** (size 0: not computed)
/// \param grad_bias ∂L/∂b, size K: **accumulated** (size 0: not computed)
/// \throws std::logic_error when the cache holds no completed forward pass;
///         std::invalid_argument / std::domain_error on a bad shape, NaN/Inf in grad_output or a
///         gradient quantizer's range overflow, before any output is written. The cache stays
///         usable for another backward call.
template <class Scalar>
void conv2d_backward(const detail::ConstMatrix<Scalar>& grad_output, Conv2dCache<Scalar>& cache,
                     const GradientStreams& streams, detail::OutMatrix<Scalar> grad_input,
                     detail::OutMatrix<Scalar> grad_weight, detail::OutVector<Scalar> grad_bias) {
  constexpr const char* kWhere = "nn::conv2d_backward";
  detail::require_complete_forward(cache.complete, kWhere, "nn::conv2d_forward");
  const Conv2dGeometry& g = cache.geometry;
  const Index n = cache.batch, patch = g.patch_size(), plane = g.out_height() * g.out_width();
  const Index k = g.out_channels;
  detail::check_shape(grad_output, n, g.output_size(), kWhere, "grad_output");
  if (grad_input.size() > 0)
    detail::check_shape(grad_input, n, g.input_size(), kWhere, "grad_input");
  if (grad_weight.size() > 0) detail::check_shape(grad_weight, k, patch, kWhere, "grad_weight");
  check(grad_bias.size() == 0 || grad_bias.size() == k, kWhere, "grad_bias has size ",
        grad_bias.size(), ", expected ", k, " (or 0)");
  detail::check_finite(grad_output, kWhere, "grad_output");

  const QuantPolicy& policy = cache.policy;
  const bool quantize = policy.quantizes_backward();
  const Scalar* g_input = grad_output.data();
  const Scalar* g_weight = grad_output.data();
  Index g_input_stride = grad_output.outerStride(), g_weight_stride = grad_output.outerStride();
  if (quantize && grad_input.size() > 0) {
    detail::ensure_shape(cache.grad_for_input, n, g.output_size());
    detail::quantize_grad_input<Scalar>(policy, grad_output, streams.grad_input,
                                        cache.grad_for_input);
    g_input = cache.grad_for_input.data();
    g_input_stride = cache.grad_for_input.cols();
  }
  if (quantize && grad_weight.size() > 0) {
    detail::ensure_shape(cache.grad_for_weight, n, g.output_size());
    detail::quantize_grad_weight<Scalar>(policy, grad_output, k, streams.grad_weight,
                                         cache.grad_for_weight);
    g_weight = cache.grad_for_weight.data();
    g_weight_stride = cache.grad_for_weight.cols();
  }

  const Index chunks = (n + detail::kConvChunk - 1) / detail::kConvChunk;
  const bool want_input = grad_input.size() > 0, want_weight = grad_weight.size() > 0;
  if (static_cast<Index>(cache.chunk_columns.size()) < chunks) cache.chunk_columns.resize(chunks);
  if (static_cast<Index>(cache.chunk_grad_weight.size()) < chunks) {
    cache.chunk_grad_weight.resize(chunks);
  }
  const double flops = static_cast<double>(n) * k * patch * plane * (want_input + want_weight);
  detail::run_blocks(chunks, flops, [&](Index chunk) {
    Matrix<Scalar>& dcols = cache.chunk_columns[chunk];
    Matrix<Scalar>& dw = cache.chunk_grad_weight[chunk];
    if (want_input) detail::ensure_shape(dcols, patch, plane);
    if (want_weight) {
      detail::ensure_shape(dw, k, patch);
      dw.setZero();
    }
    const Index end = std::min(n, (chunk + 1) * detail::kConvChunk);
    for (Index s = chunk * detail::kConvChunk; s < end; ++s) {
      const detail::ConstRowMap<Scalar> columns(cache.columns.data() + s * patch * plane, patch,
                                                plane);
      if (want_input) {
        const detail::ConstRowMap<Scalar> gs(g_input + s * g_input_stride, k, plane);
        dcols.noalias() = cache.weight.transpose() * gs;
        Scalar* x = grad_input.data() + s * grad_input.outerStride();
        std::fill(x, x + g.input_size(), Scalar(0));
        detail::col2im_add(dcols.data(), g, x);
      }
      if (want_weight) {
        const detail::ConstRowMap<Scalar> gs(g_weight + s * g_weight_stride, k, plane);
        dw.noalias() += gs * columns.transpose();
      }
    }
  });
  if (want_weight) {
    for (Index c = 0; c < chunks; ++c) grad_weight += cache.chunk_grad_weight[c];
  }
  if (grad_bias.size() > 0) {
    for (Index s = 0; s < n; ++s) {
      grad_bias +=
          detail::ConstRowMap<Scalar>(grad_output.data() + s * grad_output.outerStride(), k, plane)
              .rowwise()
              .sum();
    }
  }
}

}  // namespace nn
}  // namespace fqt
