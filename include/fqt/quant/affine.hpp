#pragma once
/// \file
/// \brief The affine quantizer shared by PTQ (per tensor), PSQ (per row) and the per-column
/// grad-weight quantizer: ranges → grids → one pass of rounding.

#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/grid.hpp"
#include "fqt/quant/quantized.hpp"
#include "fqt/quant/rounding.hpp"

namespace fqt {
namespace detail {

/// The affine maps of one quantization call, one per tensor, row or column.
template <class Scalar>
struct AffineMaps {
  Vector<Scalar> scale, inv_scale, zero_point;

  void resize(Index n) {
    scale.resize(n);
    inv_scale.resize(n);
    zero_point.resize(n);
  }
  void set(Index i, const AffineMap<Scalar>& m) {
    scale(i) = m.scale;
    inv_scale(i) = m.inv_scale;
    zero_point(i) = m.zero_point;
  }
  AffineMap<Scalar> get(Index i) const { return {scale(i), inv_scale(i), zero_point(i)}; }
};

template <class Scalar>
void check_bits(int bits, int max_bits, const char* where) {
  check(bits >= 1 && bits <= max_bits, where, "bits must be in [1, ", max_bits, "], got ", bits);
}

}  // namespace detail

/// \brief An affine quantizer with one grid per tensor, per row or per column.
///
/// Codes are unsigned, B = 2^bits − 1 bins, ranges are the exact min and max of each group (no
/// epsilon); the grid is Free or ZeroAligned (see `Grid`). With `Stochastic` rounding the result
/// is unbiased, E[Q(x)] = x (up to 2^-17 of a step, see rounding.hpp), and consumes one 16-bit
/// uniform per element, keyed by the element's row-major index, so codes do not depend on the
/// thread count. With `Nearest` it is the deterministic forward quantizer Q_f.
/// \tparam kGranularity PerTensor (PTQ), PerRow (PSQ: rows are samples) or PerColumn
/// \tparam Scalar float or double
/// \tparam Rounding Stochastic or Nearest
/// \tparam Code std::uint8_t (≤ 8 bits) or std::uint16_t (≤ 16 bits)
template <Granularity kGranularity, class Scalar = float, class Rounding = Stochastic,
          class Code = std::uint8_t>
class AffineQuantizer {
  static_assert(std::is_floating_point_v<Scalar>, "fqt quantizers need a floating-point Scalar");
  static_assert(std::is_same_v<Code, std::uint8_t> || std::is_same_v<Code, std::uint16_t>,
                "fqt quantizers produce std::uint8_t or std::uint16_t codes");

 public:
  using scalar_type = Scalar;
  using code_type = Code;
  using rounding_type = Rounding;
  static constexpr Granularity granularity = kGranularity;

  /// \param bits 1 ≤ bits ≤ 8·sizeof(Code)
  /// \param grid where the grid sits (see `Grid`; Paper is Free for all but PerTensor)
  /// \param channels PerChannel only: the number K of column blocks (the inputs' columns must be a
  ///        multiple of K); 1 for the other granularities
  explicit AffineQuantizer(int bits, Grid grid = Grid::Auto, Index channels = 1)
      : bits_(bits),
        grid_(grid),
        map_grid_(kGranularity == Granularity::PerTensor ? grid : detail::row_grid(grid)),
        channels_(channels) {
    detail::check_bits<Scalar>(bits, 8 * static_cast<int>(sizeof(Code)), name());
    check(is_grid(grid), name(), "grid must be Free, ZeroAligned, Paper or Auto, got ",
          static_cast<long long>(grid));
    check(kGranularity == Granularity::PerChannel ? channels >= 1 : channels == 1, name(),
          "channels must be ", kGranularity == Granularity::PerChannel ? ">= 1" : "1", ", got ",
          channels);
  }

  /// The quantizer's name, used in error messages.
  static constexpr const char* name() {
    switch (kGranularity) {
      case Granularity::PerTensor:
        return "PerTensorQuantizer";
      case Granularity::PerRow:
        return "PerSampleQuantizer";
      case Granularity::PerChannel:
        return "PerChannelQuantizer";
      default:
        return "PerColumnQuantizer";
    }
  }

  int bits() const { return bits_; }
  Grid grid() const { return grid_; }
  /// B = 2^bits − 1, the largest code.
  int max_code() const { return detail::max_code(bits_); }
  /// The number of column blocks that share a map (PerChannel), 1 otherwise.
  Index channels() const { return channels_; }

  /// \brief The affine maps this quantizer picks for x (checks x for NaN/Inf).
  detail::AffineMaps<Scalar> maps(const MatrixCRef<Scalar>& x) const {
    const Index n = x.rows(), d = x.cols();
    detail::AffineMaps<Scalar> maps;
    if constexpr (kGranularity == Granularity::PerChannel) {
      check(d % channels_ == 0, name(), "the input has ", d, " columns, not a multiple of the ",
            channels_, " channels");
    }
    if (n == 0 || d == 0) {
      maps.resize(kGranularity == Granularity::PerTensor    ? 1
                  : kGranularity == Granularity::PerRow     ? n
                  : kGranularity == Granularity::PerChannel ? channels_
                                                            : d);
      for (Index i = 0; i < maps.scale.size(); ++i) maps.set(i, AffineMap<Scalar>{});
      return maps;
    }
    if constexpr (kGranularity == Granularity::PerChannel) {
      const Index width = d / channels_;
      maps.resize(channels_);
      parallel_for(channels_, n * width, [&](Index k) {
        Scalar lo = std::numeric_limits<Scalar>::infinity(), hi = -lo;
        for (Index i = 0; i < n; ++i) {
          Scalar l, h;
          if (!detail::min_max(x.row(i).data() + k * width, width, l, h))
            detail::throw_non_finite<Scalar>(x, name());
          lo = std::min(lo, l);
          hi = std::max(hi, h);
        }
        if (!std::isfinite(hi - lo)) detail::throw_non_finite<Scalar>(x, name());
        if (map_grid_ != Grid::Auto) {
          maps.set(k, detail::choose_grid(lo, hi, max_code(), map_grid_, name()));
          return;
        }
        detail::AutoGrid<Scalar> g(lo, hi, max_code(), name());
        for (Index i = 0; i < n; ++i) g.add(x.row(i).data() + k * width, width);
        maps.set(k, g.choice());
      });
    } else if constexpr (kGranularity == Granularity::PerColumn) {
      Eigen::Array<Scalar, 1, Eigen::Dynamic> lo, hi;
      lo.setConstant(d, std::numeric_limits<Scalar>::infinity());
      hi.setConstant(d, -std::numeric_limits<Scalar>::infinity());
      for (Index i = 0; i < n; ++i) {
        const auto row = x.row(i).array();
        Scalar row_lo, row_hi;
        if (!detail::min_max(x.row(i).data(), d, row_lo, row_hi))
          detail::throw_non_finite<Scalar>(x, name());
        lo = lo.min(row);
        hi = hi.max(row);
      }
      maps.resize(d);
      for (Index j = 0; j < d; ++j) {
        if (!std::isfinite(hi(j) - lo(j))) detail::throw_non_finite<Scalar>(x, name());
        maps.set(j, detail::choose_grid(lo(j), hi(j), max_code(),
                                        map_grid_ == Grid::Auto ? Grid::ZeroAligned : map_grid_,
                                        name()));
      }
      if (map_grid_ == Grid::Auto) choose_column_grids(x, lo, hi, maps);
    } else {
      Vector<Scalar> lo(n), hi(n);
      parallel_for(n, d, [&](Index i) { detail::row_range<Scalar>(x, i, lo(i), hi(i), name()); });
      if constexpr (kGranularity == Granularity::PerTensor) {
        maps.resize(1);
        const Scalar l = lo.minCoeff(), h = hi.maxCoeff();
        if (!std::isfinite(h - l)) detail::throw_non_finite<Scalar>(x, name());
        if (map_grid_ != Grid::Auto) {
          maps.set(0, detail::choose_grid(l, h, max_code(), map_grid_, name()));
        } else {
          // The two grids' variances, row by row (a second pass over x), then summed.
          detail::AutoGrid<Scalar> g(l, h, max_code(), name());
          if (g.differ) {
            Vector<double> sum_free(n), sum_zero(n);
            parallel_for(n, 2 * d, [&](Index i) {
              detail::AutoGrid<Scalar> row = g;
              row.free_sum = row.zero_sum = 0;
              row.add(x.row(i).data(), d);
              sum_free(i) = row.free_sum;
              sum_zero(i) = row.zero_sum;
            });
            g.free_sum = sum_free.sum();
            g.zero_sum = sum_zero.sum();
          }
          maps.set(0, g.choice());
        }
      } else {
        maps.resize(n);
        for (Index i = 0; i < n; ++i) maps.set(i, row_grid_map(x, i, lo(i), hi(i)));
      }
    }
    return maps;
  }

  /// \brief Quantizes x to integer codes. \param rng the noise stream (unused by Nearest)
  Quantized<Scalar, Code> quantize(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Quantized<Scalar, Code> q;
    quantize(x, rng, q);
    return q;
  }

  /// \brief Quantizes x into q, reusing q's storage when the shape is unchanged (no allocation in
  /// a steady state of same-shaped calls, beyond the O(N) ranges).
  void quantize(const MatrixCRef<Scalar>& x, const Philox& rng, Quantized<Scalar, Code>& q) const {
    q.granularity = kGranularity;
    q.bits = bits_;
    q.transform.reset();
    q.codes.resize(x.rows(), x.cols());
    detail::AffineMaps<Scalar> m;
    quantize_rows(x, rng, q.codes.data(), q.codes.cols(), m);
    q.scale = std::move(m.scale);
    q.zero_point = std::move(m.zero_point);
  }

  /// \brief Fake quantization, dequantize ∘ quantize, written into out (same shape as x);
  /// overwrites out. out may alias x.
  void fake_quantize(const MatrixCRef<Scalar>& x, const Philox& rng, MatrixRef<Scalar> out) const {
    check(out.rows() == x.rows() && out.cols() == x.cols(), name(), "::fake_quantize: output is ",
          out.rows(), "x", out.cols(), ", input is ", x.rows(), "x", x.cols());
    detail::AffineMaps<Scalar> m;
    quantize_rows(x, rng, out.data(), out.outerStride(), m);
  }

  /// \brief Fake quantization: the values of quantize(x, rng).
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x, const Philox& rng) const {
    Matrix<Scalar> out(x.rows(), x.cols());
    fake_quantize(x, rng, out);
    return out;
  }

  /// \brief Fake quantization with a deterministic (Nearest) quantizer, which needs no noise.
  Matrix<Scalar> operator()(const MatrixCRef<Scalar>& x) const {
    static_assert(!Rounding::is_stochastic, "fqt: a stochastic quantizer needs a Philox stream");
    return (*this)(x, Philox{});
  }

  /// \brief Exact E‖Q(x) − x‖²_F for stochastic rounding: Σ Δ²·p(1 − p), p the probability of
  /// rounding up (f(1 − f) up to the 16-bit resolution of the noise). 0 for Nearest, whose error
  /// is deterministic.
  Scalar expected_variance(const MatrixCRef<Scalar>& x) const {
    if constexpr (!Rounding::is_stochastic) {
      (void)maps(x);  // NaN and ±Inf are errors here too
      return 0;
    } else {
      const auto m = maps(x);
      Vector<double> per_row(x.rows());
      parallel_for(x.rows(), x.cols(), [&](Index i) {
        per_row(i) = 0;
        for_each_segment(m, i, x.cols(), [&](Index j0, Index width, const AffineMap<Scalar>& map) {
          per_row(i) += detail::row_variance<Scalar>(
              x.row(i).data() + j0, width, map, col_ptr(m.inv_scale, j0), col_ptr(m.zero_point, j0),
              col_ptr(m.scale, j0), max_code());
        });
      });
      return detail::checked_variance<Scalar>(per_row.sum(), name());
    }
  }

  /// \brief Exact Var[Q(x)_ij] = Δ²·p(1 − p) for every element (0 for Nearest); sums to
  /// expected_variance(x).
  Matrix<double> element_variance(const MatrixCRef<Scalar>& x) const {
    Matrix<double> out = Matrix<double>::Zero(x.rows(), x.cols());
    const auto m = maps(x);  // NaN and ±Inf are errors for Nearest too
    if constexpr (Rounding::is_stochastic) {
      parallel_for(x.rows(), x.cols(), [&](Index i) {
        for_each_segment(m, i, x.cols(), [&](Index j0, Index width, const AffineMap<Scalar>& map) {
          for (Index j = j0; j < j0 + width; ++j) {
            out(i, j) = detail::row_variance<Scalar>(
                x.row(i).data() + j, 1, map, col_ptr(m.inv_scale, j), col_ptr(m.zero_point, j),
                col_ptr(m.scale, j), max_code());
          }
        });
      });
      detail::checked_variance<Scalar>(out.sum(), name());
    }
    return out;
  }

  /// \brief The paper's bound Σ Δ²/4 over all elements (≥ expected_variance): N·D·R²/(4B²) for
  /// PTQ and (D/(4B²))·Σλ_i² for PSQ on the Free grid, with the zero-aligned step otherwise.
  Scalar variance_bound(const MatrixCRef<Scalar>& x) const {
    const auto m = maps(x);
    const double sq = m.scale.template cast<double>().squaredNorm();
    const double n = static_cast<double>(x.rows()), d = static_cast<double>(x.cols());
    const double per_step = kGranularity == Granularity::PerTensor    ? n * d
                            : kGranularity == Granularity::PerRow     ? d
                            : kGranularity == Granularity::PerChannel ? n * d / channels_
                                                                      : n;
    return detail::checked_variance<Scalar>(per_step * sq / 4, name());
  }

 private:
  // The map of row i (PerRow), whose range is [lo, hi]; Auto looks at the row while it is in
  // cache.
  AffineMap<Scalar> row_grid_map(const MatrixCRef<Scalar>& x, Index i, Scalar lo, Scalar hi) const {
    return detail::choose_grid_for(x.row(i).data(), x.cols(), lo, hi, max_code(), map_grid_,
                                   name());
  }

  // Grid::Auto per column: maps holds the ZeroAligned maps of the columns; where a column's Free
  // map differs, Σ f(1 − f) under both is accumulated down the rows (vectorized along the row),
  // and the Free map replaces the ZeroAligned one where its variance is lower.
  void choose_column_grids(const MatrixCRef<Scalar>& x,
                           const Eigen::Array<Scalar, 1, Eigen::Dynamic>& lo,
                           const Eigen::Array<Scalar, 1, Eigen::Dynamic>& hi,
                           detail::AffineMaps<Scalar>& maps) const {
    const Index n = x.rows(), d = x.cols();
    detail::AffineMaps<Scalar> free;
    free.resize(d);
    bool any = false;
    for (Index j = 0; j < d; ++j) {
      free.set(j, detail::choose_grid(lo(j), hi(j), max_code(), Grid::Free, name()));
      any = any || free.scale(j) != maps.scale(j) || free.zero_point(j) != maps.zero_point(j);
    }
    if (!any) return;
    using Row = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
    Row sum_free = Row::Zero(d), sum_zero = Row::Zero(d);
    const auto inv_f = free.inv_scale.transpose().array(),
               zp_f = free.zero_point.transpose().array();
    const auto inv_z = maps.inv_scale.transpose().array(),
               zp_z = maps.zero_point.transpose().array();
    for (Index i = 0; i < n; ++i) {
      const auto v = x.row(i).array();
      const auto yf = v * inv_f + zp_f;
      const auto yz = v * inv_z + zp_z;
      sum_free += (yf - yf.floor()) - (yf - yf.floor()).square();
      sum_zero += (yz - yz.floor()) - (yz - yz.floor()).square();
    }
    for (Index j = 0; j < d; ++j) {
      const double f = static_cast<double>(free.scale(j)), z = static_cast<double>(maps.scale(j));
      if (f * f * static_cast<double>(sum_free(j)) < z * z * static_cast<double>(sum_zero(j)))
        maps.set(j, free.get(j));
    }
  }

  static AffineMap<Scalar> row_map(const detail::AffineMaps<Scalar>& m, Index i) {
    if constexpr (kGranularity == Granularity::PerRow) return m.get(i);
    if constexpr (kGranularity == Granularity::PerTensor) return m.get(0);
    return AffineMap<Scalar>{};
  }
  static const Scalar* col_ptr(const Vector<Scalar>& v, Index offset = 0) {
    return kGranularity == Granularity::PerColumn ? v.data() + offset : nullptr;
  }
  // Calls f(first column, width, map) for each stretch of row i of d columns that shares a map:
  // the K channel blocks (PerChannel), or the whole row (the map of the row or tensor; PerColumn
  // reads its per-column maps through col_ptr instead).
  template <class F>
  void for_each_segment(const detail::AffineMaps<Scalar>& m, Index i, Index d, F&& f) const {
    if constexpr (kGranularity == Granularity::PerChannel) {
      const Index width = d / channels_;
      for (Index k = 0; k < channels_; ++k) f(k * width, width, m.get(k));
    } else {
      f(Index{0}, d, row_map(m, i));
    }
  }

  // Picks the maps and rounds. Per row, both happen while the row is in cache (one pass over x
  // from memory); per tensor and per column the ranges need a pass of their own first.
  template <class Out>
  void quantize_rows(const MatrixCRef<Scalar>& x, const Philox& rng, Out* out, Index out_stride,
                     detail::AffineMaps<Scalar>& m) const {
    const Index d = x.cols();
    if (kGranularity != Granularity::PerRow || x.rows() == 0 || d == 0) {
      m = maps(x);
      if (d == 0) return;
    } else {
      m.resize(x.rows());
    }
    parallel_for(x.rows(), d, [&](Index i) {
      if constexpr (kGranularity == Granularity::PerRow) {
        Scalar lo, hi;
        detail::row_range<Scalar>(x, i, lo, hi, name());
        m.set(i, row_grid_map(x, i, lo, hi));
      }
      for_each_segment(m, i, d, [&](Index j0, Index width, const AffineMap<Scalar>& map) {
        detail::quantize_row<Rounding, Scalar, Out>(
            x.row(i).data() + j0, width, static_cast<std::uint64_t>(i * d + j0), map,
            col_ptr(m.inv_scale, j0), col_ptr(m.zero_point, j0), col_ptr(m.scale, j0), max_code(),
            rng, out + i * out_stride + j0);
      });
    });
  }

  int bits_;
  Grid grid_;      // as given
  Grid map_grid_;  // what choose_grid sees: Paper is Free for all but PerTensor
  Index channels_;
};

}  // namespace fqt
