#pragma once
/// \file
/// \brief The quantized-product seam as the GEMM ops use it: `OperandStore` holds one operand of a
/// product — the codes a backend that multiplies codes consumes, or values — and the two steps
/// every quantized GEMM op takes: quantize its forward operands with Q_f, and its output gradient
/// with Q_b1 / Q_b2 from independent streams, in the form the policy's backend multiplies.

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/weight_storage.hpp"
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

  /// \brief Stores a weight kept as 8-bit codes (nn::QuantizedTensor) as the operand itself,
  /// with no quantizer: as codes (c + 128 with zero point 128, one step per row or per tensor)
  /// when `as_codes`, else as its values — bit-identical to dequantizing those codes.
  void assign_stored(const QuantizedTensor<std::int8_t>& t, bool as_codes) {
    filled_ = false;
    if (as_codes) {
      detail::ensure_shape(codes_.codes, t.rows(), t.cols());
      const std::int8_t* from = t.codes().data();
      Code* to = codes_.codes.data();  // row-major, as the tensor's codes
      for (Index k = 0; k < codes_.codes.size(); ++k) to[k] = static_cast<Code>(int(from[k]) + 128);
      const auto groups = static_cast<Index>(t.steps().size());
      codes_.granularity = t.per_row() ? Granularity::PerRow : Granularity::PerTensor;
      if (codes_.scale.size() != groups) codes_.scale.resize(groups);
      if (codes_.zero_point.size() != groups) codes_.zero_point.resize(groups);
      for (Index k = 0; k < groups; ++k) codes_.scale(k) = static_cast<Scalar>(t.steps()[k]);
      codes_.zero_point.setConstant(Scalar(128));
      codes_.bits = 8;
      codes_.transform.reset();
    } else {
      detail::ensure_shape(values_, t.rows(), t.cols());
      t.read(values_);
    }
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

/// \brief True when the forward product multiplies a weight's stored 8-bit codes
/// (nn::StoredWeight) as Q_f(W): they exist and the policy quantizes the forward pass to 8-bit
/// weights. The weight is then already on an 8-bit grid, so nothing is re-quantized; below 8
/// forward bits, and in Mode::Exact, the float view is read instead.
inline bool uses_stored_weight(const QuantPolicy& policy,
                               const QuantizedTensor<std::int8_t>* stored) {
  return stored != nullptr && policy.quantizes_forward() && policy.weight_bits == 8;
}

/// \brief Throws std::invalid_argument, naming `where`, unless stored codes the forward product
/// would use fit: their shape is the weight's (rows × cols), and when the policy's backend
/// multiplies codes they have one step per tensor (its grad-input product contracts over the
/// weight's rows, and its conv kernels take one weight scale).
inline void check_stored_weight(const QuantPolicy& policy,
                                const QuantizedTensor<std::int8_t>* stored, Index rows, Index cols,
                                const char* where) {
  if (!uses_stored_weight(policy, stored)) return;
  check(stored->rows() == rows && stored->cols() == cols, where, "the weight's stored codes are ",
        stored->rows(), " x ", stored->cols(), ", the weight ", rows, " x ", cols);
  check(!policy.product_backend().multiplies_codes() || !stored->per_row(), where,
        "the weight's codes have one step per row, which the ", policy.product_backend().name(),
        " backend cannot multiply (its grad-input product contracts over the rows); store them "
        "with one step per tensor (WeightStorageOptions::per_row = false)");
}

/// \brief The shape of a GEMM op's weight: `weight`'s, or, when `weight` is empty and stored
/// codes stand in for it (an optimizer released the float view: WeightStorageOptions::
/// keep_views), the codes'.
/// \throws std::invalid_argument, naming `where`, when the view is released but the policy
///         reads float weights (Mode::Exact, forward weight bits below 8, or the forward pass
///         not quantized)
template <class Derived>
std::pair<Index, Index> weight_shape(const QuantPolicy& policy,
                                     const Eigen::MatrixBase<Derived>& weight,
                                     const QuantizedTensor<std::int8_t>* stored,
                                     const char* where) {
  const bool released =
      weight.size() == 0 && stored != nullptr && stored->rows() * stored->cols() > 0;
  if (!released) return {weight.rows(), weight.cols()};
  check(uses_stored_weight(policy, stored), where,
        "the weight's float view is released (WeightStorageOptions::keep_views = false), but ",
        "the policy reads float weights (", to_string(policy.mode), ", forward weight bits ",
        policy.weight_bits, policy.quantizes_forward() ? "" : ", forward pass not quantized",
        "): only an 8-bit quantized forward pass multiplies the codes");
  return {stored->rows(), stored->cols()};
}

/// \brief The forward weight operand of a GEMM op: the stored codes when uses_stored_weight
/// (checked by check_stored_weight; `weight`, their dequantized view, is then not read), else
/// store_forward_operand with the policy's weight_spec().
template <class Scalar>
void store_forward_weight(const QuantPolicy& policy, const MatrixCRef<Scalar>& weight,
                          const QuantizedTensor<std::int8_t>* stored, OperandStore<Scalar>& store,
                          const char* where, bool borrow = false) {
  if (uses_stored_weight(policy, stored)) {
    store.assign_stored(*stored, policy.product_backend().multiplies_codes());
  } else {
    store_forward_operand<Scalar>(policy, policy.weight_spec(), weight, store, where, "weight",
                                  borrow);
  }
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
