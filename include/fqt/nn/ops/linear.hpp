#pragma once
/// \file
/// \brief Linear layer as plain functions: Y = Q_f(X)·Q_f(W)ᵀ + b and its backward (see
/// fqt/nn/functional.hpp for the conventions of every op).

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/detail/kernels.hpp"
#include "fqt/nn/policy.hpp"

namespace fqt {
namespace nn {

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

}  // namespace nn
}  // namespace fqt
