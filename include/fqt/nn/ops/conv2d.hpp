#pragma once
/// \file
/// \brief 2-D convolution as plain functions, by im2col and GEMM (see fqt/nn/functional.hpp for
/// the conventions of every op).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/detail/im2col.hpp"
#include "fqt/nn/geometry.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/product.hpp"

namespace fqt {
namespace nn {

/// \brief What conv2d_backward needs from conv2d_forward, plus its workspaces. The operands are
/// stored as the policy's backend multiplies them; with ConvColumns::Keep the backend keeps the
/// im2col columns of X̂ in its state, with Recompute it builds them again in the backward pass.
template <class Scalar = float>
struct Conv2dCache {
  /// True once conv2d_forward has completed into this cache; false when default-constructed or
  /// when the last forward threw after it started filling the cache (conv2d_backward then throws
  /// std::logic_error).
  bool complete = false;
  /// Mode::Exact refers to W instead of copying it (X is never copied): the caller then keeps W
  /// alive and unchanged until the matching backward (fqt's autograd layers do, and set this)
  bool borrow_exact_operands = false;
  /// Keep the whole batch's im2col columns between the passes (the default: one im2col per
  /// step), or keep only X̂ and build them again for the grad-weight product (the backend's
  /// buffers then do not grow with the batch; in Mode::Exact X is then referred to or copied as
  /// `borrow_exact_operands` says). Read by each forward pass; results are bit-identical.
  ConvColumns columns = ConvColumns::Keep;
  ConvColumns forward_columns = ConvColumns::Keep;  ///< what the last forward pass did
  /// The weight's 8-bit codes, when an optimizer stores them (nn::StoredWeight): with 8-bit
  /// forward weights, the product multiplies them instead of quantizing W (store_forward_weight)
  const QuantizedTensor<std::int8_t>* stored_weight = nullptr;
  QuantPolicy policy;       ///< the policy of the forward pass
  Conv2dGeometry geometry;  ///< the geometry of the forward pass
  Index batch = 0;          ///< N
  /// X̂ = Q_f(X), N × (C·H·W); in Mode::Exact X with ConvColumns::Recompute, unused with Keep
  OperandStore<Scalar> input;
  OperandStore<Scalar> weight;           ///< Ŵ = Q_f(W) (W in Mode::Exact), K × (C·kh·kw)
  OperandStore<Scalar> grad_for_input;   ///< workspace: Q_b1(G), N × (K·Ho·Wo)
  OperandStore<Scalar> grad_for_weight;  ///< workspace: Q_b2(G), N × (K·Ho·Wo)
  std::unique_ptr<BackendState> state;   ///< the backend's: im2col columns of X̂, workspaces

  /// \brief The bytes this cache holds: its operand stores and the backend's state.
  std::size_t bytes() const {
    return input.bytes() + weight.bytes() + grad_for_input.bytes() + grad_for_weight.bytes() +
           detail::bytes_of(state);
  }
};

/// \brief Y = conv(Q_f(X), Q_f(W)) + b (Exact: conv(X, W) + b), by im2col and GEMM on the
/// policy's backend. **Overwrites** output.
/// \param input X, N × (C·H·W) (NCHW rows)
/// \param weight W, K × (C·kh·kw) (empty when cache.stored_weight stands in for it: see
///        weight_shape)
/// \param bias b, size K, or size 0 for no bias (never quantized)
/// \param geometry the convolution's shape (validated)
/// \param policy mode, quantizers and backend; recorded in the cache
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
  policy.validate(kWhere, Contraction::RowsAndChannels);
  geometry.validate(kWhere);
  const Conv2dGeometry& g = geometry;
  check(input.cols() == g.input_size(), kWhere, "input has ", input.cols(),
        " columns per sample, expected in_channels * in_height * in_width = ", g.in_channels, " * ",
        g.in_height, " * ", g.in_width, " = ", g.input_size());
  const auto [weight_rows, weight_cols] = weight_shape(policy, weight, cache.stored_weight, kWhere);
  check(weight_rows == g.out_channels && weight_cols == g.patch_size(), kWhere,
        "weight must be out_channels x (in_channels * kernel_height * kernel_width) = ",
        g.out_channels, " x ", g.patch_size(), ", got ", weight_rows, " x ", weight_cols);
  check(bias.size() == 0 || bias.size() == g.out_channels, kWhere, "bias has size ", bias.size(),
        ", expected ", g.out_channels, " (or 0 for no bias)");
  detail::check_shape(output, input.rows(), g.output_size(), kWhere, "output");
  const Index n = input.rows(), plane = g.out_plane();
  // The im2col buffer of the batch, (N·C·kh·kw) × (Ho·Wo).
  detail::checked_product(
      kWhere, "batch * in_channels * kernel_height * kernel_width * out_height * out_width",
      {n, g.in_channels, g.kernel_height, g.kernel_width, g.out_height(), g.out_width()});
  detail::check_finite(input, kWhere, "input");
  detail::check_finite(weight, kWhere, "weight");
  detail::check_finite(bias, kWhere, "bias");
  check_stored_weight(policy, cache.stored_weight, weight_rows, weight_cols, kWhere);

  // Every check has passed: from here on the cache is incomplete until the pass finishes.
  cache.complete = false;
  cache.policy = policy;
  cache.geometry = g;
  cache.batch = n;
  cache.forward_columns = cache.columns;
  store_forward_weight<Scalar>(policy, weight, cache.stored_weight, cache.weight, kWhere,
                               cache.borrow_exact_operands);
  // In Mode::Exact the backend reads X itself: no copy, unless the backward needs X again.
  Operand<Scalar> x = Operand<Scalar>::values(input);
  const bool recompute = cache.columns == ConvColumns::Recompute;
  if (policy.quantizes_forward() || recompute) {
    store_forward_operand<Scalar>(policy, policy.activation_spec(), input, cache.input, kWhere,
                                  "input", cache.borrow_exact_operands);
    x = cache.input.operand();
  }
  policy.product_backend().conv_forward(g, x, cache.weight.operand(), output, cache.columns,
                                        cache.state);
  if (bias.size() > 0) {
    for (Index s = 0; s < n; ++s) {
      detail::RowMap<Scalar>(output.data() + s * output.outerStride(), g.out_channels, plane)
          .colwise() += bias;
    }
  }
  cache.complete = true;
}

/// \brief Backward of conv2d_forward with the straight-through estimator through Q_f.
///
/// G (N × (K·Ho·Wo), one row per sample) is quantized for grad-input with Q_b1 over its sample
/// rows and, independently, for grad-weight with Q_b2 (Mode::FQT; the identity otherwise). Per
/// sample n: grad_input_n = col2im(Ŵᵀ·Q_b1(G)_n), grad_weight += Q_b2(G)_n·columns(X̂_n)ᵀ, and
/// grad_bias += the per-channel sums of G_n (full precision). Per-column Q_b2 takes one range per
/// (k, oy, ox) column over the batch, as the reference does; its scales vary along the
/// grad-weight contraction, so only the simulated backend runs it (a backend that multiplies
/// codes needs PerTensor or PerChannel there).
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
  const Index n = cache.batch, patch = g.patch_size(), plane = g.out_plane();
  const Index k = g.out_channels;
  detail::check_shape(grad_output, n, g.output_size(), kWhere, "grad_output");
  if (grad_input.size() > 0)
    detail::check_shape(grad_input, n, g.input_size(), kWhere, "grad_input");
  if (grad_weight.size() > 0) detail::check_shape(grad_weight, k, patch, kWhere, "grad_weight");
  check(grad_bias.size() == 0 || grad_bias.size() == k, kWhere, "grad_bias has size ",
        grad_bias.size(), ", expected ", k, " (or 0)");

  const QuantPolicy& policy = cache.policy;
  const bool want_input = grad_input.size() > 0, want_weight = grad_weight.size() > 0;
  // Both quantizations (which can throw) run before any output is written.
  const GradientOperands<Scalar> gq =
      gradient_operands<Scalar>(policy, grad_output, streams, k, want_input, want_weight,
                                cache.grad_for_input, cache.grad_for_weight, kWhere);
  const Backend& backend = policy.product_backend();
  if (want_input)
    backend.conv_grad_input(g, gq.grad_input, cache.weight.operand(), grad_input, cache.state);
  if (want_weight) {
    const Operand<Scalar> x = cache.forward_columns == ConvColumns::Recompute
                                  ? cache.input.operand()
                                  : Operand<Scalar>::none();
    backend.conv_grad_weight(g, gq.grad_weight, x, grad_weight, cache.state);
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
