#pragma once
/// \file
/// \brief Layers as plain functions over Eigen matrices: linear and conv2d (quantized per a
/// QuantPolicy), and the full-precision relu, max_pool2d and batch_norm2d. This is what a foreign
/// training loop calls from its own hooks; the autograd layer (autograd.hpp, layers.hpp) is built
/// on these functions.
///
/// Conventions:
/// - A batch is a row-major matrix with one sample per row. An image batch N×C×H×W (NCHW) is the
///   N × (C·H·W) matrix of its rows; a conv weight K×C×kh×kw is the K × (C·kh·kw) matrix.
/// - Inputs are `const Eigen::Ref<const Matrix<Scalar>>&` and outputs `Eigen::Ref<Matrix<Scalar>>`
///   of the exact shape (checked), so an `Eigen::Map` of a foreign buffer binds with no copy.
///   Scalar (float or double) is deduced from the cache argument.
/// - Each forward fills a cache with what its backward needs; a cache reused across steps of the
///   same shapes does not allocate. Backward functions say whether they overwrite or accumulate.
///   An output argument of size 0 (an empty matrix or vector) means "not wanted" and is skipped.
/// - What a throw leaves behind: a forward function checks every argument (shapes, sizes that
///   could overflow Index, finiteness) before it touches the cache, so a bad argument leaves the
///   cache as it was, still usable by the backward of the previous forward pass. Past the checks,
///   a throw (a quantizer's range overflow, std::bad_alloc) leaves the cache marked incomplete
///   (`cache.complete == false`); so does default construction. The matching backward then throws
///   std::logic_error instead of reading stale or uninitialised workspaces, and the next forward
///   call refills the cache. The forward's output is unspecified after a throw.
/// - Mode::FQT quantizes the output gradient G twice, for grad-input and grad-weight, from the two
///   independent streams of a GradientStreams; the bias gradient is always full precision.
/// - Every function checks shapes (std::invalid_argument) and finiteness of its inputs and
///   gradients (std::domain_error), naming the function, the argument and the value.
/// - Results are bit-identical for any number of threads.

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

// =============================================================================================
// Linear
// =============================================================================================

/// \brief What linear_backward needs from linear_forward, plus its workspaces.
///
/// The GEMMs run in floating point on the dequantized ("fake-quantized") operands, exactly the
/// values an integer GEMM with the affine correction terms would produce.
template <class Scalar = float>
struct LinearCache {
  /// True once linear_forward has completed into this cache; false when default-constructed or
  /// when the last forward threw after it started filling the cache (linear_backward then throws
  /// std::logic_error).
  bool complete = false;
  QuantPolicy policy;              ///< the policy of the forward pass (backward follows it)
  Matrix<Scalar> input;            ///< X̂ = Q_f(X) (X itself in Mode::Exact), N × in
  Matrix<Scalar> weight;           ///< Ŵ = Q_f(W) (W itself in Mode::Exact), out × in
  Matrix<Scalar> grad_for_input;   ///< workspace: Q_b1(G), N × out
  Matrix<Scalar> grad_for_weight;  ///< workspace: Q_b2(G), N × out
};

/// \brief Y = Q_f(X)·Q_f(W)ᵀ + b (Exact: Y = X·Wᵀ + b). **Overwrites** output.
/// \param input X, N × in (one sample per row)
/// \param weight W, out × in
/// \param bias b, size out, or size 0 for no bias (never quantized)
/// \param policy mode and forward bits; recorded in the cache for the backward pass
/// \param cache filled with X̂ and Ŵ; unchanged when an argument check throws, marked incomplete
///        (backward throws std::logic_error) when a later step throws
/// \param output Y, N × out (unspecified after a throw)
/// \throws std::invalid_argument on a bad policy or shape, std::domain_error on NaN/Inf in the
///         input, weight or bias or when a forward quantizer's range overflows
template <class Scalar>
void linear_forward(const detail::ConstMatrix<Scalar>& input,
                    const detail::ConstMatrix<Scalar>& weight,
                    const detail::ConstVector<Scalar>& bias, const QuantPolicy& policy,
                    LinearCache<Scalar>& cache, detail::OutMatrix<Scalar> output) {
  detail::static_check_scalar<Scalar>();
  constexpr const char* kWhere = "nn::linear_forward";
  policy.validate(kWhere);
  check(input.cols() == weight.cols(), kWhere, "input has ", input.cols(), " features but weight (",
        weight.rows(), " x ", weight.cols(), ") expects ", weight.cols());
  check(bias.size() == 0 || bias.size() == weight.rows(), kWhere, "bias has size ", bias.size(),
        ", expected ", weight.rows(), " (or 0 for no bias)");
  detail::check_shape(output, input.rows(), weight.rows(), kWhere, "output");
  detail::check_finite(input, kWhere, "input");
  detail::check_finite(weight, kWhere, "weight");
  detail::check_finite(bias, kWhere, "bias");

  // Every check has passed: from here on the cache is incomplete until the pass finishes.
  cache.complete = false;
  cache.policy = policy;
  detail::ensure_shape(cache.input, input.rows(), input.cols());
  detail::ensure_shape(cache.weight, weight.rows(), weight.cols());
  if (policy.quantizes_forward()) {
    detail::quantize_activation<Scalar>(policy, input, cache.input);
    detail::quantize_weight<Scalar>(policy, weight, cache.weight);
  } else {
    cache.input = input;
    cache.weight = weight;
  }
  detail::gemm(output, cache.input, cache.weight.transpose(), false);
  if (bias.size() > 0) output.rowwise() += bias.transpose();
  cache.complete = true;
}

/// \brief Backward of linear_forward with the straight-through estimator through Q_f.
///
/// With G the output gradient: grad_input = Q_b1(G)·Ŵ, grad_weight += Q_b2(G)ᵀ·X̂ and
/// grad_bias += Σ_rows G, where Q_b1, Q_b2 are the policy's gradient quantizers in Mode::FQT
/// (drawing from streams.grad_input and streams.grad_weight) and the identity otherwise.
/// \param grad_output G = ∂L/∂Y, N × out
/// \param cache the cache of the matching linear_forward
/// \param streams the layer's two independent streams (gradient_streams(rng, step, layer))
/// \param grad_input ∂L/∂X, N × in: **overwritten** (size 0: not computed)
/// \param grad_weight ∂L/∂W, out × in: **accumulated** (size 0: not computed)
/// \param grad_bias ∂L/∂b, size out: **accumulated** (size 0: not computed)
/// \throws std::logic_error when the cache holds no completed forward pass;
///         std::invalid_argument / std::domain_error on a bad shape, NaN/Inf in grad_output or a
///         gradient quantizer's range overflow, before any output is written. The cache stays
///         usable for another backward call.
template <class Scalar>
void linear_backward(const detail::ConstMatrix<Scalar>& grad_output, LinearCache<Scalar>& cache,
                     const GradientStreams& streams, detail::OutMatrix<Scalar> grad_input,
                     detail::OutMatrix<Scalar> grad_weight, detail::OutVector<Scalar> grad_bias) {
  constexpr const char* kWhere = "nn::linear_backward";
  detail::require_complete_forward(cache.complete, kWhere, "nn::linear_forward");
  const Index n = cache.input.rows(), in = cache.input.cols(), out = cache.weight.rows();
  detail::check_shape(grad_output, n, out, kWhere, "grad_output");
  if (grad_input.size() > 0) detail::check_shape(grad_input, n, in, kWhere, "grad_input");
  if (grad_weight.size() > 0) detail::check_shape(grad_weight, out, in, kWhere, "grad_weight");
  check(grad_bias.size() == 0 || grad_bias.size() == out, kWhere, "grad_bias has size ",
        grad_bias.size(), ", expected ", out, " (or 0)");
  detail::check_finite(grad_output, kWhere, "grad_output");

  const QuantPolicy& policy = cache.policy;
  const bool quantize = policy.quantizes_backward();
  // Both quantizations (which can throw) run before any output is written.
  if (quantize && grad_input.size() > 0) {
    detail::ensure_shape(cache.grad_for_input, n, out);
    detail::quantize_grad_input<Scalar>(policy, grad_output, streams.grad_input,
                                        cache.grad_for_input);
  }
  if (quantize && grad_weight.size() > 0) {
    detail::ensure_shape(cache.grad_for_weight, n, out);
    detail::quantize_grad_weight<Scalar>(policy, grad_output, out, streams.grad_weight,
                                         cache.grad_for_weight);
  }
  if (grad_input.size() > 0) {
    if (quantize) {
      detail::gemm(grad_input, cache.grad_for_input, cache.weight, false);
    } else {
      detail::gemm(grad_input, grad_output, cache.weight, false);
    }
  }
  if (grad_weight.size() > 0) {
    if (quantize) {
      detail::gemm(grad_weight, cache.grad_for_weight.transpose(), cache.input, true);
    } else {
      detail::gemm(grad_weight, grad_output.transpose(), cache.input, true);
    }
  }
  if (grad_bias.size() > 0) detail::accumulate_column_sums<Scalar>(grad_output, grad_bias);
}

// =============================================================================================
// Conv2d
// =============================================================================================

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
/// only per-output-channel scales, so that choice is a simulation.
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

// =============================================================================================
// ReLU
// =============================================================================================

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

// =============================================================================================
// MaxPool2d
// =============================================================================================

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

// =============================================================================================
// BatchNorm2d
// =============================================================================================

/// \brief What batch_norm2d_backward needs: per-channel statistics and the normalised input.
template <class Scalar = float>
struct BatchNorm2dCache {
  /// True once batch_norm2d_forward has completed into this cache; false when default-constructed
  /// or when the last forward threw after it started filling the cache (batch_norm2d_backward
  /// then throws std::logic_error).
  bool complete = false;
  Index channels = 0;            ///< C
  Index spatial = 0;             ///< H·W
  bool batch_statistics = true;  ///< normalised with batch (true) or running (false) statistics
  Vector<Scalar> mean;           ///< per channel: the mean used
  Vector<Scalar> inv_std;        ///< per channel: 1/√(var + eps)
  Matrix<Scalar> normalized;     ///< x̂ = (x − mean)·inv_std, N × (C·H·W)
  Vector<double> squared_deviations;  ///< workspace: per channel Σ(x − mean)² of the batch
};

/// \brief Batch normalisation over N·H·W per channel (full precision, as in the paper):
/// y = γ·(x − μ)/√(σ² + ε) + β. With batch_statistics, μ and σ² (biased) come from the batch and,
/// if update_running, running_mean/running_var (unbiased variance) move by `momentum` toward them;
/// otherwise the running statistics are used. **Overwrites** output.
///
/// Every check runs before anything is written: on a throw the running statistics are unchanged,
/// and the cache is unchanged (a bad argument) or marked incomplete (batch statistics that
/// overflow the Scalar), so that batch_norm2d_backward throws std::logic_error.
/// \param input N × (C·H·W)
/// \param channels C (the number of columns must be a multiple of it)
/// \param gamma, beta per-channel scale and shift, size C, finite
/// \param running_mean, running_var size C, finite, running_var ≥ 0 (read when normalising with
///        them or updating them)
/// \param momentum in [0, 1]
/// \param eps finite and > 0
/// \throws std::invalid_argument on a bad size or hyper-parameter, std::domain_error on NaN/Inf in
///         the input, gamma, beta or the running statistics, or batch statistics that overflow
template <class Scalar>
void batch_norm2d_forward(const detail::ConstMatrix<Scalar>& input, Index channels,
                          const detail::ConstVector<Scalar>& gamma,
                          const detail::ConstVector<Scalar>& beta,
                          detail::OutVector<Scalar> running_mean,
                          detail::OutVector<Scalar> running_var,
                          detail::NonDeduced<Scalar> momentum, detail::NonDeduced<Scalar> eps,
                          bool batch_statistics, bool update_running,
                          BatchNorm2dCache<Scalar>& cache, detail::OutMatrix<Scalar> output) {
  constexpr const char* kWhere = "nn::batch_norm2d_forward";
  check(channels > 0 && input.cols() % channels == 0, kWhere, "input has ", input.cols(),
        " columns, not a multiple of channels = ", channels);
  check(gamma.size() == channels && beta.size() == channels && running_mean.size() == channels &&
            running_var.size() == channels,
        kWhere, "gamma, beta, running_mean and running_var must have size channels = ", channels,
        ", got ", gamma.size(), ", ", beta.size(), ", ", running_mean.size(), ", ",
        running_var.size());
  check(std::isfinite(eps) && eps > 0 && momentum >= 0 && momentum <= 1, kWhere,
        "need a finite eps > 0 and momentum in [0, 1], got eps ", eps, ", momentum ", momentum);
  const Index n = input.rows(), spatial = input.cols() / channels, count = n * spatial;
  check(!batch_statistics || count > 1, kWhere,
        "batch statistics need more than one value per channel, got N * H * W = ", count);
  detail::check_shape(output, n, input.cols(), kWhere, "output");
  detail::check_finite(input, kWhere, "input");
  detail::check_finite(gamma, kWhere, "gamma");
  detail::check_finite(beta, kWhere, "beta");
  const bool reads_running = !batch_statistics || update_running;
  if (reads_running) {
    detail::check_finite(running_mean, kWhere, "running_mean");
    detail::check_finite(running_var, kWhere, "running_var");
    for (Index c = 0; c < channels; ++c) {
      check(running_var(c) >= 0, kWhere, "running_var element ", c, " is ", running_var(c),
            "; a variance must be >= 0");
    }
  }

  // Every argument check has passed: from here on the cache is incomplete until the pass ends.
  cache.complete = false;
  cache.channels = channels;
  cache.spatial = spatial;
  cache.batch_statistics = batch_statistics;
  cache.mean.resize(channels);
  cache.inv_std.resize(channels);
  cache.squared_deviations.resize(channels);
  detail::ensure_shape(cache.normalized, n, input.cols());
  // Pass 1, batch statistics only: the mean (into cache.mean) and Σ(x − mean)² per channel.
  if (batch_statistics) {
    parallel_for(channels, count, [&](Index c) {
      double sum = 0;
      for (Index s = 0; s < n; ++s)
        sum += input.row(s).segment(c * spatial, spatial).template cast<double>().sum();
      const double m = sum / static_cast<double>(count);
      double sq = 0;
      for (Index s = 0; s < n; ++s) {
        sq += (input.row(s).segment(c * spatial, spatial).template cast<double>().array() - m)
                  .square()
                  .sum();
      }
      cache.mean(c) = static_cast<Scalar>(m);
      cache.squared_deviations(c) = sq;
    });
    // Finite inputs near the largest Scalar can still give an infinite mean or variance, which
    // would turn the output into NaN: refuse them before anything (running statistics) changes.
    for (Index c = 0; c < channels; ++c) {
      const double sq = cache.squared_deviations(c);
      check_domain(std::isfinite(cache.mean(c)) &&
                       std::isfinite(static_cast<Scalar>(sq / static_cast<double>(count - 1))),
                   kWhere, "the batch statistics of channel ", c, " overflow (mean ", cache.mean(c),
                   ", sum of squared deviations ", sq, ")");
    }
  }
  // Pass 2: running statistics, normalisation and output.
  parallel_for(channels, count, [&](Index c) {
    Scalar mean, var;
    if (batch_statistics) {
      const double sq = cache.squared_deviations(c);
      mean = cache.mean(c);
      var = static_cast<Scalar>(sq / static_cast<double>(count));
      if (update_running) {
        running_mean(c) = (1 - momentum) * running_mean(c) + momentum * mean;
        running_var(c) = (1 - momentum) * running_var(c) +
                         momentum * static_cast<Scalar>(sq / static_cast<double>(count - 1));
      }
    } else {
      mean = running_mean(c);
      var = running_var(c);
    }
    const Scalar inv_std = Scalar(1) / std::sqrt(var + eps);
    cache.mean(c) = mean;
    cache.inv_std(c) = inv_std;
    for (Index s = 0; s < n; ++s) {
      auto xhat = cache.normalized.row(s).segment(c * spatial, spatial);
      xhat = (input.row(s).segment(c * spatial, spatial).array() - mean) * inv_std;
      output.row(s).segment(c * spatial, spatial) = (xhat.array() * gamma(c) + beta(c)).matrix();
    }
  });
  cache.complete = true;
}

/// \brief Backward of batch_norm2d_forward. **Overwrites** grad_input; **accumulates**
/// grad_gamma and grad_beta (each may have size 0: not computed). With batch statistics:
/// ∂x = γ·inv_std/M·(M·∂y − Σ∂y − x̂·Σ(∂y·x̂)), M = N·H·W; with running statistics ∂x = γ·inv_std·∂y.
/// \throws std::logic_error when the cache holds no completed forward pass; std::invalid_argument
///         / std::domain_error on a bad size or NaN/Inf in grad_output or gamma, before anything
///         is written
template <class Scalar>
void batch_norm2d_backward(const detail::ConstMatrix<Scalar>& grad_output,
                           const detail::ConstVector<Scalar>& gamma,
                           const BatchNorm2dCache<Scalar>& cache,
                           detail::OutMatrix<Scalar> grad_input,
                           detail::OutVector<Scalar> grad_gamma,
                           detail::OutVector<Scalar> grad_beta) {
  constexpr const char* kWhere = "nn::batch_norm2d_backward";
  detail::require_complete_forward(cache.complete, kWhere, "nn::batch_norm2d_forward");
  const Index n = cache.normalized.rows(), c_count = cache.channels, spatial = cache.spatial;
  detail::check_shape(grad_output, n, cache.normalized.cols(), kWhere, "grad_output");
  if (grad_input.size() > 0)
    detail::check_shape(grad_input, n, cache.normalized.cols(), kWhere, "grad_input");
  check(gamma.size() == c_count, kWhere, "gamma has size ", gamma.size(), ", expected ", c_count);
  check(grad_gamma.size() == 0 || grad_gamma.size() == c_count, kWhere, "grad_gamma has size ",
        grad_gamma.size(), ", expected ", c_count, " (or 0)");
  check(grad_beta.size() == 0 || grad_beta.size() == c_count, kWhere, "grad_beta has size ",
        grad_beta.size(), ", expected ", c_count, " (or 0)");
  detail::check_finite(grad_output, kWhere, "grad_output");
  detail::check_finite(gamma, kWhere, "gamma");
  const double count = static_cast<double>(n * spatial);
  parallel_for(c_count, n * spatial, [&](Index c) {
    double sum_dy = 0, sum_dy_xhat = 0;
    for (Index s = 0; s < n; ++s) {
      const auto dy = grad_output.row(s).segment(c * spatial, spatial).template cast<double>();
      const auto xhat =
          cache.normalized.row(s).segment(c * spatial, spatial).template cast<double>();
      sum_dy += dy.sum();
      sum_dy_xhat += dy.dot(xhat);
    }
    if (grad_gamma.size() > 0) grad_gamma(c) += static_cast<Scalar>(sum_dy_xhat);
    if (grad_beta.size() > 0) grad_beta(c) += static_cast<Scalar>(sum_dy);
    if (grad_input.size() == 0) return;
    const Scalar scale = gamma(c) * cache.inv_std(c);
    for (Index s = 0; s < n; ++s) {
      auto dx = grad_input.row(s).segment(c * spatial, spatial);
      const auto dy = grad_output.row(s).segment(c * spatial, spatial);
      if (cache.batch_statistics) {
        const auto xhat = cache.normalized.row(s).segment(c * spatial, spatial);
        dx = (scale * (dy.array() - static_cast<Scalar>(sum_dy / count) -
                       xhat.array() * static_cast<Scalar>(sum_dy_xhat / count)))
                 .matrix();
      } else {
        dx = scale * dy;
      }
    }
  });
}

}  // namespace nn
}  // namespace fqt
