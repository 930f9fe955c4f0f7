// The quantizer example of README.md, verbatim inside a test so that it keeps compiling and
// keeps meaning what the README says.
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>

TEST_CASE("the README's quantizer example works as described", "[quant][readme]") {
  // --- README example begins ---
  fqt::Matrix<float> grad(128, 4096);  // rows are samples, e.g. dL/dY of a linear layer
  const fqt::Philox init(42);
  for (fqt::Index k = 0; k < grad.size(); ++k)
    grad.data()[k] = static_cast<float>(init.normal(k) * (k < 4096 ? 100 : 1));  // one huge row

  const fqt::Philox rng(/*seed=*/7);
  const fqt::BlockHouseholderQuantizer<float> bhq(/*bits=*/4);  // Grid::ZeroAligned by default
  const auto q = bhq.quantize(grad, rng.substream(/*step=*/0, /*layer=*/3, /*role=*/0));
  // q.codes: 128×4096 uint8 in [0, 15]; q.scale, q.zero_point: one per transformed row;
  // q.transform: the block Householder transform T (dequantize() applies T⁻¹).
  const fqt::Matrix<float> approx = q.dequantize();  // unbiased: E[approx] = grad

  const float exact = bhq.expected_variance(grad);  // E‖Q(G) − G‖²
  const float psq = fqt::PerSampleQuantizer<float>(4).expected_variance(grad);
  const float ptq = fqt::PerTensorQuantizer<float>(4).expected_variance(grad);
  // --- README example ends ---
  REQUIRE(q.codes.maxCoeff() <= 15);
  REQUIRE(q.transform);
  REQUIRE(approx.rows() == 128);
  REQUIRE(exact < psq);
  REQUIRE(psq < ptq);
}
