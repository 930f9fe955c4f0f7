#pragma once
/// \file
/// \brief Quantization grids: how a range [lo, hi] becomes an affine map onto the codes 0..B.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/quant/detail/kernels.hpp"

namespace fqt {

/// \brief Where the grid of an affine quantizer sits.
enum class Grid {
  /// The paper's grid for PSQ and BHQ: code 0 at the minimum, code B at the maximum.
  Free,
  /// Zero is a grid point whenever the range contains it (min ≤ 0 ≤ max), so an exact zero of the
  /// input (a ReLU or max-pool mask) is quantized exactly and costs no variance. The zero code k
  /// and the step Δ minimise Δ subject to covering the range: Δ = max(−min/k, max/(B−k)) with k
  /// the better of ⌊k*⌋ and ⌈k*⌉, k* = B·(−min)/(max − min), kept in [1, B − 1] when the range
  /// has both signs (so a part of the range that is far below one bin, as in [−0.7, 7·10⁻¹⁰],
  /// still gets a code of its own and 0 stays exact). This fixes the reference's division by
  /// zero when the negative part is below one bin, and never widens an all-positive or
  /// all-negative range to include 0 (there it is the Free grid). With 1 bit and a range of both
  /// signs no zero-aligned grid covers the range, and the Free grid is used.
  ZeroAligned,
  /// The grid of the paper's released code, exactly but for its ±10⁻⁸ range padding (fqt needs
  /// none: constant ranges are exact). Per tensor (PTQ, `ScalarPreconditioner`): the range
  /// widened to include 0, [min(lo, 0), max(hi, 0)], and the zero code k = ⌊k*⌋, k* =
  /// B·(−lo′)/(hi′ − lo′), with Δ = −lo′/k, so that 0 is a grid point. Where the reference divides
  /// by zero (k = 0 with a negative part below one bin) fqt uses k = 1 and Δ = hi′/(B − 1), the
  /// smallest grid with the reference's zero point that covers the range (the later patch of the
  /// reference, lo′ = 0, would clip the negative part and bias the gradient); a range ≥ 0 has k =
  /// 0 and Δ = hi/B, as the patch has it, and 1 bit with both signs takes the Free grid. For every
  /// other quantizer (PSQ, BHQ, per column, per channel, Hadamard) the Free grid, as in the
  /// released code.
  Paper,
  /// fqt's default for gradients: for each group of elements that shares a map (the tensor, a
  /// row, a column or a channel), the Free or the ZeroAligned grid, whichever gives the group the
  /// lower rounding variance Σ Δ²·f(1 − f) (f the fractional part of the element in code units),
  /// computed in a pass over the group with no random numbers. The choice depends on the input
  /// alone, so the quantizer stays unbiased and its `expected_variance` exact. Ties go to
  /// ZeroAligned.
  Auto
};

/// \brief "free", "zero", "paper" or "auto".
inline const char* to_string(Grid grid) {
  switch (grid) {
    case Grid::Free:
      return "free";
    case Grid::ZeroAligned:
      return "zero";
    case Grid::Paper:
      return "paper";
    case Grid::Auto:
      return "auto";
  }
  return "?";
}

/// \brief Parses "free", "zero" (or "zeroaligned"), "paper" or "auto" in any case, the names
/// `to_string(Grid)` gives; throws std::invalid_argument naming the text.
inline Grid parse_grid(std::string_view name) {
  std::string s(name);
  for (char& c : s) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  if (s == "zero" || s == "zeroaligned") return Grid::ZeroAligned;
  if (s == "free") return Grid::Free;
  if (s == "paper") return Grid::Paper;
  if (s == "auto") return Grid::Auto;
  check(false, "fqt::parse_grid", "unknown grid '", name, "' (expected free, zero, paper or auto)");
  return Grid::Auto;
}

/// \brief True for the enumerators of Grid (a value cast from an integer may be none).
inline bool is_grid(Grid grid) {
  switch (grid) {
    case Grid::Free:
    case Grid::ZeroAligned:
    case Grid::Paper:
    case Grid::Auto:
      return true;
  }
  return false;
}

/// \brief Which elements share one affine map.
enum class Granularity {
  PerTensor,  ///< one map for the whole matrix
  PerRow,     ///< one map per row (sample)
  PerColumn,  ///< one map per column, over the rows
  PerChannel  ///< one map per block of consecutive columns (an output channel of a conv
              ///< gradient N × (K·Ho·Wo): K blocks of Ho·Wo columns), over the rows
};

/// \brief One affine map: y = x·inv_scale + zero_point (code units), value = (c −
/// zero_point)·scale.
template <class Scalar>
struct AffineMap {
  Scalar scale = 1;       ///< the step Δ between neighbouring codes
  Scalar inv_scale = 1;   ///< 1/Δ, what the quantize kernels multiply by
  Scalar zero_point = 0;  ///< the (real) code of the value 0; an integer on a zero-aligned grid
};

namespace detail {

/// Largest code, B = 2^bits − 1.
inline int max_code(int bits) { return static_cast<int>((std::uint32_t{1} << bits) - 1u); }

/// \brief Throws std::domain_error unless the end points of the grid, (0 − z)·Δ and (B − z)·Δ,
/// are finite (every other code's value lies between them).
template <class Scalar>
void check_grid_values(const AffineMap<Scalar>& map, Scalar lo, Scalar hi, Scalar b,
                       const char* where) {
  if (std::isfinite(-map.zero_point * map.scale) && std::isfinite((b - map.zero_point) * map.scale))
    return;
  check_domain(false, where, "the range [", lo, ", ", hi,
               "] lies too close to the largest finite value: the values of its ", b + 1,
               "-level grid overflow");
}

/// \brief The affine map of a range [lo, hi] (finite, lo ≤ hi, hi − lo finite) onto codes 0..B.
/// A constant range (lo == hi) maps every value to code 0 exactly (Δ = 1, zero point −lo), so
/// constant rows and tensors quantize exactly with no division by zero and no epsilon.
/// \throws std::domain_error naming `where` when a value of the grid, (c − zero_point)·Δ for a
/// code c in [0, B], is not finite: a range within rounding of the largest finite Scalar.
///
/// `grid` is Free, ZeroAligned or Paper (the per-tensor construction); Auto needs the values and
/// is resolved by `choose_grid_for` below.
template <class Scalar>
AffineMap<Scalar> choose_grid(Scalar lo, Scalar hi, int max_code, Grid grid, const char* where) {
  const Scalar b = static_cast<Scalar>(max_code);
  AffineMap<Scalar> map;
  if (grid == Grid::Paper) {
    // The reference widens the range to include 0. A range of both signs at 1 bit has no grid
    // with 0 on it, and takes the Free grid below.
    lo = std::min(lo, Scalar(0));
    hi = std::max(hi, Scalar(0));
    if (lo < 0 && max_code >= 2 && hi - lo > 0 && std::isfinite(hi - lo)) {
      const Scalar range = hi - lo;
      const Scalar scaled = b * -lo;
      const Scalar k_star = std::isfinite(scaled) ? scaled / range : b * (-lo / range);
      const Scalar k = std::floor(k_star);
      // ⌊k*⌋ ≥ 1: Δ = −lo/k covers hi, since k·hi ≤ (B − k)·(−lo). ⌊k*⌋ = 0 (the reference's
      // division by zero): code 1 for the negative part, Δ = hi/(B − 1) ≥ −lo.
      const Scalar step = k >= 1 ? -lo / k : hi / (b - 1);
      if (step > 0 && std::isfinite(1 / step)) {
        map.scale = step;
        map.inv_scale = 1 / step;
        map.zero_point = std::max(k, Scalar(1));
        check_grid_values(map, lo, hi, b, where);
        return map;
      }
    }
    // lo′ = 0 (the patched reference: code 0 at 0, Δ = hi/B) is the Free grid of [0, hi].
    grid = Grid::Free;
  }
  const Scalar range = hi - lo;
  if (!(range > 0)) {
    map.zero_point = -lo;
    return map;
  }
  if (grid == Grid::ZeroAligned && lo <= 0 && hi >= 0) {
    // The zero code k must leave a code below 0 when lo < 0 and one above it when hi > 0.
    const Scalar k_min = lo < 0 ? 1 : 0, k_max = hi > 0 ? b - 1 : b;
    if (k_min <= k_max) {
      auto step_for = [&](Scalar k) {
        return std::max(k > 0 ? -lo / k : 0, k < b ? hi / (b - k) : 0);
      };
      // B·(−lo) may overflow; −lo/range ∈ [0, 1] cannot.
      const Scalar scaled = b * -lo;
      const Scalar k_star = std::isfinite(scaled) ? scaled / range : b * (-lo / range);
      const Scalar k0 = std::clamp(std::floor(k_star), k_min, k_max);
      const Scalar k1 = std::min(k0 + 1, k_max);
      const Scalar d0 = step_for(k0), d1 = step_for(k1);
      const Scalar k = d1 < d0 ? k1 : k0;
      const Scalar step = std::min(d0, d1);
      if (step > 0 && std::isfinite(1 / step)) {
        map.scale = step;
        map.inv_scale = 1 / step;
        map.zero_point = k;
        check_grid_values(map, lo, hi, b, where);
        return map;
      }
    }
  }
  map.scale = range / b;
  map.inv_scale = b / range;
  if (!(map.scale > 0) || !std::isfinite(map.inv_scale)) {
    // A range so small that its step underflows: treat it as constant (error ≤ hi − lo), at 0
    // itself on a zero-aligned grid that contains it, so that an exact 0 stays exact.
    map = AffineMap<Scalar>{};
    map.zero_point = grid == Grid::ZeroAligned && lo <= 0 && hi >= 0 ? Scalar(0) : -lo;
    return map;
  }
  map.zero_point = -lo * map.inv_scale;
  check_grid_values(map, lo, hi, b, where);
  return map;
}

/// \brief Grid::Auto for one group of elements with range [lo, hi]: the Free and ZeroAligned
/// maps, the rounding variance of each over the group's elements (fed by `add`, one stretch of
/// elements at a time), and the choice between them.
template <class Scalar>
struct AutoGrid {
  AffineMap<Scalar> free, zero;
  double free_sum = 0, zero_sum = 0;  ///< Σ f(1 − f) under each map
  bool differ;                        ///< false when both grids are the same map

  AutoGrid(Scalar lo, Scalar hi, int max_code, const char* where)
      : free(choose_grid(lo, hi, max_code, Grid::Free, where)),
        zero(choose_grid(lo, hi, max_code, Grid::ZeroAligned, where)),
        differ(free.scale != zero.scale || free.zero_point != zero.zero_point) {}

  /// Adds the elements x[0, n) of the group.
  void add(const Scalar* x, Index n) {
    if (differ)
      add_fraction_variances(x, n, free.inv_scale, free.zero_point, zero.inv_scale, zero.zero_point,
                             free_sum, zero_sum);
  }
  /// The map of lower variance, Δ²·Σ f(1 − f); ZeroAligned on a tie.
  AffineMap<Scalar> choice() const {
    const double f = static_cast<double>(free.scale), z = static_cast<double>(zero.scale);
    return differ && f * f * free_sum < z * z * zero_sum ? free : zero;
  }
};

/// \brief The map of the elements x[0, n) (one row), whose range is [lo, hi], on any grid but
/// Paper-for-rows (callers pass Free for it): Auto compares the two grids over the row.
template <class Scalar>
AffineMap<Scalar> choose_grid_for(const Scalar* x, Index n, Scalar lo, Scalar hi, int max_code,
                                  Grid grid, const char* where) {
  if (grid != Grid::Auto) return choose_grid(lo, hi, max_code, grid, where);
  AutoGrid<Scalar> g(lo, hi, max_code, where);
  g.add(x, n);
  return g.choice();
}

/// \brief The grid of the rows of a per-row quantizer (PSQ, BHQ, Hadamard): Paper is the Free
/// grid there, as in the paper's released code.
inline Grid row_grid(Grid grid) { return grid == Grid::Paper ? Grid::Free : grid; }

/// \brief Throws std::domain_error naming the first non-finite element of x.
template <class Scalar>
[[noreturn]] void throw_non_finite(const MatrixCRef<Scalar>& x, const char* where) {
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      if (!std::isfinite(x(i, j))) {
        check_domain(false, where, "input element (", i, ", ", j, ") is ", x(i, j),
                     "; gradients must be finite");
      }
    }
  }
  throw std::domain_error(
      concat(where, ": the range of the input (largest minus smallest element) overflows"));
}

/// \brief Minimum and maximum of row i; throws std::domain_error on NaN or ±Inf in x.
template <class Scalar>
void row_range(const MatrixCRef<Scalar>& x, Index i, Scalar& lo, Scalar& hi, const char* where) {
  if (!min_max(x.row(i).data(), x.cols(), lo, hi)) throw_non_finite<Scalar>(x, where);
}

/// \brief `total`, an exact variance accumulated in double, as a Scalar; throws
/// std::domain_error naming `where` when it is not representable (the steps of a range near the
/// largest finite value square past it), instead of returning ±inf or NaN.
template <class Scalar>
Scalar checked_variance(double total, const char* where) {
  check_domain(
      std::isfinite(total) && total <= static_cast<double>(std::numeric_limits<Scalar>::max()),
      where, "the variance (", total, ") exceeds the largest finite value of the scalar type");
  return static_cast<Scalar>(total);
}

}  // namespace detail
}  // namespace fqt
