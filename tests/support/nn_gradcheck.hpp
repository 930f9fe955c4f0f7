#pragma once
// Helpers of the nn tests: seeded random matrices, the relative error ‖g − ĝ‖/‖g + ĝ‖ of
// mlpack's CheckGradient, and central finite differences.

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"

namespace nn_test {

using fqt::Index;
using fqt::Matrix;

/// A rows × cols matrix of N(0, scale²) entries from stream (seed, stream).
template <class Scalar = double>
Matrix<Scalar> random_matrix(Index rows, Index cols, std::uint64_t seed, double scale = 1.0,
                             std::uint64_t stream = 0) {
  const fqt::Philox rng(seed, stream);
  Matrix<Scalar> m(rows, cols);
  for (Index k = 0; k < m.size(); ++k) {
    m.data()[k] = static_cast<Scalar>(scale * rng.normal(static_cast<std::uint64_t>(k)));
  }
  return m;
}

/// Random labels in [0, classes).
inline std::vector<int> random_labels(Index n, int classes, std::uint64_t seed) {
  const fqt::Philox rng(seed, 99);
  std::vector<int> labels(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) {
    labels[static_cast<std::size_t>(i)] =
        static_cast<int>(rng.uniform(static_cast<std::uint64_t>(i)) * classes) % classes;
  }
  return labels;
}

/// ‖a − b‖ / ‖a + b‖ (0 when both are 0).
template <class A, class B>
double relative_error(const A& a, const B& b) {
  const double num = (a.template cast<double>() - b.template cast<double>()).norm();
  const double den = (a.template cast<double>() + b.template cast<double>()).norm();
  return den == 0 ? num : num / den;
}

/// Central differences of f with respect to every element of x (x is restored afterwards).
inline Matrix<double> numerical_gradient(const std::function<double()>& f, Matrix<double>& x,
                                         double h = 1e-6) {
  Matrix<double> g(x.rows(), x.cols());
  for (Index k = 0; k < x.size(); ++k) {
    const double saved = x.data()[k];
    x.data()[k] = saved + h;
    const double up = f();
    x.data()[k] = saved - h;
    const double down = f();
    x.data()[k] = saved;
    g.data()[k] = (up - down) / (2 * h);
  }
  return g;
}

}  // namespace nn_test
