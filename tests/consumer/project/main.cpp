// A user's program: quantizes a gradient with the installed fqt and checks the mean of the
// fake-quantized draws against the input.
#include <cmath>
#include <fqt/fqt.hpp>
#include <iostream>

int main() {
  fqt::Matrix<float> g(8, 64);
  const fqt::Philox init(1);
  for (fqt::Index i = 0; i < g.size(); ++i) {
    g.data()[i] = static_cast<float>(init.normal(static_cast<std::uint64_t>(i)) * (1 + i % 5));
  }
  const fqt::PerSampleQuantizer<> psq(4);  // independent errors: Var(sum) = E||Q(g) - g||^2
  const int draws = 4000;
  fqt::Matrix<double> mean = fqt::Matrix<double>::Zero(g.rows(), g.cols());
  for (int k = 0; k < draws; ++k) mean += psq(g, fqt::Philox(2, k)).cast<double>();
  mean /= draws;
  // 6 standard errors of the mean of the total error, from the exact variance.
  const double se = std::sqrt(psq.expected_variance(g) / draws);
  const double err = (mean - g.cast<double>()).sum();
  std::cout << "sum of bias " << err << ", 6 standard errors " << 6 * se << "\n";
  std::cout << "unbiased: " << (std::abs(err) < 6 * se ? "yes" : "no") << "\n";
  return 0;
}
