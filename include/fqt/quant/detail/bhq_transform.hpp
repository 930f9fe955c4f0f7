#pragma once
/// \file
/// \brief The construction of BHQ's transform from the row ranges, as in the paper (sort, greedy
/// heads, proportional groups, the −1/3 scaling); BlockHouseholderQuantizer applies it.

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {
namespace detail {

/// Largest absolute entry q_m of the m×m Householder matrix H_m that maps e₁ to 𝟙/√m.
inline double householder_max_entry(Index m) {
  if (m < 2) return 1;
  const double root = std::sqrt(static_cast<double>(m));
  const double a = 1.0 / (static_cast<double>(m) - root);  // off-diagonal magnitude of the smalls
  double q = std::max(1.0 / root, std::abs(1.0 - a));
  if (m >= 3) q = std::max(q, a);
  return q;
}

/// \brief The paper's BHQ transform for row ranges λ (§3.3 of the digest), or nothing when BHQ
/// falls back to PSQ (N < 3, or every row constant).
///
/// - Rows are sorted by range, descending; ties keep the lower row index first (stable).
/// - Heads: the smallest z such that z·λ_(k)/Σ_{i≤k} λ_(i) > 1 with k = N − z (strict, as the
///   reference's C++); the z other rows are "small".
/// - Head i receives c_i − c_{i−1} small rows, c_i = round(Σ_{j≤i} z·λ_(j)/S_k) (half away from
///   zero, in double), largest heads with largest small rows, so groups grow ∝ λ.
/// - Scales minimise the per-group proxy: s_small/s_head = ((λ₁/√m)(m − 1)/(λ₂ q_m))^{1/3}, with
///   λ₂ the group's largest small range, floored at ε·λ₁ so a group of constant small rows gets a
///   large but finite weight. The head keeps s = 1 (a common factor per group changes nothing:
///   the min/max quantizer is scale-equivariant) unless the ranges are so large that the
///   transformed rows could overflow; then every s is multiplied by the same power of two.
/// - The arithmetic runs on the ranges divided by a power of two near the largest, exactly: no
///   sum overflows, whatever the magnitudes, and every decision is the one of the plain ranges.
/// \param range λ_i of every row (finite, ≥ 0)
/// \param offset c_i of every row (see BlockHouseholderTransform), or empty for c = 0
template <class Scalar>
std::optional<BlockHouseholderTransform<Scalar>> bhq_transform(const Vector<Scalar>& range,
                                                               Vector<Scalar> offset = {}) {
  const Index n = range.size();
  if (n < 3) return std::nullopt;
  std::vector<Index> sorted(static_cast<std::size_t>(n));
  std::iota(sorted.begin(), sorted.end(), Index{0});
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](Index a, Index b) { return range(a) > range(b); });
  if (!(range(sorted[0]) > 0)) return std::nullopt;
  const int top = std::ilogb(static_cast<double>(range(sorted[0])));
  auto relative = [&](Index row) { return std::ldexp(static_cast<double>(range(row)), -top); };
  auto lambda = [&](Index i) { return relative(sorted[i]); };  // 0-based, in [0, 2)

  double total = 0;
  for (Index i = 0; i < n; ++i) total += lambda(i);
  Index z = 0, k = n;
  while (z < n - 1) {  // z = N − 1 always stops it: (N − 1)·λ_(1)/λ_(1) > 1
    ++z;
    total -= lambda(n - z);
    k = n - z;
    if (static_cast<double>(z) * lambda(k - 1) / total > 1) break;
  }

  std::vector<Index> order, offsets{0};
  order.reserve(static_cast<std::size_t>(n));
  Vector<Scalar> scale = Vector<Scalar>::Ones(n);
  double cumulative = 0;
  Index given = 0, largest_group = 1;
  for (Index i = 0; i < k; ++i) {
    cumulative += static_cast<double>(z) * lambda(i) / total;
    Index upto = static_cast<Index>(std::round(cumulative));
    if (i == k - 1) {
      FQT_ASSERT(upto == z);
      upto = z;  // guards float drift: every small row is given to some head
    }
    upto = std::min(std::max(upto, given), z);
    const Index m = upto - given + 1;
    largest_group = std::max(largest_group, m);
    order.push_back(sorted[i]);
    for (Index j = given; j < upto; ++j) order.push_back(sorted[k + j]);
    if (m >= 2) {
      const double head = lambda(i);
      const double small =
          std::max(lambda(k + given), head * std::numeric_limits<Scalar>::epsilon());
      const double w1 = head / std::sqrt(static_cast<double>(m));
      const double w2 = small * householder_max_entry(m);
      const double ratio = std::cbrt(w1 * static_cast<double>(m - 1) / w2);
      for (Index j = given; j < upto; ++j) scale(sorted[k + j]) = static_cast<Scalar>(ratio);
    }
    given = upto;
    offsets.push_back(static_cast<Index>(order.size()));
  }

  // Every value T and T⁻¹ form is below 27·m·max_r s_r·λ_r (|s·(x − c)| ≤ s·λ; a reflection
  // grows a column's largest entry by at most 3√m, once forward and once back): keep that 16
  // times below the largest Scalar.
  double largest = 0;
  for (Index r = 0; r < n; ++r) largest = std::max(largest, double(scale(r)) * relative(r));
  const double excess = std::log2(32.0 * static_cast<double>(largest_group) * largest) + top -
                        std::log2(static_cast<double>(std::numeric_limits<Scalar>::max()));
  if (excess > -4) {
    const int shift = static_cast<int>(std::ceil(excess)) + 4;
    for (Index r = 0; r < n; ++r) scale(r) = std::ldexp(scale(r), -shift);
  }
  return BlockHouseholderTransform<Scalar>(std::move(order), std::move(offsets), std::move(scale),
                                           std::move(offset));
}

}  // namespace detail
}  // namespace fqt
