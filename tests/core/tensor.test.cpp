// Zero-copy matrix views of Eigen tensors (core/tensor.hpp).
#include <catch2/catch.hpp>
#include <fqt/core/tensor.hpp>
#include <fqt/quant.hpp>

TEST_CASE("a row-major tensor is viewed as N x (rest) without a copy", "[core][tensor]") {
  Eigen::Tensor<float, 4, Eigen::RowMajor> g(3, 2, 4, 5);  // N, C, H, W
  for (Eigen::Index k = 0; k < g.size(); ++k) g.data()[k] = static_cast<float>(k % 17) - 8;
  auto view = fqt::as_matrix(g);
  REQUIRE(view.rows() == 3);
  REQUIRE(view.cols() == 40);
  REQUIRE(view.data() == g.data());
  REQUIRE(view(1, 2 * 5 + 3) == g(1, 0, 2, 3));
  REQUIRE(view(2, 1 * 20 + 3 * 5 + 4) == g(2, 1, 3, 4));
  // Writable: fake quantization straight into the tensor's storage.
  const fqt::Matrix<float> before = view;
  fqt::PerSampleQuantizer<float>(4).fake_quantize(before, fqt::Philox(1), fqt::as_matrix(g));
  REQUIRE(fqt::as_matrix(g) == fqt::PerSampleQuantizer<float>(4)(before, fqt::Philox(1)));
  // Maps of const data give read-only views; quantizers take them directly.
  const Eigen::TensorMap<const Eigen::Tensor<float, 3, Eigen::RowMajor>> map(before.data(), 3, 8,
                                                                             5);
  const auto q =
      fqt::BlockHouseholderQuantizer<float>(4).quantize(fqt::as_matrix(map), fqt::Philox(2));
  REQUIRE(q.codes.rows() == 3);
  REQUIRE(q.codes.cols() == 40);
}
