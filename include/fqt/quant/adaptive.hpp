#pragma once
/// \file
/// \brief The adaptive quantizer: of a few candidate grad-input quantizers (by default PSQ, BHQ
/// and Hadamard, each on Grid::Auto), the one of least exact variance for the input at hand.

#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/block_householder.hpp"
#include "fqt/quant/hadamard.hpp"
#include "fqt/quant/per_sample.hpp"
#include "fqt/quant/per_tensor.hpp"
#include "fqt/quant/quantized.hpp"

namespace fqt {

/// \brief Quantizes with whichever of its candidates has the least exact variance
/// `expected_variance` on this input (for Hadamard: with the signs of this call's stream). Its
/// BHQ candidate mixes only the groups it helps (BhqMixing::WhereItHelps), so it is never worse
/// than PSQ on the same grid.
///
/// The choice is a function of x and of the Hadamard signs, which come from a part of the stream
/// the rounding never uses; given them, every candidate is unbiased, so the adaptive quantizer is
/// unbiased too, and its variance is exactly the chosen candidate's. Every candidate's scales are
/// constant along the columns of its input, so its codes feed an integer grad-input GEMM. The
/// choice costs one exact-variance pass per candidate (each a transform and a pass over the
/// input); `choose` and `quantize_with` let a caller decide once every k steps instead (the nn
/// layers do, see QuantizerSpec::every).
/// \tparam Scalar float or double
/// \tparam Rounding Stochastic or Nearest
/// \tparam Code std::uint8_t (≤ 8 bits) or std::uint16_t
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
class AdaptiveQuantizer {
 public:
  using scalar_type = Scalar;
  using code_type = Code;
  using rounding_type = Rounding;
  static constexpr Granularity granularity = Granularity::PerRow;
  /// One candidate: any quantizer whose scales are constant along the columns.
  using Candidate = std::variant<
      PerTensorQuantizer<Scalar, Rounding, Code>, PerSampleQuantizer<Scalar, Rounding, Code>,
      BlockHouseholderQuantizer<Scalar, Rounding, Code>, HadamardQuantizer<Scalar, Rounding, Code>>;
  /// The candidate kinds accepted, in the order of `Candidate`.
  enum class Kind { PerTensor, PerSample, BlockHouseholder, Hadamard };

  /// \param bits 1 ≤ bits ≤ 8·sizeof(Code)
  /// \param grid the grid of every candidate
  /// \param kinds the candidates, in order of preference on ties (none twice, at least one)
  /// \param hadamard_block the Hadamard candidate's block size
  explicit AdaptiveQuantizer(int bits, Grid grid = Grid::Auto,
                             std::vector<Kind> kinds = {Kind::PerSample, Kind::BlockHouseholder,
                                                        Kind::Hadamard},
                             Index hadamard_block = HadamardQuantizer<Scalar>::kDefaultBlockSize)
      : bits_(bits), grid_(grid) {
    detail::check_bits<Scalar>(bits, 8 * static_cast<int>(sizeof(Code)), name());
    check(!kinds.empty(), name(), "needs at least one candidate");
    for (std::size_t i = 0; i < kinds.size(); ++i) {
      const int k = static_cast<int>(kinds[i]);
      check(k >= 0 && k < static_cast<int>(std::variant_size_v<Candidate>), name(), "candidate ", i,
            " is no kind (", k, ")");
      for (std::size_t j = 0; j < i; ++j)
        check(kinds[j] != kinds[i], name(), "candidate ", i, " repeats candidate ", j);
      candidates_.push_back(make(kinds[i], bits, grid, hadamard_block));
    }
    kinds_ = std::move(kinds);
  }

  static constexpr const char* name() { return "AdaptiveQuantizer"; }
  int bits() const { return bits_; }
  Grid grid() const { return grid_; }
  int max_code() const { return detail::max_code(bits_); }
  /// The candidates' kinds, in order.
  const std::vector<Kind>& kinds() const { return kinds_; }
  /// The number of candidates.
  Index candidates() const { return static_cast<Index>(candidates_.size()); }
  /// The candidate at `index`.
  const Candidate& candidate(Index index) const { return candidates_.at(checked(index)); }

  /// \brief Exact E‖Q_c(x) − x‖² of candidate c for a call with stream `rng`.
  Scalar candidate_variance(Index c, const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return std::visit([&](const auto& q) { return variance_of(q, x, rng); },
                      candidates_[checked(c)]);
  }

  /// \brief The candidate a call quantize(x, rng) uses: the least candidate_variance, the first
  /// on ties.
  Index choose(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Index best = 0;
    Scalar least = std::numeric_limits<Scalar>::infinity();
    for (Index c = 0; c < candidates(); ++c) {
      const Scalar v = candidate_variance(c, x, rng);
      if (v < least) least = v, best = c;
    }
    return best;
  }

  /// \brief Quantizes x with candidate c (a decision made earlier, e.g. by `choose` on an earlier
  /// step); q carries that candidate's transform.
  void quantize_with(Index c, const MatrixCRef<Scalar>& x, const Philox& rng,
                     Quantized<Scalar, Code>& q) const {
    std::visit([&](const auto& quantizer) { quantizer.quantize(x, rng, q); },
               candidates_[checked(c)]);
  }
  /// \brief Fake quantization with candidate c into out (same shape as x).
  void fake_quantize_with(Index c, const MatrixCRef<Scalar>& x, const Philox& rng,
                          MatrixRef<Scalar> out) const {
    std::visit([&](const auto& quantizer) { quantizer.fake_quantize(x, rng, out); },
               candidates_[checked(c)]);
  }

  /// \brief Quantizes x with choose(x, rng).
  void quantize(const MatrixCRef<Scalar>& x, const Philox& rng, Quantized<Scalar, Code>& q) const {
    quantize_with(choose(x, rng), x, rng, q);
  }
  /// \brief Quantizes x with choose(x, rng).
  Quantized<Scalar, Code> quantize(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Quantized<Scalar, Code> q;
    quantize(x, rng, q);
    return q;
  }
  /// \brief Fake quantization with choose(x, rng) into out (same shape as x); overwrites out.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Philox& rng, MatrixRef<Scalar> out) const {
    fake_quantize_with(choose(x, rng), x, rng, out);
  }
  /// \brief Fake quantization.
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Matrix<Scalar> out(x.rows(), x.cols());
    fake_quantize(x, rng, out);
    return out;
  }

  /// \brief Exact E‖Q(x) − x‖² of a call with stream `rng`: the least candidate variance.
  Scalar expected_variance(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return candidate_variance(choose(x, rng), x, rng);
  }
  /// \brief expected_variance with the default stream Philox() (as HadamardQuantizer's).
  Scalar expected_variance(const MatrixCRef<Scalar>& x) const {
    return expected_variance(x, Philox());
  }
  /// \brief Exact per-element variance of a call with stream `rng`.
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return std::visit([&](const auto& q) { return element_variance_of(q, x, rng); },
                      candidates_[choose(x, rng)]);
  }
  /// \brief element_variance with the default stream.
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x) const {
    return element_variance(x, Philox());
  }
  /// \brief The paper's bound Σ Δ²/4 of the candidate a call with stream `rng` chooses.
  Scalar variance_bound(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return std::visit([&](const auto& q) { return bound_of(q, x, rng); },
                      candidates_[choose(x, rng)]);
  }
  /// \brief variance_bound with the default stream.
  Scalar variance_bound(const MatrixCRef<Scalar>& x) const { return variance_bound(x, Philox()); }

 private:
  template <class Q>
  static constexpr bool kDrawsTransform =
      std::is_same_v<Q, HadamardQuantizer<Scalar, Rounding, Code>>;

  template <class Q>
  static Scalar variance_of(const Q& q, const MatrixCRef<Scalar>& x, const Philox& rng) {
    if constexpr (kDrawsTransform<Q>)
      return q.expected_variance(x, rng);
    else
      return q.expected_variance(x);
  }
  template <class Q>
  static Matrix<double> element_variance_of(const Q& q, const MatrixCRef<Scalar>& x,
                                            const Philox& rng) {
    if constexpr (kDrawsTransform<Q>)
      return q.element_variance(x, rng);
    else
      return q.element_variance(x);
  }
  template <class Q>
  static Scalar bound_of(const Q& q, const MatrixCRef<Scalar>& x, const Philox& rng) {
    if constexpr (kDrawsTransform<Q>)
      return q.variance_bound(x, rng);
    else
      return q.variance_bound(x);
  }

  std::size_t checked(Index c) const {
    check(c >= 0 && c < candidates(), name(), "candidate index ", c, " is not in [0, ",
          candidates(), ")");
    return static_cast<std::size_t>(c);
  }

  static Candidate make(Kind kind, int bits, Grid grid, Index block) {
    switch (kind) {
      case Kind::PerTensor:
        return PerTensorQuantizer<Scalar, Rounding, Code>(bits, grid);
      case Kind::PerSample:
        return PerSampleQuantizer<Scalar, Rounding, Code>(bits, grid);
      case Kind::BlockHouseholder:
        return BlockHouseholderQuantizer<Scalar, Rounding, Code>(bits, grid,
                                                                 BhqMixing::WhereItHelps);
      case Kind::Hadamard:
        break;
    }
    return HadamardQuantizer<Scalar, Rounding, Code>(bits, grid, block);
  }

  int bits_;
  Grid grid_;
  std::vector<Kind> kinds_;
  std::vector<Candidate> candidates_;
};

/// \brief True for the AdaptiveQuantizer classes.
template <class T>
struct is_adaptive_quantizer : std::false_type {};
template <class Scalar, class Rounding, class Code>
struct is_adaptive_quantizer<AdaptiveQuantizer<Scalar, Rounding, Code>> : std::true_type {};
template <class T>
inline constexpr bool is_adaptive_quantizer_v = is_adaptive_quantizer<T>::value;

}  // namespace fqt
