#pragma once
/// \file
/// \brief Quantization grids: how a range [lo, hi] becomes an affine map onto the codes 0..B.

#include <algorithm>
#include <cmath>
#include <limits>
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
  ZeroAligned
};

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
template <class Scalar>
AffineMap<Scalar> choose_grid(Scalar lo, Scalar hi, int max_code, Grid grid, const char* where) {
  const Scalar b = static_cast<Scalar>(max_code);
  AffineMap<Scalar> map;
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
