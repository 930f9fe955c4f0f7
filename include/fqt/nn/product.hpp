#pragma once
/// \file
/// \brief The quantized-product seam as the GEMM ops use it: `OperandStore` holds one operand of a
/// product — the codes a backend that multiplies codes consumes, or values — and the two steps
/// every quantized GEMM op takes: quantize its forward operands with Q_f, and its output gradient
/// with Q_b1 / Q_b2 from independent streams, in the form the policy's backend multiplies.

#include <stdexcept>
#include <string>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/quant/catalogue.hpp"

namespace fqt {
namespace nn {

/// \brief One operand of a product, owned: the codes and maps of a quantized matrix, or a matrix
/// of values (fake-quantized, bit-identical to dequantizing the codes, or not quantized at all).
/// Its buffers are reused from call to call, so a steady state allocates nothing.
template <class Scalar>
class OperandStore {
 public:
  /// \brief Stores Q(x) for the quantizer `spec`, drawing from `rng` if it is stochastic: as codes
  /// when `as_codes`, as values otherwise.
  /// \throws what the quantizer throws (std::domain_error on NaN/Inf or an overflowing range); the
  ///         store is then empty
  ///
  /// An adaptive quantizer (QuantizerKind::Adaptive) decides its candidate on the first call and
  /// then every `spec.every` calls of this store (QuantizerSpec::kDefaultEvery for 0), and reuses
  /// the decision in between (the store's calls are the layer's backward passes); a change of spec
  /// decides afresh.
  void quantize(const QuantizerSpec& spec, const MatrixCRef<Scalar>& x, const Philox& rng,
                bool as_codes) {
    filled_ = false;
    const AnyQuantizer<Scalar, Code> quantizer(spec);
    quantizer.visit([&](const auto& q) {
      using Q = std::decay_t<decltype(q)>;
      if constexpr (is_adaptive_quantizer_v<Q>) {
        const Index every = spec.every > 0 ? spec.every : QuantizerSpec::kDefaultEvery;
        const bool decide = choice_ < 0 || calls_ % every == 0 || !same(spec, decided_for_);
        const Index c = decide ? q.choose(x, rng) : choice_;
        if (as_codes) {
          q.quantize_with(c, x, rng, codes_);
        } else {
          detail::ensure_shape(values_, x.rows(), x.cols());
          q.fake_quantize_with(c, x, rng, values_);
        }
        if (decide) choice_ = c, decided_for_ = spec, calls_ = 0;
        ++calls_;
      } else if (as_codes) {
        q.quantize(x, rng, codes_);
      } else {
        detail::ensure_shape(values_, x.rows(), x.cols());
        q.fake_quantize(x, rng, values_);
      }
    });
    coded_ = as_codes;
    borrowed_ = false;
    filled_ = true;
  }

  /// \brief The candidate an adaptive quantizer last used in this store (an index into its
  /// candidates: PSQ, BHQ, Hadamard by default), −1 before any adaptive call.
  Index adaptive_choice() const { return choice_; }
  /// \brief Stores x itself (a copy).
  void assign(const MatrixCRef<Scalar>& x) {
    detail::ensure_shape(values_, x.rows(), x.cols());
    values_ = x;
    coded_ = false;
    borrowed_ = false;
    filled_ = true;
  }
  /// \brief Refers to x itself, without a copy: x must stay alive and unchanged while the store
  /// is used (until the matching backward pass).
  void borrow(const MatrixCRef<Scalar>& x) {
    borrowed_view_ = Operand<Scalar>::values(x);
    coded_ = false;
    borrowed_ = true;
    filled_ = true;
  }
  /// \brief True when the store refers to a caller's matrix (borrow) instead of owning a copy.
  bool borrowed() const { return borrowed_; }

  /// \brief The bytes the store owns (its codes and maps, its values; not a borrowed matrix).
  std::size_t bytes() const { return detail::bytes_total(codes_, values_); }

  /// \brief True when the store holds codes.
  bool coded() const { return coded_; }
  /// \brief The operand, for a backend.
  Operand<Scalar> operand() const {
    FQT_ASSERT(filled_);
    if (borrowed_) return borrowed_view_;
    return coded_ ? Operand<Scalar>::codes(codes_) : Operand<Scalar>::values(values_);
  }
  /// \brief The stored values; only when !coded() and !borrowed().
  const Matrix<Scalar>& values() const {
    FQT_ASSERT(filled_ && !coded_ && !borrowed_);
    return values_;
  }
  /// \brief The stored codes; only when coded().
  const Quantized<Scalar, Code>& codes() const {
    FQT_ASSERT(filled_ && coded_);
    return codes_;
  }

 private:
  static bool same(const QuantizerSpec& a, const QuantizerSpec& b) {
    return a.kind == b.kind && a.bits == b.bits && a.grid == b.grid && a.rounding == b.rounding &&
           a.block_size == b.block_size && a.every == b.every;
  }

  Quantized<Scalar, Code> codes_;
  Matrix<Scalar> values_;
  Operand<Scalar> borrowed_view_ = Operand<Scalar>::values(values_);
  bool coded_ = false;
  bool borrowed_ = false;
  bool filled_ = false;
  // The adaptive quantizer's decision: its candidate, the spec it was made for, and the calls
  // since.
  Index choice_ = -1;
  QuantizerSpec decided_for_;
  Index calls_ = 0;
};

namespace detail {

/// \brief Runs f(); a std::domain_error it throws (a quantizer's NaN/Inf or overflow) is rethrown
/// with "where: what: " before its message, so that it names the op and the argument.
template <class F>
void naming_argument(const char* where, const char* what, F&& f) {
  try {
    f();
  } catch (const std::domain_error& e) {
    throw std::domain_error(std::string(where) + ": " + what + ": " + e.what());
  }
}

}  // namespace detail

/// \brief The forward operand of a GEMM op: Q_f(x) with `spec` (the policy's activation_spec()
/// or weight_spec()) in Mode::QAT and Mode::FQT, x itself in Mode::Exact (borrowed without a copy
/// when `borrow`, else copied), stored as the policy's backend multiplies it. The caller has
/// checked x for NaN/Inf.
template <class Scalar>
void store_forward_operand(const QuantPolicy& policy, const QuantizerSpec& spec,
                           const MatrixCRef<Scalar>& x, OperandStore<Scalar>& store,
                           const char* where, const char* what, bool borrow = false) {
  if (!policy.quantizes_forward()) {
    if (borrow) {
      store.borrow(x);
    } else {
      store.assign(x);
    }
    return;
  }
  const bool codes = policy.product_backend().multiplies_codes();
  detail::naming_argument(where, what, [&] { store.quantize(spec, x, Philox(), codes); });
}

/// \brief The output gradient as the two backward products of a GEMM op take it.
template <class Scalar>
struct GradientOperands {
  Operand<Scalar> grad_input;   ///< Q_b1(G) (G itself outside Mode::FQT)
  Operand<Scalar> grad_weight;  ///< Q_b2(G) (G itself outside Mode::FQT)
};

/// \brief Quantizes G for the products a backward pass computes (`want_input`, `want_weight`)
/// in Mode::FQT — Q_b1 with streams.grad_input into `for_input`, Q_b2 for a layer of `channels`
/// output channels with streams.grad_weight into `for_weight` — in the form the policy's backend
/// multiplies. G is read once for NaN/Inf: by the first quantizer's range scan, or, when nothing
/// is quantized, by a check. Errors name `where` and "grad_output"; both quantizations run (and
/// may throw) before the caller writes any output.
template <class Scalar>
GradientOperands<Scalar> gradient_operands(const QuantPolicy& policy, const MatrixCRef<Scalar>& g,
                                           const GradientStreams& streams, Index channels,
                                           bool want_input, bool want_weight,
                                           OperandStore<Scalar>& for_input,
                                           OperandStore<Scalar>& for_weight, const char* where) {
  GradientOperands<Scalar> ops{Operand<Scalar>::values(g), Operand<Scalar>::values(g)};
  const bool input = want_input && policy.quantizes_grad_input();
  const bool weight = want_weight && policy.quantizes_grad_weight();
  if (!input && !weight) {
    detail::check_finite(g, where, "grad_output");
    return ops;
  }
  const bool codes = policy.product_backend().multiplies_codes();
  detail::naming_argument(where, "grad_output", [&] {
    if (input) for_input.quantize(policy.grad_input, g, streams.grad_input, codes);
    if (weight) {
      for_weight.quantize(policy.grad_weight_spec(channels), g, streams.grad_weight, codes);
    }
  });
  if (input) ops.grad_input = for_input.operand();
  if (weight) ops.grad_weight = for_weight.operand();
  return ops;
}

}  // namespace nn
}  // namespace fqt
