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
  /// the better of ⌊k*⌋ and ⌈k*⌉, k* = B·(−min)/(max − min). This fixes the reference's
  /// division by zero when the negative part is below one bin, and never widens an all-positive
  /// or all-negative range to include 0 (there it is the Free grid). With 1 bit and a range of
  /// both signs no zero-aligned grid covers the range, and the Free grid is used.
  ZeroAligned
};

/// \brief Which elements share one affine map.
enum class Granularity { PerTensor, PerRow, PerColumn };

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

/// \brief The affine map of a range [lo, hi] (finite, lo ≤ hi) onto codes 0..B.
/// A constant range (lo == hi) maps every value to code 0 exactly (Δ = 1, zero point −lo), so
/// constant rows and tensors quantize exactly with no division by zero and no epsilon.
template <class Scalar>
AffineMap<Scalar> choose_grid(Scalar lo, Scalar hi, int levels, Grid grid) {
  const Scalar b = static_cast<Scalar>(levels);
  AffineMap<Scalar> map;
  const Scalar range = hi - lo;
  if (!(range > 0)) {
    map.zero_point = -lo;
    return map;
  }
  if (grid == Grid::ZeroAligned && lo <= 0 && hi >= 0) {
    const Scalar inf = std::numeric_limits<Scalar>::infinity();
    auto step_for = [&](Scalar k) {
      const Scalar neg = k > 0 ? -lo / k : (lo < 0 ? inf : Scalar(0));
      const Scalar pos = k < b ? hi / (b - k) : (hi > 0 ? inf : Scalar(0));
      return std::max(neg, pos);
    };
    const Scalar k_star = std::floor(b * (-lo) / range);
    const Scalar k0 = std::min(std::max(k_star, Scalar(0)), b);
    const Scalar k1 = std::min(k0 + 1, b);
    const Scalar d0 = step_for(k0), d1 = step_for(k1);
    const Scalar k = d1 < d0 ? k1 : k0;
    const Scalar step = std::min(d0, d1);
    if (step < inf && step > 0 && std::isfinite(1 / step)) {
      map.scale = step;
      map.inv_scale = 1 / step;
      map.zero_point = k;
      return map;
    }
  }
  map.scale = range / b;
  map.inv_scale = b / range;
  if (!(map.scale > 0) || !std::isfinite(map.inv_scale)) {
    // A range so small that its step underflows: treat it as constant (error ≤ hi − lo).
    map = AffineMap<Scalar>{};
    map.zero_point = -lo;
    return map;
  }
  map.zero_point = -lo * map.inv_scale;
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
  throw std::domain_error(concat(where, ": the range of the input overflows"));
}

/// \brief Minimum and maximum of row i; throws std::domain_error on NaN or ±Inf in x.
template <class Scalar>
void row_range(const MatrixCRef<Scalar>& x, Index i, Scalar& lo, Scalar& hi, const char* where) {
  if (!min_max(x.row(i).data(), x.cols(), lo, hi)) throw_non_finite<Scalar>(x, where);
}

}  // namespace detail
}  // namespace fqt
