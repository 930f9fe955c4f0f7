#pragma once
/// \file
/// \brief The Hadamard quantizer: Q(G) = Tᵀ·Q_psq(T·G) with T a randomized block Hadamard
/// transform along the sample dimension (the rows), drawn from the call's Philox stream.

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/affine.hpp"
#include "fqt/quant/per_sample.hpp"
#include "fqt/quant/quantized.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {

/// \brief Hadamard quantizer: Q(G) = T⁻¹·Q_psq(T·G), T = blockdiag(H_m·diag(σ)/√m) over blocks
/// of b consecutive rows (samples), σ random signs.
///
/// Mixing the samples of a block spreads a value that is large in one row over all m rows of its
/// block, so the per-row grids of T·G are set by ‖column‖-like averages rather than by each row's
/// extremes; T mixes rows only, so it commutes with ∇X = G·W: ∇X = Tᵀ·(Q(T·G)·W), and an integer
/// GEMM runs on the codes and applies Tᵀ to its N-row result. T is orthogonal, so the
/// quantization noise keeps its Frobenius norm: given the signs, E‖Q(G) − G‖² is exactly PSQ's
/// variance of T·G, Σ_r Σ_j Δ_r²·p_rj(1 − p_rj) ≤ (D/4)·Σ_r Δ_r² with Δ_r the step of row r of
/// T·G. Unbiased for Stochastic rounding, given the signs and so also over them.
///
/// **Randomness.** A call with stream `rng` draws the sign of row i from bit i mod 32 of word
/// (i/32) mod 4 of Philox block 2⁶³ + ⌊i/128⌋ of `rng` — counters that the rounding noise (blocks
/// below 2⁶⁰ for any matrix that fits in memory) never uses, so signs and noise are independent
/// and both are pure functions of (seed, stream). The rounding noise is PSQ's: keyed by the
/// element's row-major index, so codes do not depend on the thread count. With Nearest rounding
/// the signs are those of the default stream Philox(): the quantizer is deterministic.
///
/// **Blocks.** b is a power of two (default `kDefaultBlockSize`); ⌊N/b⌋ full blocks, then the
/// rows left over split into the largest powers of two that fit; a last single row is left as it
/// is (see HadamardTransform). Cost: N·log₂b·D additions for T, the same again for T⁻¹ in fake
/// quantization, on strips of columns that stay in L1; the rows of a block stay in L2 between the
/// transform and the rounding, so G is read from memory once, as by PSQ.
///
/// **Variances.** `expected_variance(x, t)`, `element_variance(x, t)` and `variance_bound(x, t)`
/// are exact for a given transform t; with a stream in place of t, for the transform that stream
/// draws (`transform_for(rows, rng)`), i.e. the variance of `quantize(x, rng)` over its rounding
/// noise. The one-argument forms, which generic code calls (AnyQuantizer, stats, benchmarks), use
/// the signs of the default stream `Philox()`: one exact draw. The variance averaged over the
/// signs too — what Monte-Carlo over streams measures — is the mean of expected_variance(x, rng)
/// over streams; it differs from one draw by the spread of the variance over sign patterns, which
/// is a few percent on wide gradients (see README).
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
class HadamardQuantizer {
 public:
  using scalar_type = Scalar;
  using code_type = Code;
  using rounding_type = Rounding;
  using Transform = HadamardTransform<Scalar>;
  static constexpr Granularity granularity = Granularity::PerRow;
  /// The default block size b (chosen by measurement; see README, "The Hadamard quantizer").
  static constexpr Index kDefaultBlockSize = 16;
  /// The largest block size accepted.
  static constexpr Index kMaxBlockSize = Index{1} << 16;

  /// \param bits 1 ≤ bits ≤ 8·sizeof(Code)
  /// \param grid the grid of each transformed row
  /// \param block_size b: a power of two in [1, 65536] (1 is PSQ)
  explicit HadamardQuantizer(int bits, Grid grid = Grid::Auto, Index block_size = kDefaultBlockSize)
      : row_quantizer_(check_bits(bits), grid), block_(block_size) {
    check(block_size >= 1 && block_size <= kMaxBlockSize && (block_size & (block_size - 1)) == 0,
          name(), "block_size must be a power of two in [1, ", kMaxBlockSize, "], got ",
          block_size);
  }

  static constexpr const char* name() { return "HadamardQuantizer"; }
  int bits() const { return row_quantizer_.bits(); }
  Grid grid() const { return row_quantizer_.grid(); }
  int max_code() const { return row_quantizer_.max_code(); }
  /// The block size b.
  Index block_size() const { return block_; }

  /// \brief The transform a call with stream `rng` uses on a matrix of `rows` rows. With Nearest
  /// rounding the signs are those of Philox() whatever `rng` is: a deterministic quantizer
  /// consumes no randomness, as every Nearest quantizer.
  Transform transform_for(Index rows, const Philox& rng) const {
    check(rows >= 0, name(), "::transform_for: rows must be >= 0, got ", rows);
    const Philox source = Rounding::is_stochastic ? rng : Philox();
    Vector<Scalar> signs(rows);
    for (Index base = 0; base < rows; base += 128) {
      const auto words = source.block(kSignCounter + static_cast<std::uint64_t>(base / 128));
      for (Index i = base; i < std::min(rows, base + 128); ++i) {
        const std::uint32_t word = words[static_cast<std::size_t>((i / 32) % 4)];
        signs(i) = (word >> (i % 32)) & 1u ? Scalar(-1) : Scalar(1);
      }
    }
    return Transform(block_, std::move(signs));
  }

  /// \brief Quantizes T·x row by row, T = transform_for(x.rows(), rng); the result carries T
  /// (dequantize applies T⁻¹).
  Quantized<Scalar, Code> quantize(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Quantized<Scalar, Code> q;
    quantize(x, rng, q);
    return q;
  }

  /// \brief Quantizes into q, reusing q's code storage when the shape is unchanged.
  void quantize(const MatrixCRef<Scalar>& x, const Philox& rng, Quantized<Scalar, Code>& q) const {
    quantize(x, transform_for(x.rows(), rng), rng, q);
  }

  /// \brief Quantizes T·x with a given transform t (rows as x's); `rng` gives the rounding noise
  /// only. With t = transform_for(x.rows(), rng) this is quantize(x, rng, q).
  void quantize(const MatrixCRef<Scalar>& x, const Transform& t, const Philox& rng,
                Quantized<Scalar, Code>& q) const {
    check_transform(x, t, "::quantize");
    q.granularity = Granularity::PerRow;
    q.bits = bits();
    q.codes.resize(x.rows(), x.cols());
    q.scale.resize(x.rows());
    q.zero_point.resize(x.rows());
    quantize_blocks(x, t, rng, q.codes.data(), q.codes.cols(), &q.scale, &q.zero_point);
    q.transform = t;
  }

  /// \brief Fake quantization T⁻¹·deq(Q(T·x)) into out (same shape as x); overwrites out.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Philox& rng, MatrixRef<Scalar> out) const {
    fake_quantize(x, transform_for(x.rows(), rng), rng, out);
  }

  /// \brief Fake quantization with a given transform t; `rng` gives the rounding noise only.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Transform& t, const Philox& rng,
                     MatrixRef<Scalar> out) const {
    check(out.rows() == x.rows() && out.cols() == x.cols(), name(), "::fake_quantize: output is ",
          out.rows(), "x", out.cols(), ", input is ", x.rows(), "x", x.cols());
    check_transform(x, t, "::fake_quantize");
    quantize_blocks(x, t, rng, out.data(), out.outerStride(), nullptr, nullptr);
  }

  /// \brief Fake quantization: the values of quantize(x, rng).
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Matrix<Scalar> out(x.rows(), x.cols());
    fake_quantize(x, rng, out);
    return out;
  }

  /// \brief Exact E‖Q(x) − x‖²_F given the transform t: PSQ's Σ_r Σ_j Δ_r²·p_rj(1 − p_rj) on
  /// T·x (T is orthogonal, so the noise keeps its norm through T⁻¹). 0 for Nearest.
  Scalar expected_variance(const MatrixCRef<Scalar>& x, const Transform& t) const {
    const Matrix<Scalar> tx = transformed(x, t, "::expected_variance");
    double total = 0;
    if constexpr (Rounding::is_stochastic) {
      for (Index r = 0; r < tx.rows() && tx.cols() > 0; ++r) {
        total += detail::row_variance<Scalar>(tx.row(r).data(), tx.cols(), map_of(tx, r), nullptr,
                                              nullptr, nullptr, max_code());
      }
    }
    return detail::checked_variance<Scalar>(total, name());
  }
  /// \brief expected_variance with the transform that stream `rng` draws.
  Scalar expected_variance(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return expected_variance(x, transform_for(x.rows(), rng));
  }
  /// \brief expected_variance with the signs of the default stream Philox() (see the class doc).
  Scalar expected_variance(const MatrixCRef<Scalar>& x) const {
    return expected_variance(x, Philox());
  }

  /// \brief Exact Var[Q(x)_ij] given t: (1/m)·Σ_r σ²_rj over the m rows r of i's block (every
  /// entry of H_m/√m has square 1/m), σ²_rj the rounding variance of (T·x)_rj. Sums to
  /// expected_variance(x, t). 0 for Nearest.
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x, const Transform& t) const {
    const Matrix<Scalar> tx = transformed(x, t, "::element_variance");
    Matrix<double> out = Matrix<double>::Zero(x.rows(), x.cols());
    if constexpr (Rounding::is_stochastic) {
      Matrix<double> sigma(x.rows(), x.cols());
      for (Index r = 0; r < tx.rows() && tx.cols() > 0; ++r) {
        const auto map = map_of(tx, r);
        for (Index j = 0; j < tx.cols(); ++j) {
          sigma(r, j) = detail::row_variance<Scalar>(tx.row(r).data() + j, 1, map, nullptr, nullptr,
                                                     nullptr, max_code());
        }
      }
      for (Index g = 0; g < t.blocks(); ++g) {
        const Index first = t.block_start(g), m = t.block_rows(g);
        const Eigen::Matrix<double, 1, Eigen::Dynamic> mean =
            sigma.middleRows(first, m).colwise().sum() / static_cast<double>(m);
        out.middleRows(first, m).rowwise() = mean;
      }
      detail::checked_variance<Scalar>(out.sum(), name());
    }
    return out;
  }
  /// \brief element_variance with the transform that stream `rng` draws.
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return element_variance(x, transform_for(x.rows(), rng));
  }
  /// \brief element_variance with the signs of the default stream Philox().
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x) const {
    return element_variance(x, Philox());
  }

  /// \brief The paper's bound given t: Σ_r D·Δ_r²/4 over the rows of T·x (≥ expected_variance).
  Scalar variance_bound(const MatrixCRef<Scalar>& x, const Transform& t) const {
    const Matrix<Scalar> tx = transformed(x, t, "::variance_bound");
    double total = 0;
    for (Index r = 0; r < tx.rows() && tx.cols() > 0; ++r) {
      const double step = static_cast<double>(map_of(tx, r).scale);
      total += static_cast<double>(tx.cols()) * step * step / 4;
    }
    return detail::checked_variance<Scalar>(total, name());
  }
  /// \brief variance_bound with the transform that stream `rng` draws.
  Scalar variance_bound(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    return variance_bound(x, transform_for(x.rows(), rng));
  }
  /// \brief variance_bound with the signs of the default stream Philox().
  Scalar variance_bound(const MatrixCRef<Scalar>& x) const { return variance_bound(x, Philox()); }

 private:
  // Philox counter of the first block of signs: far above those of the rounding noise.
  static constexpr std::uint64_t kSignCounter = std::uint64_t{1} << 63;

  static int check_bits(int bits) {
    detail::check_bits<Scalar>(bits, 8 * static_cast<int>(sizeof(Code)), name());
    return bits;
  }

  void check_transform(const MatrixCRef<Scalar>& x, const Transform& t, const char* what) const {
    check(t.rows() == x.rows(), name(), what, ": the transform acts on ", t.rows(),
          " rows, the input has ", x.rows());
  }

  // Throws std::domain_error naming the first non-finite element of x, or, when x is finite, the
  // block whose transformed values overflow.
  [[noreturn]] void throw_overflow(const MatrixCRef<Scalar>& x, const Transform& t, Index g) const {
    if (!x.allFinite()) detail::throw_non_finite<Scalar>(x, name());
    throw std::domain_error(detail::concat(
        name(), ": the transformed rows [", t.block_start(g), ", ",
        t.block_start(g) + t.block_rows(g),
        ") overflow (a value or a row's range): the input lies within a factor sqrt(",
        t.block_rows(g), ") of the largest finite value"));
  }

  // T·x, checked: x finite and every transformed row's range finite.
  Matrix<Scalar> transformed(const MatrixCRef<Scalar>& x, const Transform& t,
                             const char* what) const {
    check_transform(x, t, what);
    Matrix<Scalar> tx = x;
    if (x.cols() == 0) return tx;
    for (Index g = 0; g < t.blocks(); ++g) {
      Scalar* block = tx.data() + t.block_start(g) * tx.cols();
      t.transform_block(x.data() + t.block_start(g) * x.outerStride(), x.outerStride(), x.cols(), g,
                        block, tx.cols());
      for (Index j = 0; j < t.block_rows(g); ++j) {
        Scalar lo, hi;
        if (!detail::min_max(block + j * tx.cols(), tx.cols(), lo, hi)) throw_overflow(x, t, g);
      }
    }
    return tx;
  }

  AffineMap<Scalar> map_of(const Matrix<Scalar>& tx, Index r) const {
    Scalar lo, hi;
    detail::min_max(tx.row(r).data(), tx.cols(), lo, hi);
    return detail::choose_grid_for(tx.row(r).data(), tx.cols(), lo, hi, max_code(),
                                   detail::row_grid(grid()), name());
  }

  // The fused pass, block by block: T_g·x into a block workspace (L2-resident), each row's grid
  // from its range, PSQ's rounding kernel keyed by the row's global index, and for values
  // (fake quantization) T_g⁻¹ in place on the output rows.
  template <class Out>
  void quantize_blocks(const MatrixCRef<Scalar>& x, const Transform& t, const Philox& rng, Out* out,
                       Index stride, Vector<Scalar>* scale, Vector<Scalar>* zero_point) const {
    const Index d = x.cols();
    if (d == 0 || x.rows() == 0) return;
    const Index x_stride = x.outerStride();
    parallel_for(t.blocks(), t.block_size() * d, [&](Index g) {
      thread_local Matrix<Scalar> work;
      const Index m = t.block_rows(g), first = t.block_start(g);
      if (work.rows() != m || work.cols() != d) work.resize(m, d);
      t.transform_block(x.data() + first * x_stride, x_stride, d, g, work.data(), d);
      for (Index j = 0; j < m; ++j) {
        const Index r = first + j;
        Scalar lo, hi;
        if (!detail::min_max(work.row(j).data(), d, lo, hi)) throw_overflow(x, t, g);
        const auto map = detail::choose_grid_for(work.row(j).data(), d, lo, hi, max_code(),
                                                 detail::row_grid(grid()), name());
        if (scale) {
          (*scale)(r) = map.scale;
          (*zero_point)(r) = map.zero_point;
        }
        detail::quantize_row<Rounding, Scalar, Out>(
            work.row(j).data(), d, static_cast<std::uint64_t>(r * d), map, nullptr, nullptr,
            nullptr, max_code(), rng, out + r * stride);
      }
      if constexpr (std::is_floating_point_v<Out>) {
        check_domain(t.invert_block(out + first * stride, stride, d, g), name(),
                     "a dequantized value of rows [", first, ", ", first + m,
                     ") overflows: the input lies within rounding of the largest finite value");
      }
    });
  }

  PerSampleQuantizer<Scalar, Rounding, Code> row_quantizer_;
  Index block_;
};

}  // namespace fqt
