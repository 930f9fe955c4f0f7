#pragma once
/// \file
/// \brief Linear layer as plain functions: Y = Q_f(X)·Q_f(W)ᵀ + b and its backward (see
/// fqt/nn/functional.hpp for the conventions of every op).

#include <memory>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/product.hpp"

namespace fqt {
namespace nn {

/// \brief What linear_backward needs from linear_forward, plus its workspaces. The operands are
/// stored as the policy's backend multiplies them: codes for a backend that multiplies codes,
/// (fake-quantized) values for the simulated one.
template <class Scalar = float>
struct LinearCache {
  /// True once linear_forward has completed into this cache; false when default-constructed or
  /// when the last forward threw after it started filling the cache (linear_backward then throws
  /// std::logic_error).
  bool complete = false;
  /// Mode::Exact refers to X and W instead of copying them: the caller then keeps both alive and
  /// unchanged until the matching backward (fqt's autograd layers do, and set this)
  bool borrow_exact_operands = false;
  /// The weight's 8-bit codes, when an optimizer stores them (nn::StoredWeight): with 8-bit
  /// forward weights, the product multiplies them instead of quantizing W (store_forward_weight)
  const QuantizedTensor<std::int8_t>* stored_weight = nullptr;
  QuantPolicy policy;          ///< the policy of the forward pass (backward follows it)
  OperandStore<Scalar> input;  ///< X̂ = Q_f(X) (X itself, or a view of it, in Mode::Exact), N × in
  OperandStore<Scalar>
      weight;  ///< Ŵ = Q_f(W) (W itself, or a view of it, in Mode::Exact), out × in
  OperandStore<Scalar> grad_for_input;                 ///< workspace: Q_b1(G), N × out
  OperandStore<Scalar> grad_for_weight;                ///< workspace: Q_b2(G), N × out
  Index batch = 0, in_features = 0, out_features = 0;  ///< N, in, out of the forward pass
  std::unique_ptr<BackendState> state;                 ///< the backend's workspaces

  /// \brief The bytes this cache holds: its operand stores and the backend's state.
  std::size_t bytes() const {
    return input.bytes() + weight.bytes() + grad_for_input.bytes() + grad_for_weight.bytes() +
           detail::bytes_of(state);
  }
};

/// \brief Y = Q_f(X)·Q_f(W)ᵀ + b (Exact: Y = X·Wᵀ + b), the product computed by the policy's
/// backend. **Overwrites** output.
/// \param input X, N × in (one sample per row)
/// \param weight W, out × in (empty when cache.stored_weight stands in for it: see weight_shape)
/// \param bias b, size out, or size 0 for no bias (never quantized)
/// \param policy mode, quantizers and backend; recorded in the cache for the backward pass
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
  policy.validate(kWhere, Contraction::Rows);
  const auto [out, in] = weight_shape(policy, weight, cache.stored_weight, kWhere);
  check(input.cols() == in, kWhere, "input has ", input.cols(), " features but weight (", out,
        " x ", in, ") expects ", in);
  check(bias.size() == 0 || bias.size() == out, kWhere, "bias has size ", bias.size(),
        ", expected ", out, " (or 0 for no bias)");
  detail::check_shape(output, input.rows(), out, kWhere, "output");
  detail::check_finite(input, kWhere, "input");
  detail::check_finite(weight, kWhere, "weight");
  detail::check_finite(bias, kWhere, "bias");
  check_stored_weight(policy, cache.stored_weight, out, in, kWhere);

  // Every check has passed: from here on the cache is incomplete until the pass finishes.
  cache.complete = false;
  cache.policy = policy;
  cache.batch = input.rows();
  cache.in_features = input.cols();
  cache.out_features = out;
  store_forward_operand<Scalar>(policy, policy.activation_spec(), input, cache.input, kWhere,
                                "input", cache.borrow_exact_operands);
  store_forward_weight<Scalar>(policy, weight, cache.stored_weight, cache.weight, kWhere,
                               cache.borrow_exact_operands);
  policy.product_backend().linear_forward(cache.input.operand(), cache.weight.operand(), output,
                                          cache.state);
  if (bias.size() > 0) output.rowwise() += bias.transpose();
  cache.complete = true;
}

/// \brief Backward of linear_forward with the straight-through estimator through Q_f.
///
/// With G the output gradient: grad_input = Q_b1(G)·Ŵ, grad_weight += Q_b2(G)ᵀ·X̂ and
/// grad_bias += Σ_rows G, where Q_b1, Q_b2 are the policy's gradient quantizers in Mode::FQT
/// (drawing from streams.grad_input and streams.grad_weight) and the identity otherwise. The
/// products run on the policy's backend.
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
  const Index n = cache.batch, in = cache.in_features, out = cache.out_features;
  detail::check_shape(grad_output, n, out, kWhere, "grad_output");
  if (grad_input.size() > 0) detail::check_shape(grad_input, n, in, kWhere, "grad_input");
  if (grad_weight.size() > 0) detail::check_shape(grad_weight, out, in, kWhere, "grad_weight");
  check(grad_bias.size() == 0 || grad_bias.size() == out, kWhere, "grad_bias has size ",
        grad_bias.size(), ", expected ", out, " (or 0)");

  const QuantPolicy& policy = cache.policy;
  const bool want_input = grad_input.size() > 0, want_weight = grad_weight.size() > 0;
  // Both quantizations (which can throw) run before any output is written.
  const GradientOperands<Scalar> g =
      gradient_operands<Scalar>(policy, grad_output, streams, out, want_input, want_weight,
                                cache.grad_for_input, cache.grad_for_weight, kWhere);
  const Backend& backend = policy.product_backend();
  if (want_input)
    backend.linear_grad_input(g.grad_input, cache.weight.operand(), grad_input, cache.state);
  if (want_weight)
    backend.linear_grad_weight(g.grad_weight, cache.input.operand(), grad_weight, cache.state);
  // Full precision, a fixed summation order.
  if (grad_bias.size() > 0) {
    for (Index i = 0; i < n; ++i) grad_bias += grad_output.row(i).transpose();
  }
}

}  // namespace nn
}  // namespace fqt
