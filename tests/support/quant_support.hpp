#pragma once
// Test inputs and statistical checks shared by the quantizer tests.

#include <catch2/catch.hpp>
#include <cmath>
#include <fqt/quant.hpp>
#include <vector>

namespace fqt_test {

using fqt::Index;
using fqt::Matrix;

/// Calls f(quantizer) for each of the four stochastic quantizers at the given bits and grid.
template <class Scalar, class F>
void for_each_quantizer(int bits, fqt::Grid grid, F&& f) {
  f(fqt::PerTensorQuantizer<Scalar>(bits, grid));
  f(fqt::PerSampleQuantizer<Scalar>(bits, grid));
  f(fqt::PerColumnQuantizer<Scalar>(bits, grid));
  f(fqt::BlockHouseholderQuantizer<Scalar>(bits, grid));
}

/// Gaussian rows with the given scales (row i has standard deviation scales[i % size]).
template <class Scalar>
Matrix<Scalar> scaled_rows(Index rows, Index cols, const std::vector<double>& scales,
                           std::uint64_t seed) {
  const fqt::Philox rng(seed, 99);
  Matrix<Scalar> x(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j)
      x(i, j) = static_cast<Scalar>(scales[static_cast<std::size_t>(i) % scales.size()] *
                                    rng.normal(static_cast<std::uint64_t>(i * cols + j)));
  return x;
}

/// The paper's heavy-tailed example (digest §2.3): row scales 100, 30, 10, then 1.
template <class Scalar>
Matrix<Scalar> heavy_tailed(Index rows, Index cols, std::uint64_t seed) {
  std::vector<double> scales(static_cast<std::size_t>(rows), 1.0);
  const double head[] = {100, 30, 10};
  for (std::size_t i = 0; i < 3 && i < scales.size(); ++i) scales[i] = head[i];
  return scaled_rows<Scalar>(rows, cols, scales, seed);
}

/// A ReLU-masked gradient: each entry is zero with probability `zeros`.
template <class Scalar>
Matrix<Scalar> sparse(Index rows, Index cols, double zeros, std::uint64_t seed) {
  Matrix<Scalar> x = heavy_tailed<Scalar>(rows, cols, seed);
  const fqt::Philox mask(seed, 7);
  for (Index k = 0; k < x.size(); ++k)
    if (mask.uniform(static_cast<std::uint64_t>(k)) < zeros) x.data()[k] = 0;
  return x;
}

/// Monte-Carlo moments of Q(x) − x over `draws` independent streams.
struct Moments {
  Matrix<double> mean;  // per-element mean of Q(x) − x
  double mse = 0;       // mean of ‖Q(x) − x‖²
  double mse_se = 0;    // its standard error
  int draws = 0;
};

template <class Q, class Scalar>
Moments moments(const Q& q, const Matrix<Scalar>& x, int draws, std::uint64_t seed) {
  Moments m;
  m.draws = draws;
  m.mean = Matrix<double>::Zero(x.rows(), x.cols());
  double s1 = 0, s2 = 0;
  Matrix<Scalar> out(x.rows(), x.cols());
  for (int k = 0; k < draws; ++k) {
    q.fake_quantize(x, fqt::Philox(seed, static_cast<std::uint64_t>(k)), out);
    const Matrix<double> e = (out - x).template cast<double>();
    m.mean += e;
    const double n2 = e.squaredNorm();
    s1 += n2;
    s2 += n2 * n2;
  }
  m.mean /= draws;
  m.mse = s1 / draws;
  m.mse_se = std::sqrt(std::max(0.0, s2 / draws - m.mse * m.mse) / (draws - 1.0));
  return m;
}

/// Every element's mean error is within 6 standard errors of zero — computed from the exact
/// per-element variance — plus an allowance for float rounding (a few ulps of the element and
/// 2^-16 of the largest step, the resolution of the noise).
template <class Scalar>
void require_unbiased(const Moments& m, const Matrix<double>& variance, const Matrix<Scalar>& x,
                      double max_step) {
  const double ulp = static_cast<double>(std::numeric_limits<Scalar>::epsilon());
  Index worst_i = 0, worst_j = 0;
  double worst = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    for (Index j = 0; j < x.cols(); ++j) {
      const double band = 6 * std::sqrt(variance(i, j) / m.draws) +
                          8 * ulp * (std::abs(static_cast<double>(x(i, j))) + max_step) +
                          max_step * 0x1.0p-16;
      const double ratio = std::abs(m.mean(i, j)) / band;
      if (ratio > worst) worst = ratio, worst_i = i, worst_j = j;
    }
  }
  INFO("worst element (" << worst_i << ", " << worst_j << "): |mean error| = "
                         << std::abs(m.mean(worst_i, worst_j)) << ", band ratio " << worst);
  REQUIRE(worst <= 1.0);
}

}  // namespace fqt_test
