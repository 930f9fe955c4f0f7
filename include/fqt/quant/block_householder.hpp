#pragma once
/// \file
/// \brief BHQ, the block Householder quantizer: Q(G) = T⁻¹·Q_psq(T·G), with T built from the row
/// ranges of G as in the paper (sort, greedy heads, proportional groups, the −1/3 scaling), and
/// applied implicitly in O(N·D) time and O(D) extra memory per thread.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/affine.hpp"
#include "fqt/quant/detail/bhq_transform.hpp"
#include "fqt/quant/per_sample.hpp"
#include "fqt/quant/quantized.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {

/// \brief Which of BHQ's groups are mixed.
enum class BhqMixing {
  /// Every group, as the paper (and its released code) does.
  All,
  /// Only the groups whose mixing lowers their exact variance: a group whose transformed rows
  /// have a larger variance Σ_r ‖T⁻¹e_r‖²·Σ_j Δ_r²·p(1 − p) than its own rows quantized per
  /// sample is left unmixed (its rows become singleton groups with s = 1 and c = 0, i.e. PSQ
  /// rows). Mixing turns the exact zeros of sparse (ReLU-masked) gradients into non-zeros, which
  /// the zero-aligned and automatic grids would otherwise have quantized for free; this keeps
  /// BHQ's variance at or below both PSQ's and the full BHQ's on the same grid, for one extra
  /// compute pass over G.
  WhereItHelps
};

/// \brief Block Householder quantizer (BHQ): Q(G) = T⁻¹·Q_psq(T·G).
///
/// Each head row (a row with a large range) is spread evenly over a group of small rows by a
/// Householder reflection after the small rows are scaled up, so the per-row grids of the
/// transformed rows are all fine; the inverse transform maps the noise back. Unbiased (T is
/// linear and deterministic given G), with variance Σ_r ‖T⁻¹e_r‖²·Σ_j Δ_r²·p(1 − p) ≈
/// (D/(4B²))·(Σ_heads λ_i)²/N, against (D/(4B²))·Σλ_i² for PSQ. The transform is never formed:
/// each reflection is applied to its rows directly (O(N·D) time, O(D) memory per thread).
/// Falls back to PSQ for N < 3 or when every row is constant. Grids of the transformed rows follow
/// `grid`. Noise is keyed by the element's row-major index, so codes do not depend on threads.
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
class BlockHouseholderQuantizer {
 public:
  using scalar_type = Scalar;
  using code_type = Code;
  using rounding_type = Rounding;
  using RowQuantizer = PerSampleQuantizer<Scalar, Rounding, Code>;
  static constexpr Granularity granularity = Granularity::PerRow;

  /// \param bits 1 ≤ bits ≤ 8·sizeof(Code)
  /// \param grid the grid of each transformed row
  /// \param mixing every group (the paper's BHQ) or only those it helps
  explicit BlockHouseholderQuantizer(int bits, Grid grid = Grid::Auto,
                                     BhqMixing mixing = BhqMixing::All)
      : row_quantizer_(check_bits(bits), grid), mixing_(mixing) {
    check(mixing == BhqMixing::All || mixing == BhqMixing::WhereItHelps, name(),
          "mixing must be All or WhereItHelps, got ", static_cast<long long>(mixing));
  }

  static constexpr const char* name() { return "BlockHouseholderQuantizer"; }
  int bits() const { return row_quantizer_.bits(); }
  Grid grid() const { return row_quantizer_.grid(); }
  int max_code() const { return row_quantizer_.max_code(); }
  BhqMixing mixing() const { return mixing_; }

  /// \brief The transform T that BHQ uses for x (nothing when it falls back to PSQ). Rows whose
  /// range does not contain 0 are centred on their midpoint before they are mixed. With
  /// BhqMixing::WhereItHelps the groups whose mixing does not lower their variance are unmixed
  /// (nothing when no group is left mixed).
  std::optional<BlockHouseholderTransform<Scalar>> transform_for(
      const MatrixCRef<Scalar>& x) const {
    auto t = full_transform(x);
    if (t && mixing_ == BhqMixing::WhereItHelps) t = mixed_where_it_helps(x, *t);
    return t;
  }

  /// \brief Quantizes T·x row by row; the result carries T (dequantize applies T⁻¹).
  Quantized<Scalar, Code> quantize(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Quantized<Scalar, Code> q;
    quantize(x, rng, q);
    return q;
  }

  /// \brief Quantizes into q, reusing q's code storage when the shape is unchanged.
  void quantize(const MatrixCRef<Scalar>& x, const Philox& rng, Quantized<Scalar, Code>& q) const {
    auto t = transform_for(x);
    if (!t) return row_quantizer_.quantize(x, rng, q);
    q.granularity = Granularity::PerRow;
    q.bits = bits();
    q.codes.resize(x.rows(), x.cols());
    q.scale.resize(x.rows());
    q.zero_point.resize(x.rows());
    quantize_groups(x, *t, rng, q.codes.data(), q.codes.cols(), &q.scale, &q.zero_point);
    q.transform = std::move(t);
  }

  /// \brief Fake quantization T⁻¹·deq(Q(T·x)) into out (same shape as x); overwrites out.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Philox& rng, MatrixRef<Scalar> out) const {
    check(out.rows() == x.rows() && out.cols() == x.cols(), name(), "::fake_quantize: output is ",
          out.rows(), "x", out.cols(), ", input is ", x.rows(), "x", x.cols());
    const auto t = transform_for(x);
    if (!t) return row_quantizer_.fake_quantize(x, rng, out);
    quantize_groups(x, *t, rng, out.data(), out.outerStride(), nullptr, nullptr);
  }

  /// \brief Fake quantization: the values of quantize(x, rng).
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Matrix<Scalar> out(x.rows(), x.cols());
    fake_quantize(x, rng, out);
    return out;
  }

  /// \brief Exact E‖Q(x) − x‖²_F = Σ_r ‖T⁻¹e_r‖²·Σ_j Δ_r²·p_rj(1 − p_rj) (0 for Nearest).
  Scalar expected_variance(const MatrixCRef<Scalar>& x) const {
    if constexpr (Rounding::is_stochastic) {
      // The selection pass has every group's variance, mixed or not: no second transform.
      if (mixing_ == BhqMixing::WhereItHelps && x.rows() > 0 && x.cols() > 0) {
        auto t = full_transform(x);
        if (!t) return row_quantizer_.expected_variance(x);
        double total = 0;
        mixed_where_it_helps(x, *t, &total);
        return detail::checked_variance<Scalar>(total, name());
      }
    }
    return sum_over_transformed_rows(
        x, [&](const MatrixCRef<Scalar>& tx, Index r, const AffineMap<Scalar>& m) {
          if constexpr (!Rounding::is_stochastic) {
            (void)tx, (void)r, (void)m;
            return 0.0;
          } else {
            return detail::row_variance<Scalar>(tx.row(r).data(), tx.cols(), m, nullptr, nullptr,
                                                nullptr, max_code());
          }
        });
  }

  /// \brief Exact Var[Q(x)_ij] for every element: (1/s_i²)·Σ_r H_ir²·σ²_rj over i's group, with
  /// σ²_rj the rounding variance of transformed element (r, j). Sums to expected_variance(x).
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x) const {
    const auto t = transform_for(x);
    if (!t) return row_quantizer_.element_variance(x);
    Matrix<Scalar> tx = x;
    t->apply(tx);
    const Matrix<double> sigma = row_quantizer_.element_variance(tx);
    Matrix<double> out(x.rows(), x.cols());
    for (Index g = 0; g < t->groups(); ++g) {
      const Index m = t->group_size(g);
      const auto& s = t->row_scale();
      if (m < 2) {
        const Index r = t->member(g, 0);
        out.row(r) = sigma.row(r) / (double(s(r)) * double(s(r)));
        continue;
      }
      // Σ_r (δ_ir − 2 v_i v_r)² σ²_r = σ²_i − 4 v_i² σ²_i + 4 v_i² Σ_r v_r² σ²_r.
      Eigen::Matrix<double, 1, Eigen::Dynamic> u =
          Eigen::Matrix<double, 1, Eigen::Dynamic>::Zero(x.cols());
      for (Index j = 0; j < m; ++j) {
        const double v = BlockHouseholderTransform<Scalar>::reflector(m, j);
        u += v * v * sigma.row(t->member(g, j));
      }
      for (Index j = 0; j < m; ++j) {
        const Index r = t->member(g, j);
        const double v = BlockHouseholderTransform<Scalar>::reflector(m, j);
        out.row(r) =
            ((1 - 4 * v * v) * sigma.row(r) + 4 * v * v * u) / (double(s(r)) * double(s(r)));
      }
    }
    detail::checked_variance<Scalar>(out.sum(), name());
    return out;
  }

  /// \brief The bound Σ_r ‖T⁻¹e_r‖²·D·Δ_r²/4 (the paper's general-transform bound).
  Scalar variance_bound(const MatrixCRef<Scalar>& x) const {
    return sum_over_transformed_rows(
        x, [&](const MatrixCRef<Scalar>& tx, Index, const AffineMap<Scalar>& m) {
          return static_cast<double>(tx.cols()) * static_cast<double>(m.scale) *
                 static_cast<double>(m.scale) / 4;
        });
  }

 private:
  static int check_bits(int bits) {
    detail::check_bits<Scalar>(bits, 8 * static_cast<int>(sizeof(Code)), name());
    return bits;
  }

  // Σ_r c_r·f(T·x, r, map_r) with c_r = ‖T⁻¹e_r‖² (c = 1 without a transform).
  template <class F>
  Scalar sum_over_transformed_rows(const MatrixCRef<Scalar>& x, F&& per_row) const {
    const auto t = transform_for(x);
    Matrix<Scalar> tx = x;
    Vector<double> c = Vector<double>::Ones(x.rows());
    if (t) {
      t->apply(tx);
      c = t->inverse_column_norms();
    }
    double total = 0;
    for (Index r = 0; r < tx.rows() && tx.cols() > 0; ++r) {
      Scalar lo, hi;
      detail::row_range<Scalar>(tx, r, lo, hi, name());
      total +=
          c(r) * per_row(tx, r,
                         detail::choose_grid_for(tx.row(r).data(), tx.cols(), lo, hi, max_code(),
                                                 detail::row_grid(grid()), name()));
    }
    return detail::checked_variance<Scalar>(total, name());
  }

  // The fused pass: per group, w = Σ v_j s_j (x_j − c_j); each transformed row is formed in a row
  // buffer, gets its grid, and is quantized. For values (fake quantization) the group is then
  // mapped back in place. The transform's own routines do the arithmetic, so the rows are those of
  // BlockHouseholderTransform::apply, bit for bit.
  template <class Out>
  void quantize_groups(const MatrixCRef<Scalar>& x, const BlockHouseholderTransform<Scalar>& t,
                       const Philox& rng, Out* out, Index stride, Vector<Scalar>* scale,
                       Vector<Scalar>* zero_point) const {
    const Index d = x.cols(), x_stride = x.outerStride();
    const Index chunks_per_row = d / static_cast<Index>(detail::kChunk) + 2;
    parallel_for(t.groups(), d * 2, [&](Index g) {
      thread_local Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w, row;
      thread_local std::vector<const char*> next_rows;
      w.resize(d);
      row.resize(d);
      const Index m = t.group_size(g);
      t.mix(x.data(), x_stride, d, g, w.data());
      // The rows of the next group are read from memory while this group's rounding computes:
      // BHQ's extra pass over G then costs cache hits rather than memory latency.
      detail::Prefetcher prefetch;
      if (g + 1 < t.groups()) {
        next_rows.clear();
        for (Index j = 0; j < t.group_size(g + 1); ++j)
          next_rows.push_back(reinterpret_cast<const char*>(x.row(t.member(g + 1, j)).data()));
        prefetch.rows = next_rows.data();
        prefetch.count = static_cast<Index>(next_rows.size());
        prefetch.bytes = d * static_cast<Index>(sizeof(Scalar));
        const Index lines = prefetch.count * ((prefetch.bytes + 63) / 64);
        prefetch.lines_per_step = (lines + m * chunks_per_row - 1) / (m * chunks_per_row);
      }
      for (Index j = 0; j < m; ++j) {
        const Index r = t.member(g, j);
        Scalar lo, hi;
        if (!t.transform_row(x.data(), x_stride, d, g, j, w.data(), row.data(), lo, hi))
          detail::throw_non_finite<Scalar>(x, name());
        const auto map = detail::choose_grid_for(row.data(), d, lo, hi, max_code(),
                                                 detail::row_grid(grid()), name());
        if (scale) {
          (*scale)(r) = map.scale;
          (*zero_point)(r) = map.zero_point;
        }
        detail::quantize_row<Rounding, Scalar, Out>(
            row.data(), d, static_cast<std::uint64_t>(r * d), map, nullptr, nullptr, nullptr,
            max_code(), rng, out + r * stride, &prefetch);
      }
      if constexpr (std::is_floating_point_v<Out>) {
        check_domain(t.invert_group(out, stride, d, g, w.data()), name(),
                     "a dequantized value of group ", g, " (head row ", t.member(g, 0),
                     ") overflows: the input lies within rounding of the largest finite value");
      }
    });
  }

  // The exact variance of one row of n values under this quantizer's row grid.
  double row_variance_of(const Scalar* row, Index n, Scalar lo, Scalar hi) const {
    if constexpr (!Rounding::is_stochastic) {
      (void)row, (void)n, (void)lo, (void)hi;
      return 0;
    } else {
      const auto map =
          detail::choose_grid_for(row, n, lo, hi, max_code(), detail::row_grid(grid()), name());
      return detail::row_variance<Scalar>(row, n, map, nullptr, nullptr, nullptr, max_code());
    }
  }

  // The paper's transform for x, every group mixed (nothing: fall back to PSQ).
  std::optional<BlockHouseholderTransform<Scalar>> full_transform(
      const MatrixCRef<Scalar>& x) const {
    if (x.rows() == 0 || x.cols() == 0) return std::nullopt;
    Vector<Scalar> range(x.rows()), offset(x.rows());
    parallel_for(x.rows(), x.cols(), [&](Index i) {
      Scalar lo, hi;
      detail::row_range<Scalar>(x, i, lo, hi, name());
      range(i) = hi - lo;
      offset(i) = lo <= 0 && hi >= 0 ? Scalar(0) : lo + range(i) / 2;
    });
    return detail::bhq_transform(range, std::move(offset));
  }

  // BhqMixing::WhereItHelps: t with every group whose transformed rows have a larger variance
  // than its own rows per sample split into unmixed singletons (s = 1, c = 0). With `variance`,
  // also the exact variance of the result, Σ_g min(mixed_g, plain_g).
  std::optional<BlockHouseholderTransform<Scalar>> mixed_where_it_helps(
      const MatrixCRef<Scalar>& x, const BlockHouseholderTransform<Scalar>& t,
      double* variance = nullptr) const {
    const Index d = x.cols(), stride = x.outerStride();
    const Vector<double> c = t.inverse_column_norms();
    std::vector<char> keep(static_cast<std::size_t>(t.groups()), 0);
    std::vector<double> group_variance(static_cast<std::size_t>(t.groups()), 0.0);
    parallel_for(t.groups(), 2 * d, [&](Index g) {
      const Index m = t.group_size(g);
      if (m < 2 && t.row_scale()(t.member(g, 0)) == 1 && t.row_offset()(t.member(g, 0)) == 0) {
        // Already a PSQ row.
        if (variance) {
          const Index r = t.member(g, 0);
          Scalar lo, hi;
          detail::row_range<Scalar>(x, r, lo, hi, name());
          group_variance[static_cast<std::size_t>(g)] = row_variance_of(x.row(r).data(), d, lo, hi);
        }
        return;
      }
      thread_local Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w, row;
      w.resize(d);
      row.resize(d);
      t.mix(x.data(), stride, d, g, w.data());
      double mixed = 0, plain = 0;
      for (Index j = 0; j < m; ++j) {
        const Index r = t.member(g, j);
        Scalar lo, hi;
        if (!t.transform_row(x.data(), stride, d, g, j, w.data(), row.data(), lo, hi))
          detail::throw_non_finite<Scalar>(x, name());
        mixed += c(r) * row_variance_of(row.data(), d, lo, hi);
        detail::row_range<Scalar>(x, r, lo, hi, name());
        plain += row_variance_of(x.row(r).data(), d, lo, hi);
      }
      keep[static_cast<std::size_t>(g)] = mixed < plain;
      group_variance[static_cast<std::size_t>(g)] = std::min(mixed, plain);
    });
    if (variance) {
      *variance = 0;
      for (const double v : group_variance) *variance += v;
    }
    std::vector<Index> order, offsets{0};
    Vector<Scalar> scale = t.row_scale(), offset = t.row_offset();
    bool any = false;
    for (Index g = 0; g < t.groups(); ++g) {
      const Index m = t.group_size(g);
      const bool mixed = keep[static_cast<std::size_t>(g)] != 0;
      for (Index j = 0; j < m; ++j) {
        const Index r = t.member(g, j);
        order.push_back(r);
        if (!mixed) {
          scale(r) = 1;
          offset(r) = 0;
          offsets.push_back(static_cast<Index>(order.size()));
        }
      }
      if (mixed) offsets.push_back(static_cast<Index>(order.size()));
      any = any || mixed;
    }
    if (!any) return std::nullopt;
    return BlockHouseholderTransform<Scalar>(std::move(order), std::move(offsets), std::move(scale),
                                             std::move(offset));
  }

  RowQuantizer row_quantizer_;
  BhqMixing mixing_;
};

}  // namespace fqt
