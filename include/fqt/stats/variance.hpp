#pragma once
/// \file
/// \brief The statistics of gradient quantizers: Monte-Carlo estimates of the bias and of
/// E‖Q(x) − x‖² for any quantizer, the paper's closed-form variance bounds (digest §2.3), and a
/// seeded heavy-tailed synthetic gradient to evaluate them on.
///
/// The exact variance of a quantizer is its own `expected_variance(x)`; `monte_carlo` is the
/// independent check that the closed form describes what the quantizer really does.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant/block_householder.hpp"
#include "fqt/quant/grid.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {
namespace stats {

/// \brief A Monte-Carlo estimate of the error of a stochastic quantizer Q at a fixed input x.
///
/// With e_k = Q_k(x) − x the error of draw k (k = 0 … draws − 1, computed in double from the
/// Scalar values), `bias` is the per-element sample mean \f$ \bar e = \frac1K \sum_k e_k \f$ and
/// `bias_std_error` its standard error \f$ \sqrt{s^2/K} \f$ (s² the unbiased sample variance of
/// that element). `mean_squared_error` estimates \f$ \mathbb{E}\|Q(x) - x\|_F^2 \f$ as the mean of
/// ‖e_k‖², with standard error `mean_squared_error_std_error`. For an unbiased quantizer
/// \f$ \mathbb{E}\|Q(x) - x\|^2 \f$ is the variance `expected_variance(x)`. `total_bias` is the
/// mean of \f$ \sum_{ij} (e_k)_{ij} \f$, one scalar check of unbiasedness whose standard error is
/// measured across draws, so it stays right when a quantizer's element errors are correlated
/// (BHQ mixes the rows of a group).
struct MonteCarloEstimate {
  Matrix<double> bias;                      ///< per-element mean of Q(x) − x
  Matrix<double> bias_std_error;            ///< per-element standard error of `bias`
  double mean_squared_error = 0;            ///< mean over draws of ‖Q(x) − x‖²_F
  double mean_squared_error_std_error = 0;  ///< standard error of `mean_squared_error`
  double total_bias = 0;                    ///< mean over draws of Σ_ij (Q(x) − x)_ij
  double total_bias_std_error = 0;          ///< standard error of `total_bias`
  double max_abs_error = 0;                 ///< the largest |Q(x) − x| of any element in any draw
  Index draws = 0;                          ///< the number of independent draws K

  /// \brief How many standard errors the MSE estimate lies from a reference value, e.g. the exact
  /// `expected_variance(x)`: (mean_squared_error − reference) / mean_squared_error_std_error.
  /// ±infinity (or NaN) when the standard error is 0, i.e. when every draw had the same error.
  double mean_squared_error_z(double reference) const {
    return (mean_squared_error - reference) / mean_squared_error_std_error;
  }
};

namespace detail {

template <class Quantizer, class Scalar, class = void>
struct has_fake_quantize : std::false_type {};

template <class Quantizer, class Scalar>
struct has_fake_quantize<Quantizer, Scalar,
                         std::void_t<decltype(std::declval<const Quantizer&>().fake_quantize(
                             std::declval<const MatrixCRef<Scalar>&>(),
                             std::declval<const Philox&>(), std::declval<MatrixRef<Scalar>>()))>>
    : std::true_type {};

/// One draw of Q(x) into out: in place through fake_quantize when the quantizer has it (every fqt
/// quantizer does), otherwise through operator()(x, rng) and a copy.
template <class Quantizer, class Scalar>
void draw(const Quantizer& quantizer, const MatrixCRef<Scalar>& x, const Philox& rng,
          Matrix<Scalar>& out) {
  if constexpr (has_fake_quantize<Quantizer, Scalar>::value) {
    quantizer.fake_quantize(x, rng, out);
  } else {
    out = quantizer(x, rng);
    check(out.rows() == x.rows() && out.cols() == x.cols(), "fqt::stats::monte_carlo",
          "the quantizer returned a ", out.rows(), "x", out.cols(), " matrix for a ", x.rows(), "x",
          x.cols(), " input");
  }
}

/// Sums over one row of one draw's errors.
struct RowErrors {
  double squared = 0, sum = 0, largest = 0;
};

/// Welford's update of one row's per-element mean and M2 with the errors e = q − x of one draw
/// (inv_count = 1/(draws so far)). A function of its own so that the bounds and constants are
/// locals the compiler knows no store can alias.
template <class Scalar>
RowErrors accumulate_row(const Scalar* q, const Scalar* x, Index d, double inv_count, double* mean,
                         double* m2) {
  RowErrors row;
  for (Index j = 0; j < d; ++j) {
    const double e = static_cast<double>(q[j]) - static_cast<double>(x[j]);
    const double delta = e - mean[j];
    mean[j] += delta * inv_count;
    m2[j] += delta * (e - mean[j]);
    row.squared += e * e;
    row.sum += e;
    row.largest = std::max(row.largest, std::abs(e));
  }
  return row;
}

/// Largest bit width the bound functions accept: the widest code of fqt's quantizers.
inline constexpr int kMaxBoundBits = 16;

/// B = 2^bits − 1 as a double, after checking bits.
inline double checked_max_code(int bits, const char* where) {
  check(bits >= 1 && bits <= kMaxBoundBits, where, "bits must be in [1, ", kMaxBoundBits, "], got ",
        bits);
  return static_cast<double>((std::uint32_t{1} << bits) - 1u);
}

template <class Scalar>
void check_not_empty(const MatrixCRef<Scalar>& g, const char* where, const char* argument) {
  check(g.rows() > 0 && g.cols() > 0, where, argument, " must not be empty, got a ", g.rows(), "x",
        g.cols(), " matrix");
}

/// Row ranges λ_i = max_j g_ij − min_j g_ij (std::domain_error on NaN or ±Inf).
template <class Scalar>
Vector<Scalar> row_ranges(const MatrixCRef<Scalar>& g, const char* where) {
  Vector<Scalar> range(g.rows());
  for (Index i = 0; i < g.rows(); ++i) {
    Scalar lo, hi;
    fqt::detail::row_range<Scalar>(g, i, lo, hi, where);
    range(i) = hi - lo;
  }
  return range;
}

}  // namespace detail

// ---- Monte Carlo --------------------------------------------------------------------------------

/// \brief Monte-Carlo estimate of the bias and of \f$ \mathbb{E}\|Q(x) - x\|_F^2 \f$ of a
/// quantizer at x.
///
/// Draw k (k = 0 … draws − 1) quantizes x with the stream `rng.substream(k)`: draws are
/// independent of each other (distinct Philox streams) and the estimate is a pure function of
/// (quantizer, x, rng, draws) — reproducible, whatever the thread count. All draws write into one
/// output matrix (through `fake_quantize` when the quantizer has it); the statistics are
/// accumulated in double with Welford's update, row-parallel, in a fixed order.
/// \tparam Quantizer any type with `fake_quantize(x, rng, out)` or `operator()(x, rng)` over
///         `Matrix<Scalar>` (all fqt quantizers)
/// \param quantizer the quantizer Q (stochastic; a deterministic one gives zero standard errors)
/// \param x the input, N × D, not empty
/// \param rng the parent stream of the draws
/// \param draws K ≥ 2, the number of independent draws
/// \return the estimate; its standard errors shrink as \f$ 1/\sqrt{K} \f$
/// \throws std::invalid_argument when draws < 2 or x is empty
template <class Quantizer, class Derived>
MonteCarloEstimate monte_carlo(const Quantizer& quantizer, const Eigen::MatrixBase<Derived>& x,
                               const Philox& rng, Index draws) {
  using Scalar = typename Derived::Scalar;
  static_assert(std::is_floating_point_v<Scalar>,
                "fqt::stats::monte_carlo needs a floating-point matrix");
  constexpr const char* kWhere = "fqt::stats::monte_carlo";
  check(draws >= 2, kWhere, "draws must be at least 2 (a standard error needs two), got ", draws);
  const MatrixCRef<Scalar> input(x.derived());
  detail::check_not_empty<Scalar>(input, kWhere, "x");

  const Index n = input.rows(), d = input.cols();
  MonteCarloEstimate result;
  result.draws = draws;
  result.bias = Matrix<double>::Zero(n, d);
  Matrix<double> sum_sq_dev = Matrix<double>::Zero(n, d);  // Welford's M2, per element
  Matrix<Scalar> out(n, d);
  Vector<double> row_sq(n), row_sum(n), row_max(n);
  double mse_mean = 0, mse_sum_sq_dev = 0, total_mean = 0, total_sum_sq_dev = 0;
  for (Index k = 0; k < draws; ++k) {
    detail::draw(quantizer, input, rng.substream(static_cast<std::uint64_t>(k)), out);
    const double inv_count = 1.0 / static_cast<double>(k + 1);
    parallel_for(n, d, [&, inv_count](Index i) {
      const auto row = detail::accumulate_row(out.row(i).data(), input.row(i).data(), d, inv_count,
                                              result.bias.row(i).data(), sum_sq_dev.row(i).data());
      row_sq(i) = row.squared;
      row_sum(i) = row.sum;
      row_max(i) = row.largest;
    });
    const auto welford = [inv_count](double value, double& mean, double& sum_sq_dev) {
      const double delta = value - mean;
      mean += delta * inv_count;
      sum_sq_dev += delta * (value - mean);
    };
    welford(row_sq.sum(), mse_mean, mse_sum_sq_dev);
    welford(row_sum.sum(), total_mean, total_sum_sq_dev);
    result.max_abs_error = std::max(result.max_abs_error, row_max.maxCoeff());
  }
  const double k = static_cast<double>(draws);
  result.bias_std_error = (sum_sq_dev.array() / ((k - 1) * k)).sqrt().matrix();
  result.mean_squared_error = mse_mean;
  result.mean_squared_error_std_error = std::sqrt(mse_sum_sq_dev / ((k - 1) * k));
  result.total_bias = total_mean;
  result.total_bias_std_error = std::sqrt(total_sum_sq_dev / ((k - 1) * k));
  return result;
}

// ---- The paper's bounds (digest §2.3), on the paper's Free grid ---------------------------------

/// \brief PTQ's bound \f$ N D R(G)^2 / (4B^2) \f$, with R(G) = max G − min G and B = 2^bits − 1.
///
/// Stochastic rounding on a step Δ has variance Δ²f(1 − f) ≤ Δ²/4; PTQ's step on the paper's grid
/// is R/B. It bounds `PerTensorQuantizer(bits, Grid::Free).expected_variance(g)`. A zero-aligned
/// grid's step can reach R/(B − 1) (1.5× at 2 bits), so that grid may exceed this bound, although
/// its exact zeros cost nothing.
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \throws std::invalid_argument on bad bits or an empty g; std::domain_error on NaN/Inf
template <class Derived>
double ptq_bound(const Eigen::MatrixBase<Derived>& g, int bits) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::ptq_bound";
  const double b = detail::checked_max_code(bits, kWhere);
  const MatrixCRef<Scalar> x(g.derived());
  detail::check_not_empty<Scalar>(x, kWhere, "g");
  double lo = 0, hi = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    Scalar row_lo, row_hi;
    fqt::detail::row_range<Scalar>(x, i, row_lo, row_hi, kWhere);
    lo = i == 0 ? row_lo : std::min<double>(lo, row_lo);
    hi = i == 0 ? row_hi : std::max<double>(hi, row_hi);
  }
  const double range = hi - lo;
  return static_cast<double>(x.rows()) * static_cast<double>(x.cols()) * range * range /
         (4 * b * b);
}

/// \brief PSQ's bound \f$ \frac{D}{4B^2} \sum_i \lambda_i^2 \f$, λ_i = max_j G_ij − min_j G_ij.
///
/// Bounds `PerSampleQuantizer(bits, Grid::Free).expected_variance(g)` (one step λ_i/B per row).
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \throws std::invalid_argument on bad bits or an empty g; std::domain_error on NaN/Inf
template <class Derived>
double psq_bound(const Eigen::MatrixBase<Derived>& g, int bits) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::psq_bound";
  const double b = detail::checked_max_code(bits, kWhere);
  const MatrixCRef<Scalar> x(g.derived());
  detail::check_not_empty<Scalar>(x, kWhere, "g");
  const double sum_sq = detail::row_ranges<Scalar>(x, kWhere).template cast<double>().squaredNorm();
  return static_cast<double>(x.cols()) * sum_sq / (4 * b * b);
}

/// \brief The per-column quantizer's bound \f$ \frac{N}{4B^2} \sum_j \kappa_j^2 \f$, κ_j the range
/// of column j: PSQ's bound on the transpose (the grad-weight path, digest §1.2).
///
/// Bounds `PerColumnQuantizer(bits, Grid::Free).expected_variance(g)`.
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \throws std::invalid_argument on bad bits or an empty g; std::domain_error on NaN/Inf
template <class Derived>
double per_column_bound(const Eigen::MatrixBase<Derived>& g, int bits) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::per_column_bound";
  const double b = detail::checked_max_code(bits, kWhere);
  const MatrixCRef<Scalar> x(g.derived());
  detail::check_not_empty<Scalar>(x, kWhere, "g");
  detail::row_ranges<Scalar>(x, kWhere);  // rejects NaN/Inf with the index of the element
  const auto lo = x.colwise().minCoeff().template cast<double>();
  const auto hi = x.colwise().maxCoeff().template cast<double>();
  return static_cast<double>(x.rows()) * (hi - lo).squaredNorm() / (4 * b * b);
}

/// \brief The bound of the paper's general row transform (digest §2.3, third row of the table):
/// for \f$ Q(G) = T^{-1} Q_{psq}(T G) \f$,
/// \f$ \mathbb{E}\|Q(G) - G\|^2 \le \frac{D}{4B^2} \sum_r \|T^{-1} e_r\|^2 R((TG)_r)^2 \f$.
///
/// Holds because the noise of transformed element (r, j) has variance ≤ (R((TG)_r)/B)²/4 and is
/// independent of every other element's, and T⁻¹ maps it onto column j with weights T⁻¹e_r.
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \param transform T, acting on N rows: a BlockHouseholderTransform, a HadamardTransform (for
///        which ‖T⁻¹e_r‖ = 1) or a RowTransform holding either, over g's Scalar
/// \throws std::invalid_argument on bad bits, an empty g or a transform of another size;
/// std::domain_error on NaN/Inf
template <class Derived, class Transform>
double transform_bound(const Eigen::MatrixBase<Derived>& g, int bits, const Transform& transform) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::transform_bound";
  const double b = detail::checked_max_code(bits, kWhere);
  Matrix<Scalar> tg = g;
  detail::check_not_empty<Scalar>(tg, kWhere, "g");
  detail::row_ranges<Scalar>(tg, kWhere);  // rejects NaN/Inf in g itself
  check(transform.rows() == tg.rows(), kWhere, "the transform acts on ", transform.rows(),
        " rows, the matrix has ", tg.rows());
  transform.apply(tg);
  const Vector<double> weight = transform.inverse_column_norms();
  const Vector<double> range = detail::row_ranges<Scalar>(tg, kWhere).template cast<double>();
  return static_cast<double>(tg.cols()) * weight.dot(range.cwiseProduct(range)) / (4 * b * b);
}

/// \brief BHQ's strict bound: `transform_bound` with the transform that
/// `BlockHouseholderQuantizer` chooses for g (digest §2.3, general-transform row, and §3.3); PSQ's
/// bound when BHQ falls back to PSQ (N < 3, or every row constant).
///
/// Bounds `BlockHouseholderQuantizer(bits, Grid::Free).expected_variance(g)`; unlike
/// `bhq_heuristic` it is a guarantee.
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \throws std::invalid_argument on bad bits or an empty g; std::domain_error on NaN/Inf
template <class Derived>
double bhq_bound(const Eigen::MatrixBase<Derived>& g, int bits) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::bhq_bound";
  detail::checked_max_code(bits, kWhere);
  const MatrixCRef<Scalar> x(g.derived());
  detail::check_not_empty<Scalar>(x, kWhere, "g");
  const auto transform = fqt::detail::bhq_transform(detail::row_ranges<Scalar>(x, kWhere));
  if (!transform) return psq_bound(x, bits);
  return transform_bound(x, bits, *transform);
}

/// \brief BHQ's closed-form estimate \f$ \frac{D}{4B^2} (\sum_{heads} \lambda_i)^2 / N \f$ (digest
/// §2.3, last row of the table: every group at its optimal scaling, group sizes ∝ λ).
///
/// The heads are the rows BHQ's greedy rule selects (digest §3.3, step 3; the groups of
/// `BlockHouseholderQuantizer::transform_for`). It is an approximation — it assumes each head
/// dominates its group (λ_head ≫ m·λ_small) — not a bound: it can lie slightly below the exact
/// variance (the digest's check: 1,055 against a measured 1,075). When BHQ falls back to PSQ
/// (N < 3, or every row constant) it returns `psq_bound`.
/// \param g the gradient, N × D, not empty, finite
/// \param bits 1 ≤ bits ≤ 16
/// \throws std::invalid_argument on bad bits or an empty g; std::domain_error on NaN/Inf
template <class Derived>
double bhq_heuristic(const Eigen::MatrixBase<Derived>& g, int bits) {
  using Scalar = typename Derived::Scalar;
  constexpr const char* kWhere = "fqt::stats::bhq_heuristic";
  const double b = detail::checked_max_code(bits, kWhere);
  const MatrixCRef<Scalar> x(g.derived());
  detail::check_not_empty<Scalar>(x, kWhere, "g");
  const Vector<Scalar> range = detail::row_ranges<Scalar>(x, kWhere);
  const auto transform = fqt::detail::bhq_transform(range);
  if (!transform) return psq_bound(x, bits);
  double heads = 0;
  for (Index group = 0; group < transform->groups(); ++group) {
    heads += static_cast<double>(range(transform->member(group, 0)));
  }
  return static_cast<double>(x.cols()) * heads * heads / static_cast<double>(x.rows()) /
         (4 * b * b);
}

// ---- A synthetic heavy-tailed gradient ----------------------------------------------------------

/// \brief The shape of `heavy_tailed_gradient`'s distribution.
struct HeavyTailedGradientOptions {
  /// Row scales are log-uniform over [10^-decades, 1]: a few samples dominate the gradient.
  double decades = 4;
  /// Probability that an entry is exactly 0 (a ReLU-like mask), independently per entry.
  double zero_fraction = 0.5;
};

/// \brief A seeded synthetic gradient with the structure the paper exploits: row (sample) scales
/// spread over several orders of magnitude, so only a few rows are large, and exact zeros.
///
/// \f$ G_{ij} = s_i\, z_{ij}\, m_{ij} \f$ with \f$ s_i = 10^{-\text{decades}\cdot u_i} \f$,
/// u_i ~ U[0, 1) from `rng.substream(0).uniform(i)`, z_ij ~ N(0, 1) from
/// `rng.substream(1).normal(k)` and m_ij = [`rng.substream(2).uniform(k)` ≥ zero_fraction], with k
/// the row-major index i·D + j. A pure function of (rows, cols, rng, options): the same on every
/// machine and thread count.
/// \tparam Scalar float or double
/// \param rows N ≥ 1 (samples)
/// \param cols D ≥ 1 (features)
/// \param rng the seed and stream
/// \param options decades ≥ 0 and 0 ≤ zero_fraction < 1
/// \throws std::invalid_argument on a bad shape or option
template <class Scalar = float>
Matrix<Scalar> heavy_tailed_gradient(Index rows, Index cols, const Philox& rng,
                                     const HeavyTailedGradientOptions& options = {}) {
  static_assert(std::is_floating_point_v<Scalar>, "fqt: heavy_tailed_gradient needs a float type");
  constexpr const char* kWhere = "fqt::stats::heavy_tailed_gradient";
  check(rows >= 1 && cols >= 1, kWhere, "the shape must be at least 1x1, got ", rows, "x", cols);
  check(options.decades >= 0 && std::isfinite(options.decades), kWhere,
        "decades must be finite and >= 0, got ", options.decades);
  check(options.zero_fraction >= 0 && options.zero_fraction < 1, kWhere,
        "zero_fraction must be in [0, 1), got ", options.zero_fraction);
  const Philox scales = rng.substream(0), values = rng.substream(1), mask = rng.substream(2);
  Matrix<Scalar> g(rows, cols);
  parallel_for(rows, cols, [&](Index i) {
    const double s =
        std::pow(10.0, -options.decades * scales.uniform(static_cast<std::uint64_t>(i)));
    for (Index j = 0; j < cols; ++j) {
      const auto k = static_cast<std::uint64_t>(i * cols + j);
      g(i, j) = mask.uniform(k) < options.zero_fraction ? Scalar(0)
                                                        : static_cast<Scalar>(s * values.normal(k));
    }
  });
  return g;
}

}  // namespace stats
}  // namespace fqt
