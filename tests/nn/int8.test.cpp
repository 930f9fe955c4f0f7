// The int8 backend: its integer products equal the exact products of the dequantized codes (to
// the rounding of the epilogue), for linear and conv, every quantizer an integer GEMM can run,
// bits 2–8, odd shapes, padding and stride, both grids.
#include "fqt/nn/backends/int8.hpp"
#ifdef FQT_TEST_DNNL
#include "fqt/nn/backends/dnnl.hpp"
#endif

#include <catch2/catch.hpp>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "fqt/core/parallel.hpp"
#include "fqt/nn/functional.hpp"
#include "support/nn_gradcheck.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
using fqt::Vector;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {

// The integer engines under test: the portable one always, oneDNN's when the build has it.
const std::vector<std::shared_ptr<const nn::Backend>>& int8_backends() {
  static const std::vector<std::shared_ptr<const nn::Backend>> backends = {
      nn::int8_backend(),
#ifdef FQT_TEST_DNNL
      nn::dnnl_backend(),
#endif
  };
  return backends;
}

template <class Scalar>
struct Grads {
  Matrix<Scalar> y, dx, dw;
  Vector<Scalar> db;
};

template <class Scalar>
Grads<Scalar> linear_step(const nn::QuantPolicy& policy, Index n, Index in, Index out,
                          double offset) {
  const Matrix<Scalar> x =
      (nn_test::random_matrix(n, in, 601).array() + offset).matrix().template cast<Scalar>();
  const Matrix<Scalar> w = nn_test::random_matrix(out, in, 602).template cast<Scalar>();
  const Vector<Scalar> b = nn_test::random_matrix(out, 1, 603).template cast<Scalar>();
  const Matrix<Scalar> g = nn_test::random_matrix(n, out, 604).template cast<Scalar>();
  nn::LinearCache<Scalar> cache;
  Grads<Scalar> r{Matrix<Scalar>(n, out), Matrix<Scalar>(n, in), Matrix<Scalar>::Zero(out, in),
                  Vector<Scalar>::Zero(out)};
  nn::linear_forward(x, w, b, policy, cache, r.y);
  nn::linear_backward(g, cache, nn::gradient_streams(Philox(3), 4, 5), r.dx, r.dw, r.db);
  return r;
}

template <class Scalar>
Grads<Scalar> conv_step(const nn::QuantPolicy& policy, const nn::Conv2dGeometry& geo, Index n,
                        double offset, nn::ConvColumns columns = nn::ConvColumns::Keep,
                        std::size_t* state_bytes = nullptr) {
  const Matrix<Scalar> x = (nn_test::random_matrix(n, geo.input_size(), 611).array() + offset)
                               .matrix()
                               .template cast<Scalar>();
  const Matrix<Scalar> w =
      nn_test::random_matrix(geo.out_channels, geo.patch_size(), 612).template cast<Scalar>();
  const Vector<Scalar> b = nn_test::random_matrix(geo.out_channels, 1, 613).template cast<Scalar>();
  const Matrix<Scalar> g =
      nn_test::random_matrix(n, geo.output_size(), 614).template cast<Scalar>();
  nn::Conv2dCache<Scalar> cache;
  cache.columns = columns;
  Grads<Scalar> r{Matrix<Scalar>(n, geo.output_size()), Matrix<Scalar>(n, geo.input_size()),
                  Matrix<Scalar>::Zero(geo.out_channels, geo.patch_size()),
                  Vector<Scalar>::Zero(geo.out_channels)};
  nn::conv2d_forward(x, w, b, geo, policy, cache, r.y);
  nn::conv2d_backward(g, cache, nn::gradient_streams(Philox(3), 4, 5), r.dx, r.dw, r.db);
  if (state_bytes) *state_bytes = fqt::nn::detail::bytes_of(cache.state);
  return r;
}

// Both backends quantize with the same quantizers and streams, so they multiply the same codes:
// the simulated backend's products are the exact products of the dequantized codes up to the
// rounding of its Scalar GEMM, the int8 backend's up to the rounding of its epilogue.
template <class Scalar>
void check_close(const Grads<Scalar>& a, const Grads<Scalar>& b, double tolerance) {
  CHECK(nn_test::relative_error(a.y, b.y) < tolerance);
  CHECK(nn_test::relative_error(a.dx, b.dx) < tolerance);
  CHECK(nn_test::relative_error(a.dw, b.dw) < tolerance);
  CHECK(a.db == b.db);  // never quantized: the same full-precision sums
}

nn::QuantPolicy policy_for(fqt::QuantizerKind grad_input, fqt::QuantizerKind grad_weight, int bits,
                           fqt::Grid grid) {
  nn::QuantPolicy p;
  p.activation_bits = p.weight_bits = bits;
  p.grad_input = {grad_input, bits, grid};
  p.grad_weight = {grad_weight, bits, grid};
  return p;
}

// Every pairing an integer GEMM can run: grad-input scales constant along the columns of G,
// grad-weight scales constant along the conv contraction (which also covers linear's).
template <class F>
void for_each_integer_pairing(F&& f) {
  for (const auto& gi : fqt::kQuantizerKinds) {
    if (!fqt::can_feed(gi.kind, fqt::Contraction::Columns)) continue;
    for (const auto& gw : fqt::kQuantizerKinds) {
      if (!fqt::can_feed(gw.kind, fqt::Contraction::RowsAndChannels)) continue;
      f(gi, gw);
    }
  }
}

}  // namespace

TEST_CASE("int8 products equal the exact products of the dequantized codes (double)",
          "[nn][int8]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  // In double both results are the exact product to ~1e-15; any error of the integer algebra
  // (a zero-point term, a stride, T⁻¹'s offsets, the padding code) is of the order of the result.
  // Stride 2 forms the column gradient; stride 1 runs the transposed convolution, whose own
  // padding is kernel − 1 − padding: 1 (same), 1 (unpadded, a 2 × 2 kernel) and 0 (padding 2).
  const nn::Conv2dGeometry strided(3, 7, 9, 5, 3, 2, 1);
  const nn::Conv2dGeometry same(3, 7, 9, 5, 3, 1, 1);
  const nn::Conv2dGeometry unpadded(2, 6, 5, 4, 2, 1, 0);
  const nn::Conv2dGeometry full(2, 5, 6, 3, 3, 1, 2);
  for_each_integer_pairing([&](const auto& gi, const auto& gw) {
    for (int bits : {2, 4, 8}) {
      for (fqt::Grid grid : {fqt::Grid::ZeroAligned, fqt::Grid::Free}) {
        for (double offset : {0.0, 2.5}) {  // 2.5: inputs > 0, a zero point off the free grid
          CAPTURE(gi.name, gw.name, bits, static_cast<int>(grid), offset);
          nn::QuantPolicy simulated = policy_for(gi.kind, gw.kind, bits, grid);
          nn::QuantPolicy int8 = simulated;
          int8.backend = backend;
          check_close(linear_step<double>(int8, 13, 11, 7, offset),
                      linear_step<double>(simulated, 13, 11, 7, offset), 1e-12);
          check_close(conv_step<double>(int8, strided, 5, offset),
                      conv_step<double>(simulated, strided, 5, offset), 1e-12);
          for (const auto& geo : {same, unpadded, full})
            check_close(conv_step<double>(int8, geo, 3, offset),
                        conv_step<double>(simulated, geo, 3, offset), 1e-12);
        }
      }
    }
  });
}

TEST_CASE("int8 products in float agree with the simulated backend to float rounding",
          "[nn][int8]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  // Float rounding of a depth-d dot product and of the epilogue: far below 1e-5 relative for the
  // depths here (≤ 300); a wrong term would be of order 1.
  const nn::Conv2dGeometry geo(4, 10, 10, 6, 3, 1, 1);
  for_each_integer_pairing([&](const auto& gi, const auto& gw) {
    for (int bits : {3, 8}) {
      CAPTURE(gi.name, gw.name, bits);
      nn::QuantPolicy simulated = policy_for(gi.kind, gw.kind, bits, fqt::Grid::ZeroAligned);
      nn::QuantPolicy int8 = simulated;
      int8.backend = backend;
      check_close(linear_step<float>(int8, 33, 300, 17, 0.0),
                  linear_step<float>(simulated, 33, 300, 17, 0.0), 1e-5);
      check_close(conv_step<float>(int8, geo, 6, 0.0), conv_step<float>(simulated, geo, 6, 0.0),
                  1e-5);
    }
  });
}

TEST_CASE("int8 backend: Exact and QAT run their unquantized products in floating point",
          "[nn][int8]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  const nn::Conv2dGeometry geo(3, 7, 9, 5, 3, 2, 1);
  for (nn::Mode mode : {nn::Mode::Exact, nn::Mode::QAT}) {
    CAPTURE(nn::to_string(mode));
    nn::QuantPolicy simulated = nn::QuantPolicy::with_mode(mode);
    nn::QuantPolicy int8 = simulated;
    int8.backend = backend;
    const double tolerance = mode == nn::Mode::Exact ? 0.0 : 1e-12;
    const auto a = linear_step<double>(int8, 9, 8, 5, 0.0);
    const auto b = linear_step<double>(simulated, 9, 8, 5, 0.0);
    const auto c = conv_step<double>(int8, geo, 4, 1.0);
    const auto d = conv_step<double>(simulated, geo, 4, 1.0);
    if (mode == nn::Mode::Exact) {
      CHECK(a.y == b.y);
      CHECK(a.dx == b.dx);
      CHECK(a.dw == b.dw);
      CHECK(c.y == d.y);
      CHECK(c.dx == d.dx);
      CHECK(c.dw == d.dw);
    } else {
      check_close(a, b, 1e-12);
      check_close(c, d, 1e-12);
    }
    (void)tolerance;
  }
}

TEST_CASE("int8 results do not depend on the number of threads", "[nn][int8][threads]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  const int saved = fqt::num_threads();
  nn::QuantPolicy policy;
  policy.backend = backend;
  policy.grad_weight.kind = fqt::QuantizerKind::PerChannel;
  const nn::Conv2dGeometry geo(8, 12, 12, 16, 3, 1, 1);
  fqt::set_num_threads(1);
  const auto l1 = linear_step<float>(policy, 64, 300, 200, 0.0);
  const auto c1 = conv_step<float>(policy, geo, 24, 0.0);
  fqt::set_num_threads(2);
  const auto l2 = linear_step<float>(policy, 64, 300, 200, 0.0);
  const auto c2 = conv_step<float>(policy, geo, 24, 0.0);
  fqt::set_num_threads(saved);
  CHECK(l1.y == l2.y);
  CHECK(l1.dx == l2.dx);
  CHECK(l1.dw == l2.dw);
  CHECK(c1.y == c2.y);
  CHECK(c1.dx == c2.dx);
  CHECK(c1.dw == c2.dw);
}

TEST_CASE("conv layers that recompute their columns give the same bits and smaller state",
          "[nn][int8][conv][memory]") {
  std::vector<std::shared_ptr<const nn::Backend>> backends = int8_backends();
  backends.push_back(nullptr);  // the simulated backend
  const auto backend = GENERATE_COPY(from_range(backends));
  const auto mode = GENERATE(nn::Mode::Exact, nn::Mode::QAT, nn::Mode::FQT);
  // Unit stride (the int8 grad-input as a transposed convolution) and stride 2 (col2im).
  const Index stride = GENERATE(1, 2);
  CAPTURE(backend ? backend->name() : "simulated", nn::to_string(mode), stride);
  nn::QuantPolicy policy = policy_for(fqt::QuantizerKind::BlockHouseholder,
                                      fqt::QuantizerKind::PerChannel, 4, fqt::Grid::Auto);
  policy.mode = mode;
  policy.backend = backend;
  const nn::Conv2dGeometry geo(3, 9, 9, 5, 3, stride, 1);
  std::size_t keep_bytes = 0, small = 0, large = 0, large_keep = 0;
  // 11 and 29 samples: pieces of 8 with a shorter last one.
  const auto k11 = conv_step<float>(policy, geo, 11, 0.3, nn::ConvColumns::Keep, &keep_bytes);
  const auto r11 = conv_step<float>(policy, geo, 11, 0.3, nn::ConvColumns::Recompute, &small);
  const auto k29 = conv_step<float>(policy, geo, 29, 0.3, nn::ConvColumns::Keep, &large_keep);
  const auto r29 = conv_step<float>(policy, geo, 29, 0.3, nn::ConvColumns::Recompute, &large);
  for (const auto& [keep, recompute] : {std::pair(k11, r11), std::pair(k29, r29)}) {
    CHECK(keep.y == recompute.y);
    CHECK(keep.dx == recompute.dx);
    CHECK(keep.dw == recompute.dw);
    CHECK(keep.db == recompute.db);
  }
  // The whole batch's columns are gone: at least 29·(C·kh·kw)·(Ho·Wo) bytes (codes) less.
  const std::size_t columns = std::size_t(29 * geo.patch_size() * geo.out_plane());
  CHECK(large + columns <= large_keep);
  CHECK(small < keep_bytes);
  if (backend && mode == nn::Mode::FQT) {
    // Every buffer of the integer path is sized by a piece of samples, not by the batch.
    CHECK(small == large);
  }
}

TEST_CASE("int8 backend: a feature contraction past the exact int32 bound throws",
          "[nn][int8][errors]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  // 8-bit codes times 8-bit signed codes: Σ of more than (2³¹ − 1)/(255·128) = 65793 terms could
  // overflow int32.
  CHECK(fqt::max_exact_depth(255) == 65793);
  CHECK(fqt::max_exact_depth(15) == 1118481);
  nn::QuantPolicy policy;
  policy.backend = backend;
  const Index in = 65794;
  const Matrix<float> x = Matrix<float>::Ones(1, in), w = Matrix<float>::Ones(1, in);
  nn::LinearCache<float> cache;
  Matrix<float> y(1, 1);
  CHECK_THROWS_AS(nn::linear_forward(x, w, Vector<float>(), policy, cache, y), std::domain_error);
  CHECK_THROWS_WITH(
      nn::linear_forward(x, w, Vector<float>(), policy, cache, y),
      Contains("Int8Backend::linear_forward") && Contains("65794 terms") && Contains("65793"));
  CHECK_FALSE(cache.complete);
  // One term fewer is exact: all-ones codes at the top of the grid.
  const Matrix<float> x2 = Matrix<float>::Ones(1, in - 1), w2 = Matrix<float>::Ones(1, in - 1);
  nn::linear_forward(x2, w2, Vector<float>(), policy, cache, y);
  CHECK(y(0, 0) == Approx(in - 1).epsilon(1e-6));
}

TEST_CASE("int8 backend: a contraction over many samples is split into exact pieces",
          "[nn][int8]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  // Linear grad-weight contracts over the batch: 70000 samples exceed one exact piece at 8 bits.
  nn::QuantPolicy simulated;
  simulated.grad_input.kind = fqt::QuantizerKind::PerTensor;
  nn::QuantPolicy int8 = simulated;
  int8.backend = backend;
  check_close(linear_step<double>(int8, 70000, 3, 2, 0.0),
              linear_step<double>(simulated, 70000, 3, 2, 0.0), 1e-12);
}

TEST_CASE("int8 backend refuses the per-column conv grad-weight quantizer", "[nn][int8][errors]") {
  const auto backend = GENERATE(from_range(int8_backends()));
  CAPTURE(backend->name());
  nn::QuantPolicy policy;
  policy.backend = backend;
  policy.grad_weight.kind = fqt::QuantizerKind::PerColumn;
  const nn::Conv2dGeometry geo(1, 4, 4, 2, 3, 1, 1);
  CHECK_THROWS_WITH(conv_step<float>(policy, geo, 2, 0.0),
                    Contains("nn::conv2d_forward") &&
                        Contains(std::string(backend->name()) + " backend") &&
                        Contains("'column'"));
  // Linear's grad-weight contracts over the samples only: per-column scales factor out there.
  CHECK_NOTHROW(linear_step<float>(policy, 5, 4, 3, 0.0));
}

#ifdef FQT_TEST_DNNL
TEST_CASE("oneDNN engines: each instance runs on its own engine, one after another",
          "[nn][int8][onednn]") {
  // A second engine, made after the first is gone, must not reuse anything bound to the first.
  const nn::QuantPolicy simulated;
  const auto expected = linear_step<double>(simulated, 6, 5, 4, 0.0);
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    const fqt::DnnlIntegerGemm engine;
    nn::QuantPolicy int8 = simulated;
    int8.backend = std::make_shared<const nn::Int8Backend>(engine);
    check_close(linear_step<double>(int8, 6, 5, 4, 0.0), expected, 1e-12);
  }
}
#endif
