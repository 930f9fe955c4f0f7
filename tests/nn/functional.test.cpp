#include "fqt/nn/functional.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>

#include "fqt/core/parallel.hpp"
#include "support/nn_gradcheck.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
using fqt::Vector;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {

nn::QuantPolicy exact_policy() { return nn::QuantPolicy::with_mode(nn::Mode::Exact); }
nn::QuantPolicy qat_policy() { return nn::QuantPolicy::with_mode(nn::Mode::QAT); }

const nn::GradientStreams kStreams = nn::gradient_streams(Philox(11), 0, 0);

// y[n, k, oy, ox] = b[k] + Σ w[k, c, i, j]·x[n, c, oy·sh − ph + i, ox·sw − pw + j] by direct loops.
Matrix<double> naive_conv(const Matrix<double>& x, const Matrix<double>& w, const Vector<double>& b,
                          const nn::Conv2dGeometry& g) {
  const Index ho = g.out_height(), wo = g.out_width();
  Matrix<double> y = Matrix<double>::Zero(x.rows(), g.output_size());
  for (Index n = 0; n < x.rows(); ++n)
    for (Index k = 0; k < g.out_channels; ++k)
      for (Index oy = 0; oy < ho; ++oy)
        for (Index ox = 0; ox < wo; ++ox) {
          double acc = b.size() ? b(k) : 0.0;
          for (Index c = 0; c < g.in_channels; ++c)
            for (Index i = 0; i < g.kernel_height; ++i)
              for (Index j = 0; j < g.kernel_width; ++j) {
                const Index iy = oy * g.stride_height - g.padding_height + i;
                const Index ix = ox * g.stride_width - g.padding_width + j;
                if (iy < 0 || iy >= g.in_height || ix < 0 || ix >= g.in_width) continue;
                acc += w(k, (c * g.kernel_height + i) * g.kernel_width + j) *
                       x(n, (c * g.in_height + iy) * g.in_width + ix);
              }
          y(n, (k * ho + oy) * wo + ox) = acc;
        }
  return y;
}

// The adjoint of naive_conv: gradients of Σ G ⊙ y with respect to x, w and b, by direct loops.
void naive_conv_backward(const Matrix<double>& x, const Matrix<double>& w, const Matrix<double>& gy,
                         const nn::Conv2dGeometry& g, Matrix<double>& gx, Matrix<double>& gw,
                         Vector<double>& gb) {
  const Index ho = g.out_height(), wo = g.out_width();
  gx = Matrix<double>::Zero(x.rows(), x.cols());
  gw = Matrix<double>::Zero(w.rows(), w.cols());
  gb = Vector<double>::Zero(g.out_channels);
  for (Index n = 0; n < x.rows(); ++n)
    for (Index k = 0; k < g.out_channels; ++k)
      for (Index oy = 0; oy < ho; ++oy)
        for (Index ox = 0; ox < wo; ++ox) {
          const double go = gy(n, (k * ho + oy) * wo + ox);
          gb(k) += go;
          for (Index c = 0; c < g.in_channels; ++c)
            for (Index i = 0; i < g.kernel_height; ++i)
              for (Index j = 0; j < g.kernel_width; ++j) {
                const Index iy = oy * g.stride_height - g.padding_height + i;
                const Index ix = ox * g.stride_width - g.padding_width + j;
                if (iy < 0 || iy >= g.in_height || ix < 0 || ix >= g.in_width) continue;
                const Index wi = (c * g.kernel_height + i) * g.kernel_width + j;
                const Index xi = (c * g.in_height + iy) * g.in_width + ix;
                gx(n, xi) += w(k, wi) * go;
                gw(k, wi) += x(n, xi) * go;
              }
        }
}

// A random valid geometry (the kernel always fits the padded input).
nn::Conv2dGeometry random_geometry(std::uint64_t seed) {
  const Philox rng(seed, 5);
  std::uint64_t draw = 0;
  auto pick = [&](Index lo, Index hi) {
    return lo + static_cast<Index>(rng.uniform(draw++) * static_cast<double>(hi - lo + 1));
  };
  nn::Conv2dGeometry g;
  do {
    g.in_channels = pick(1, 3);
    g.in_height = pick(1, 7);
    g.in_width = pick(1, 7);
    g.out_channels = pick(1, 4);
    g.kernel_height = pick(1, 4);
    g.kernel_width = pick(1, 4);
    g.stride_height = pick(1, 3);
    g.stride_width = pick(1, 3);
    g.padding_height = pick(0, 2);
    g.padding_width = pick(0, 2);
  } while (g.kernel_height > g.in_height + 2 * g.padding_height ||
           g.kernel_width > g.in_width + 2 * g.padding_width);
  return g;
}

}  // namespace

TEST_CASE("Exact linear_forward computes X W^T + b", "[nn][linear]") {
  const Matrix<double> x = nn_test::random_matrix(5, 7, 1);
  const Matrix<double> w = nn_test::random_matrix(3, 7, 2);
  const Vector<double> b = nn_test::random_matrix(3, 1, 3);
  nn::LinearCache<double> cache;
  Matrix<double> y(5, 3);
  nn::linear_forward(x, w, b, exact_policy(), cache, y);
  const Matrix<double> expected = (x * w.transpose()).rowwise() + b.transpose();
  CHECK(nn_test::relative_error(y, expected) < 1e-14);
}

TEST_CASE("Exact linear and conv caches can refer to X and W instead of copying them",
          "[nn][linear][conv]") {
  const Matrix<double> x = nn_test::random_matrix(5, 7, 1);
  const Matrix<double> w = nn_test::random_matrix(3, 7, 2);
  const Matrix<double> g = nn_test::random_matrix(5, 3, 4);
  const Vector<double> no_bias;
  const auto streams = nn::gradient_streams(Philox(1), 0, 0);
  nn::LinearCache<double> copying, borrowing;
  borrowing.borrow_exact_operands = true;
  Matrix<double> y(5, 3), y_borrowed(5, 3), dx(5, 7), dx_borrowed(5, 7);
  Matrix<double> dw = Matrix<double>::Zero(3, 7), dw_borrowed = Matrix<double>::Zero(3, 7);
  Vector<double> db(0);
  nn::linear_forward<double>(x, w, no_bias, exact_policy(), copying, y);
  nn::linear_forward<double>(x, w, no_bias, exact_policy(), borrowing, y_borrowed);
  CHECK_FALSE(copying.input.borrowed());
  CHECK(borrowing.input.borrowed());
  CHECK(borrowing.weight.borrowed());
  CHECK(borrowing.input.operand().value().data() == x.data());  // a view, no copy
  CHECK(borrowing.weight.operand().value().data() == w.data());
  nn::linear_backward<double>(g, copying, streams, dx, dw, db);
  nn::linear_backward<double>(g, borrowing, streams, dx_borrowed, dw_borrowed, db);
  CHECK(y_borrowed == y);
  CHECK(dx_borrowed == dx);
  CHECK(dw_borrowed == dw);
  // Quantized modes store Q_f(X) and Q_f(W), never a view.
  nn::linear_forward<double>(x, w, no_bias, nn::QuantPolicy::with_mode(nn::Mode::QAT), borrowing,
                             y_borrowed);
  CHECK_FALSE(borrowing.input.borrowed());
  CHECK_FALSE(borrowing.weight.borrowed());

  const nn::Conv2dGeometry geo(2, 5, 5, 3, 3);
  const Matrix<double> cx = nn_test::random_matrix(2, geo.input_size(), 5);
  const Matrix<double> cw = nn_test::random_matrix(3, geo.patch_size(), 6);
  nn::Conv2dCache<double> conv;
  conv.borrow_exact_operands = true;
  Matrix<double> cy(2, geo.output_size());
  nn::conv2d_forward<double>(cx, cw, no_bias, geo, exact_policy(), conv, cy);
  CHECK(conv.weight.borrowed());
  CHECK(conv.weight.operand().value().data() == cw.data());
}

TEST_CASE("Linear gradients in Exact mode match finite differences", "[nn][linear][gradcheck]") {
  Matrix<double> x = nn_test::random_matrix(6, 5, 10);
  Matrix<double> w = nn_test::random_matrix(4, 5, 11);
  Matrix<double> bm = nn_test::random_matrix(4, 1, 12);
  const Matrix<double> r = nn_test::random_matrix(6, 4, 13);  // L = Σ r ⊙ y, so ∂L/∂y = r
  nn::LinearCache<double> cache;
  auto loss = [&] {
    Matrix<double> y(6, 4);
    nn::linear_forward(x, w, Vector<double>(bm), exact_policy(), cache, y);
    return r.cwiseProduct(y).sum();
  };
  loss();
  Matrix<double> gx(6, 5), gw = Matrix<double>::Zero(4, 5);
  Vector<double> gb = Vector<double>::Zero(4);
  nn::linear_backward(r, cache, kStreams, gx, gw, gb);
  CHECK(nn_test::relative_error(gx, nn_test::numerical_gradient(loss, x)) < 1e-8);
  CHECK(nn_test::relative_error(gw, nn_test::numerical_gradient(loss, w)) < 1e-8);
  CHECK(nn_test::relative_error(gb, nn_test::numerical_gradient(loss, bm)) < 1e-8);
}

TEST_CASE("linear_backward overwrites grad_input and accumulates grad_weight and grad_bias",
          "[nn][linear]") {
  const Matrix<double> x = nn_test::random_matrix(4, 3, 20);
  const Matrix<double> w = nn_test::random_matrix(2, 3, 21);
  const Matrix<double> g = nn_test::random_matrix(4, 2, 22);
  nn::LinearCache<double> cache;
  Matrix<double> y(4, 2);
  nn::linear_forward(x, w, Vector<double>(), exact_policy(), cache, y);
  Matrix<double> gx = Matrix<double>::Constant(4, 3, 7.0), gw = Matrix<double>::Zero(2, 3);
  Vector<double> gb = Vector<double>::Zero(2);
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);
  const Matrix<double> gx1 = gx, gw1 = gw;
  const Vector<double> gb1 = gb;
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);
  CHECK(gx == gx1);
  CHECK(nn_test::relative_error(gw, 2 * gw1) < 1e-15);
  CHECK(nn_test::relative_error(gb, 2 * gb1) < 1e-15);
  CHECK(nn_test::relative_error(gx1, g * w) < 1e-14);
  CHECK(nn_test::relative_error(gb1, g.colwise().sum().transpose()) < 1e-14);

  SECTION("outputs of size 0 are skipped") {
    Matrix<double> none;
    Vector<double> no_bias;
    Matrix<double> gw2 = Matrix<double>::Zero(2, 3);
    nn::linear_backward(g, cache, kStreams, none, gw2, no_bias);
    CHECK(gw2 == gw1);
  }
}

TEST_CASE("linear_forward and linear_backward work on Eigen::Map-ped foreign buffers",
          "[nn][linear]") {
  // The README example (nn section): a foreign training loop owns plain float buffers.
  std::vector<float> x(8 * 16), w(4 * 16), b(4, 0.5f), y(8 * 4), dy(8 * 4);
  std::vector<float> dx(8 * 16), dw(4 * 16, 0.0f), db(4, 0.0f);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.3f * static_cast<float>(i));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = std::cos(0.7f * static_cast<float>(i));
  // Not constant: a constant gradient is on every grid and would quantize exactly.
  for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = 0.01f * std::sin(1.3f * i + 0.2f);

  using MatrixMap = Eigen::Map<fqt::Matrix<float>>;
  using VectorMap = Eigen::Map<fqt::Vector<float>>;
  fqt::nn::QuantPolicy policy;  // FQT: 8-bit forward, BHQ 8-bit grad-input, per-column grad-weight
  fqt::nn::LinearCache<float> cache;
  fqt::nn::linear_forward(MatrixMap(x.data(), 8, 16), MatrixMap(w.data(), 4, 16),
                          VectorMap(b.data(), 4), policy, cache, MatrixMap(y.data(), 8, 4));
  const std::uint64_t step = 0, layer = 3;
  fqt::nn::linear_backward(
      MatrixMap(dy.data(), 8, 4), cache, fqt::nn::gradient_streams(fqt::Philox(42), step, layer),
      MatrixMap(dx.data(), 8, 16), MatrixMap(dw.data(), 4, 16), VectorMap(db.data(), 4));

  CHECK(nn_test::relative_error(
            MatrixMap(y.data(), 8, 4),
            ((cache.input.values() * cache.weight.values().transpose()).array() + 0.5f).matrix()) <
        1e-6);
  // The gradients, recomputed with the policy's quantizers on the same streams: grad-input is
  // BHQ 8-bit, grad-weight per channel (= per column on a linear layer) at 8 bits, both
  // stochastic on the automatic grid (the default).
  const Eigen::Map<const fqt::Matrix<float>> g(dy.data(), 8, 4);
  const auto streams = fqt::nn::gradient_streams(fqt::Philox(42), step, layer);
  const fqt::Matrix<float> g_input = fqt::BlockHouseholderQuantizer<float, fqt::Stochastic>(
      8, fqt::Grid::Auto)(g, streams.grad_input);
  const fqt::Matrix<float> g_weight =
      fqt::PerColumnQuantizer<float, fqt::Stochastic>(8, fqt::Grid::Auto)(g, streams.grad_weight);
  REQUIRE(g_input != g);  // the quantizers did change the gradient
  REQUIRE(g_weight != g);
  CHECK(nn_test::relative_error(MatrixMap(dx.data(), 8, 16), g_input * cache.weight.values()) <
        1e-6);
  CHECK(nn_test::relative_error(MatrixMap(dw.data(), 4, 16),
                                g_weight.transpose() * cache.input.values()) < 1e-6);
  // The check can fail: the unquantized products are far outside its tolerance.
  CHECK(nn_test::relative_error(g * cache.weight.values(), g_input * cache.weight.values()) > 1e-4);
  CHECK(nn_test::relative_error(g.transpose() * cache.input.values(),
                                g_weight.transpose() * cache.input.values()) > 1e-4);
  // Full-precision column sums of dy.
  CHECK(nn_test::relative_error(VectorMap(db.data(), 4), g.colwise().sum().transpose()) < 1e-6);
}

TEST_CASE("Conv2d forward and backward match a direct loop convolution", "[nn][conv]") {
  const auto seed = static_cast<std::uint64_t>(GENERATE(range(0, 24)));
  const nn::Conv2dGeometry g = random_geometry(seed);
  CAPTURE(seed, g.in_channels, g.in_height, g.in_width, g.out_channels, g.kernel_height,
          g.kernel_width, g.stride_height, g.stride_width, g.padding_height, g.padding_width);
  const Index n = 1 + static_cast<Index>(seed % 5);  // includes batches that are not a chunk
  const Matrix<double> x = nn_test::random_matrix(n, g.input_size(), 100 + seed);
  const Matrix<double> w = nn_test::random_matrix(g.out_channels, g.patch_size(), 200 + seed);
  const Vector<double> b = nn_test::random_matrix(g.out_channels, 1, 300 + seed);
  const Matrix<double> gy = nn_test::random_matrix(n, g.output_size(), 400 + seed);

  nn::Conv2dCache<double> cache;
  Matrix<double> y(n, g.output_size());
  nn::conv2d_forward(x, w, b, g, exact_policy(), cache, y);
  CHECK(nn_test::relative_error(y, naive_conv(x, w, b, g)) < 1e-13);

  Matrix<double> gx(n, g.input_size()), gw = Matrix<double>::Zero(w.rows(), w.cols());
  Vector<double> gb = Vector<double>::Zero(g.out_channels);
  nn::conv2d_backward(gy, cache, kStreams, gx, gw, gb);
  Matrix<double> ex, ew;
  Vector<double> eb;
  naive_conv_backward(x, w, gy, g, ex, ew, eb);
  CHECK(nn_test::relative_error(gx, ex) < 1e-13);
  CHECK(nn_test::relative_error(gw, ew) < 1e-13);
  CHECK(nn_test::relative_error(gb, eb) < 1e-13);
}

TEST_CASE("Conv2d gradients in Exact mode match finite differences", "[nn][conv][gradcheck]") {
  nn::Conv2dGeometry g(2, 5, 4, 3, 3, 2, 1);
  g.kernel_width = 2;  // a rectangular kernel
  Matrix<double> x = nn_test::random_matrix(3, g.input_size(), 30);
  Matrix<double> w = nn_test::random_matrix(g.out_channels, g.patch_size(), 31);
  Matrix<double> bm = nn_test::random_matrix(g.out_channels, 1, 32);
  const Matrix<double> r = nn_test::random_matrix(3, g.output_size(), 33);
  nn::Conv2dCache<double> cache;
  auto loss = [&] {
    Matrix<double> y(3, g.output_size());
    nn::conv2d_forward(x, w, Vector<double>(bm), g, exact_policy(), cache, y);
    return r.cwiseProduct(y).sum();
  };
  loss();
  Matrix<double> gx(3, g.input_size()), gw = Matrix<double>::Zero(w.rows(), w.cols());
  Vector<double> gb = Vector<double>::Zero(g.out_channels);
  nn::conv2d_backward(r, cache, kStreams, gx, gw, gb);
  CHECK(nn_test::relative_error(gx, nn_test::numerical_gradient(loss, x)) < 1e-8);
  CHECK(nn_test::relative_error(gw, nn_test::numerical_gradient(loss, w)) < 1e-8);
  CHECK(nn_test::relative_error(gb, nn_test::numerical_gradient(loss, bm)) < 1e-8);
}

TEST_CASE("QAT gradients equal Exact gradients at the quantized forward values", "[nn][qat]") {
  SECTION("linear") {
    const Matrix<float> x = nn_test::random_matrix<float>(9, 12, 40);
    const Matrix<float> w = nn_test::random_matrix<float>(5, 12, 41);
    const Matrix<float> g = nn_test::random_matrix<float>(9, 5, 42);
    const Vector<float> b = nn_test::random_matrix<float>(5, 1, 43);
    nn::LinearCache<float> qat, exact;
    Matrix<float> yq(9, 5), ye(9, 5);
    nn::linear_forward(x, w, b, qat_policy(), qat, yq);
    // Q_f really changed the operands, and the forward is the Exact forward at Q_f(X), Q_f(W).
    CHECK(qat.input.values() != x);
    CHECK(qat.weight.values() != w);
    const Matrix<float> xq = qat.input.values(), wq = qat.weight.values();
    nn::linear_forward(xq, wq, b, exact_policy(), exact, ye);
    CHECK(yq == ye);
    Matrix<float> gxq(9, 12), gxe(9, 12), gwq = Matrix<float>::Zero(5, 12),
                                          gwe = Matrix<float>::Zero(5, 12);
    Vector<float> gbq = Vector<float>::Zero(5), gbe = Vector<float>::Zero(5);
    nn::linear_backward(g, qat, kStreams, gxq, gwq, gbq);
    nn::linear_backward(g, exact, kStreams, gxe, gwe, gbe);
    CHECK(gxq == gxe);
    CHECK(gwq == gwe);
    CHECK(gbq == gbe);
  }
  SECTION("conv2d") {
    const nn::Conv2dGeometry geo(3, 6, 6, 4, 3, 1, 1);
    const Matrix<float> x = nn_test::random_matrix<float>(5, geo.input_size(), 50);
    const Matrix<float> w = nn_test::random_matrix<float>(4, geo.patch_size(), 51);
    const Matrix<float> g = nn_test::random_matrix<float>(5, geo.output_size(), 52);
    nn::Conv2dCache<float> qat, exact;
    Matrix<float> yq(5, geo.output_size()), ye(5, geo.output_size());
    nn::conv2d_forward(x, w, Vector<float>(), geo, qat_policy(), qat, yq);
    const Matrix<float> xq = qat.input.values(), wq = qat.weight.values();
    CHECK(xq != x);
    nn::conv2d_forward(xq, wq, Vector<float>(), geo, exact_policy(), exact, ye);
    CHECK(yq == ye);
    Matrix<float> gxq(5, geo.input_size()), gxe(5, geo.input_size());
    Matrix<float> gwq = Matrix<float>::Zero(4, geo.patch_size()), gwe = gwq;
    Vector<float> none;
    nn::conv2d_backward(g, qat, kStreams, gxq, gwq, none);
    nn::conv2d_backward(g, exact, kStreams, gxe, gwe, none);
    CHECK(gxq == gxe);
    CHECK(gwq == gwe);
  }
}

TEST_CASE("FQT backward quantizes the output gradient twice with independent streams",
          "[nn][fqt]") {
  const Matrix<float> x = nn_test::random_matrix<float>(16, 10, 60);
  const Matrix<float> w = nn_test::random_matrix<float>(6, 10, 61);
  const Matrix<float> g = nn_test::random_matrix<float>(16, 6, 62);
  nn::QuantPolicy policy;
  policy.grad_input.bits = 3;
  policy.grad_weight.bits = 3;
  nn::LinearCache<float> cache;
  Matrix<float> y(16, 6);
  nn::linear_forward(x, w, Vector<float>(), policy, cache, y);

  auto run = [&](const nn::GradientStreams& s, Matrix<float>& gx, Matrix<float>& gw,
                 Vector<float>& gb) {
    gx.resize(16, 10);
    gw = Matrix<float>::Zero(6, 10);
    gb = Vector<float>::Zero(6);
    nn::linear_backward(g, cache, s, gx, gw, gb);
  };
  const auto base = nn::gradient_streams(Philox(5), 7, 2);
  Matrix<float> gx0, gw0, gx1, gw1, gx2, gw2;
  Vector<float> gb0, gb1, gb2;
  run(base, gx0, gw0, gb0);
  // The grad-input result depends only on the grad-input stream, and vice versa.
  run({base.grad_input, Philox(5, 12345)}, gx1, gw1, gb1);
  CHECK(gx1 == gx0);
  CHECK(gw1 != gw0);
  run({Philox(5, 12345), base.grad_weight}, gx2, gw2, gb2);
  CHECK(gx2 != gx0);
  CHECK(gw2 == gw0);
  // The quantized gradient used for grad-input is not the one used for grad-weight.
  CHECK(cache.grad_for_input.values() != cache.grad_for_weight.values());
  // Both differ from the QAT gradients, and the bias gradient is full precision.
  CHECK(nn_test::relative_error(gx0, g * cache.weight.values()) > 1e-4);
  CHECK(nn_test::relative_error(gw0, g.transpose() * cache.input.values()) > 1e-4);
  CHECK(nn_test::relative_error(gb0, g.colwise().sum().transpose()) < 1e-6);
  // Streams of different (step, layer, role) differ; the same triple gives the same stream.
  CHECK(base.grad_input.stream() != base.grad_weight.stream());
  CHECK(nn::gradient_streams(Philox(5), 7, 2).grad_input.stream() == base.grad_input.stream());
  CHECK(nn::gradient_streams(Philox(5), 8, 2).grad_input.stream() != base.grad_input.stream());
  CHECK(nn::gradient_streams(Philox(5), 7, 3).grad_input.stream() != base.grad_input.stream());
}

TEST_CASE("A reused cache does not reallocate in the steady state", "[nn][linear][conv]") {
  nn::QuantPolicy policy;
  const Matrix<float> x = nn_test::random_matrix<float>(8, 12, 70);
  const Matrix<float> w = nn_test::random_matrix<float>(5, 12, 71);
  const Matrix<float> g = nn_test::random_matrix<float>(8, 5, 72);
  nn::LinearCache<float> cache;
  Matrix<float> y(8, 5), gx(8, 12), gw = Matrix<float>::Zero(5, 12);
  Vector<float> gb = Vector<float>::Zero(5);
  nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);
  const float* pointers[] = {cache.input.values().data(), cache.weight.values().data(),
                             cache.grad_for_input.values().data(),
                             cache.grad_for_weight.values().data()};
  nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);
  CHECK(pointers[0] == cache.input.values().data());
  CHECK(pointers[1] == cache.weight.values().data());
  CHECK(pointers[2] == cache.grad_for_input.values().data());
  CHECK(pointers[3] == cache.grad_for_weight.values().data());

  const nn::Conv2dGeometry geo(2, 5, 5, 3, 3, 1, 1);
  const Matrix<float> cx = nn_test::random_matrix<float>(6, geo.input_size(), 73);
  const Matrix<float> cw = nn_test::random_matrix<float>(3, geo.patch_size(), 74);
  const Matrix<float> cg = nn_test::random_matrix<float>(6, geo.output_size(), 75);
  nn::Conv2dCache<float> cc;
  Matrix<float> cy(6, geo.output_size()), cgx(6, geo.input_size()),
      cgw = Matrix<float>::Zero(3, geo.patch_size());
  Vector<float> cgb = Vector<float>::Zero(3);
  nn::conv2d_forward(cx, cw, Vector<float>(), geo, policy, cc, cy);
  nn::conv2d_backward(cg, cc, kStreams, cgx, cgw, cgb);
  using ConvState = nn::SimulatedBackend::ConvState<float>;
  const nn::BackendState* state = cc.state.get();
  auto conv_buffers = [&] {
    const auto& s = dynamic_cast<const ConvState&>(*cc.state);
    return std::vector<const float*>{s.columns.data(), cc.input.values().data(),
                                     cc.weight.values().data(), s.thread_columns[0].data(),
                                     s.chunk_grad_weight[1].data()};
  };
  const std::vector<const float*> conv_pointers = conv_buffers();
  nn::conv2d_forward(cx, cw, Vector<float>(), geo, policy, cc, cy);
  nn::conv2d_backward(cg, cc, kStreams, cgx, cgw, cgb);
  CHECK(cc.state.get() == state);
  CHECK(conv_buffers() == conv_pointers);
}

TEST_CASE("FQT functional ops give bit-identical results with 1 and 2 threads",
          "[nn][fqt][threads]") {
  const int saved = fqt::num_threads();
  nn::QuantPolicy policy;
  policy.grad_input.bits = 4;
  const Matrix<float> x = nn_test::random_matrix<float>(64, 300, 80);
  const Matrix<float> w = nn_test::random_matrix<float>(200, 300, 81);
  const Matrix<float> g = nn_test::random_matrix<float>(64, 200, 82);
  const nn::Conv2dGeometry geo(8, 12, 12, 16, 3, 1, 1);
  const Matrix<float> cx = nn_test::random_matrix<float>(24, geo.input_size(), 83);
  const Matrix<float> cw = nn_test::random_matrix<float>(16, geo.patch_size(), 84);
  const Matrix<float> cg = nn_test::random_matrix<float>(24, geo.output_size(), 85);
  auto run = [&](int threads) {
    fqt::set_num_threads(threads);
    std::vector<Matrix<float>> out;
    nn::LinearCache<float> cache;
    Matrix<float> y(64, 200), gx(64, 300), gw = Matrix<float>::Zero(200, 300);
    Vector<float> gb = Vector<float>::Zero(200);
    nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
    nn::linear_backward(g, cache, kStreams, gx, gw, gb);
    out.insert(out.end(), {y, gx, gw});
    nn::Conv2dCache<float> cc;
    Matrix<float> cy(24, geo.output_size()), cgx(24, geo.input_size()),
        cgw = Matrix<float>::Zero(16, geo.patch_size());
    Vector<float> cgb = Vector<float>::Zero(16);
    nn::conv2d_forward(cx, cw, Vector<float>(), geo, policy, cc, cy);
    nn::conv2d_backward(cg, cc, kStreams, cgx, cgw, cgb);
    out.insert(out.end(), {cy, cgx, cgw});
    return out;
  };
  const auto one = run(1);
  const auto two = run(2);
  fqt::set_num_threads(saved);
  for (std::size_t i = 0; i < one.size(); ++i) {
    CAPTURE(i);
    CHECK(one[i] == two[i]);
  }
}

TEST_CASE("ReLU, MaxPool2d and BatchNorm2d gradients match finite differences", "[nn][gradcheck]") {
  SECTION("relu") {
    Matrix<double> x = nn_test::random_matrix(4, 6, 90);
    x = x.unaryExpr([](double v) { return std::abs(v) < 0.05 ? v + 0.2 : v; });  // no kinks
    const Matrix<double> r = nn_test::random_matrix(4, 6, 91);
    auto loss = [&] {
      Matrix<double> y(4, 6);
      nn::relu_forward(x, y);
      return r.cwiseProduct(y).sum();
    };
    Matrix<double> y(4, 6), gx(4, 6);
    nn::relu_forward(x, y);
    nn::relu_backward(y, r, gx);
    CHECK(nn_test::relative_error(gx, nn_test::numerical_gradient(loss, x)) < 1e-8);
  }
  SECTION("max_pool2d with stride, padding and overlapping windows") {
    const auto [kernel, stride, padding] =
        GENERATE(std::make_tuple(2, 2, 0), std::make_tuple(3, 2, 1), std::make_tuple(3, 1, 1));
    const nn::Pool2dGeometry g(2, 5, 6, kernel, stride, padding);
    // Distinct, well-separated values: no ties, so the max is differentiable.
    Matrix<double> x(3, g.input_size());
    for (Index k = 0; k < x.size(); ++k) {
      x.data()[k] = 0.1 * static_cast<double>((k * 37) % x.size());
    }
    const Matrix<double> r = nn_test::random_matrix(3, g.output_size(), 92);
    nn::MaxPool2dCache<double> cache;
    auto loss = [&] {
      Matrix<double> y(3, g.output_size());
      nn::max_pool2d_forward(x, g, cache, y);
      return r.cwiseProduct(y).sum();
    };
    loss();
    Matrix<double> gx(3, g.input_size());
    nn::max_pool2d_backward(r, cache, gx);
    CHECK(nn_test::relative_error(gx, nn_test::numerical_gradient(loss, x, 1e-4)) < 1e-8);
  }
  SECTION("batch_norm2d with batch statistics and with running statistics") {
    const bool batch_statistics = GENERATE(true, false);
    Matrix<double> x = nn_test::random_matrix(4, 3 * 6, 93, 2.0);
    Matrix<double> gamma = nn_test::random_matrix(3, 1, 94);
    Matrix<double> beta = nn_test::random_matrix(3, 1, 95);
    const Matrix<double> r = nn_test::random_matrix(4, 18, 96);
    Vector<double> mean = Vector<double>::Constant(3, 0.3), var = Vector<double>::Constant(3, 1.7);
    nn::BatchNorm2dCache<double> cache;
    auto loss = [&] {
      Matrix<double> y(4, 18);
      nn::batch_norm2d_forward(x, 3, Vector<double>(gamma), Vector<double>(beta), mean, var, 0.1,
                               1e-5, batch_statistics, false, cache, y);
      return r.cwiseProduct(y).sum();
    };
    loss();
    Matrix<double> gx(4, 18);
    Vector<double> gg = Vector<double>::Zero(3), gbeta = Vector<double>::Zero(3);
    nn::batch_norm2d_backward(r, Vector<double>(gamma), cache, gx, gg, gbeta);
    CHECK(nn_test::relative_error(gx, nn_test::numerical_gradient(loss, x)) < 1e-7);
    CHECK(nn_test::relative_error(gg, nn_test::numerical_gradient(loss, gamma)) < 1e-7);
    CHECK(nn_test::relative_error(gbeta, nn_test::numerical_gradient(loss, beta)) < 1e-7);
  }
}

TEST_CASE("BatchNorm2d normalises per channel and updates running statistics", "[nn][bn]") {
  const Matrix<double> x = nn_test::random_matrix(8, 2 * 9, 97, 3.0).array() + 5.0;
  Vector<double> gamma = Vector<double>::Ones(2), beta = Vector<double>::Zero(2);
  Vector<double> mean = Vector<double>::Zero(2), var = Vector<double>::Ones(2);
  nn::BatchNorm2dCache<double> cache;
  Matrix<double> y(8, 18);
  nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.25, 1e-5, true, true, cache, y);
  for (Index c = 0; c < 2; ++c) {
    Eigen::ArrayXd xs(72), ys(72);
    for (Index s = 0; s < 8; ++s) {
      xs.segment(s * 9, 9) = x.row(s).segment(c * 9, 9).transpose().array();
      ys.segment(s * 9, 9) = y.row(s).segment(c * 9, 9).transpose().array();
    }
    CHECK(std::abs(ys.mean()) < 1e-12);
    CHECK(std::abs((ys * ys).mean() - 1) < 1e-5);
    const double unbiased = (xs - xs.mean()).square().sum() / 71;
    CHECK(mean(c) == Approx(0.25 * xs.mean()).epsilon(1e-12));
    CHECK(var(c) == Approx(0.75 + 0.25 * unbiased).epsilon(1e-12));
  }
}

TEST_CASE("Functional ops reject bad shapes with messages naming function, argument and value",
          "[nn][errors]") {
  nn::LinearCache<float> cache;
  const Matrix<float> x = Matrix<float>::Ones(4, 5), w = Matrix<float>::Ones(3, 6);
  Matrix<float> y(4, 3);
  CHECK_THROWS_WITH(
      nn::linear_forward(x, w, Vector<float>(), exact_policy(), cache, y),
      Contains("nn::linear_forward") && Contains("input has 5 features") && Contains("expects 6"));
  const Matrix<float> w5 = Matrix<float>::Ones(3, 5);
  CHECK_THROWS_WITH(nn::linear_forward(x, w5, Vector<float>::Ones(4), exact_policy(), cache, y),
                    Contains("bias has size 4"));
  Matrix<float> wrong_y(4, 2);
  CHECK_THROWS_AS(nn::linear_forward(x, w5, Vector<float>(), exact_policy(), cache, wrong_y),
                  std::invalid_argument);
  nn::QuantPolicy bad_bits;
  bad_bits.grad_input.bits = 9;
  CHECK_THROWS_WITH(nn::linear_forward(x, w5, Vector<float>(), bad_bits, cache, y),
                    Contains("grad_input.bits") && Contains("9"));

  nn::Conv2dCache<float> cc;
  const nn::Conv2dGeometry geo(3, 4, 4, 2, 3, 1, 0);
  Matrix<float> cy(2, geo.output_size());
  CHECK_THROWS_WITH(
      nn::conv2d_forward(Matrix<float>::Ones(2, 2 * 16), Matrix<float>::Ones(2, 27),
                         Vector<float>(), geo, exact_policy(), cc, cy),
      Contains("nn::conv2d_forward") && Contains("input has 32 columns") && Contains("48"));
  CHECK_THROWS_WITH(nn::conv2d_forward(Matrix<float>::Ones(2, 48), Matrix<float>::Ones(2, 18),
                                       Vector<float>(), geo, exact_policy(), cc, cy),
                    Contains("weight must be") && Contains("2 x 27"));
  const nn::Conv2dGeometry too_big(1, 2, 2, 1, 5, 1, 1);
  Matrix<float> big_y(1, 1);
  CHECK_THROWS_WITH(nn::conv2d_forward(Matrix<float>::Ones(1, 4), Matrix<float>::Ones(1, 25),
                                       Vector<float>(), too_big, exact_policy(), cc, big_y),
                    Contains("kernel 5 x 5 is larger than the padded input 4 x"));
  nn::Pool2dGeometry pool(1, 2, 2, 3, 1, 0);
  nn::MaxPool2dCache<float> pc;
  Matrix<float> py(1, 1);
  CHECK_THROWS_WITH(nn::max_pool2d_forward(Matrix<float>::Ones(1, 4), pool, pc, py),
                    Contains("larger than the padded input"));
}

TEST_CASE("NaN or infinity in a gradient or input is a domain_error naming the element",
          "[nn][errors]") {
  const Matrix<float> x = nn_test::random_matrix<float>(4, 5, 1);
  const Matrix<float> w = nn_test::random_matrix<float>(3, 5, 2);
  const auto mode = GENERATE(nn::Mode::Exact, nn::Mode::QAT, nn::Mode::FQT);
  const auto policy = nn::QuantPolicy::with_mode(mode);
  nn::LinearCache<float> cache;
  Matrix<float> y(4, 3), gx(4, 5), gw = Matrix<float>::Zero(3, 5);
  Vector<float> gb = Vector<float>::Zero(3);
  nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
  Matrix<float> g = Matrix<float>::Ones(4, 3);
  g(2, 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(nn::linear_backward(g, cache, kStreams, gx, gw, gb), std::domain_error);
  CHECK_THROWS_WITH(nn::linear_backward(g, cache, kStreams, gx, gw, gb),
                    Contains("nn::linear_backward") && Contains("grad_output") &&
                        Contains("(2, 1)") && Contains("nan"));
  CHECK(gw.isZero());  // nothing was written
  g(2, 1) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_AS(nn::linear_backward(g, cache, kStreams, gx, gw, gb), std::domain_error);
  Matrix<float> bad_x = x;
  bad_x(0, 0) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(nn::linear_forward(bad_x, w, Vector<float>(), policy, cache, y),
                    Contains("input element (0, 0)"));

  const nn::Conv2dGeometry geo(1, 3, 3, 1, 2);
  nn::Conv2dCache<float> cc;
  Matrix<float> cy(1, geo.output_size()), cgx(1, 9), cgw = Matrix<float>::Zero(1, 4);
  nn::conv2d_forward(Matrix<float>::Ones(1, 9), Matrix<float>::Ones(1, 4), Vector<float>(), geo,
                     policy, cc, cy);
  Matrix<float> cg = Matrix<float>::Ones(1, geo.output_size());
  cg(0, 3) = std::numeric_limits<float>::quiet_NaN();
  Vector<float> none;
  CHECK_THROWS_WITH(nn::conv2d_backward(cg, cc, kStreams, cgx, cgw, none),
                    Contains("nn::conv2d_backward") && Contains("grad_output"));
}

// ---- what a throw leaves behind ------------------------------------------------------------

TEST_CASE("A backward given a default-constructed cache is a logic_error, not a read of garbage",
          "[nn][errors][cache]") {
  Matrix<float> none;
  Vector<float> no_vector;
  nn::LinearCache<float> linear;
  CHECK_THROWS_AS(nn::linear_backward(none, linear, kStreams, none, none, no_vector),
                  std::logic_error);
  CHECK_THROWS_WITH(nn::linear_backward(none, linear, kStreams, none, none, no_vector),
                    Contains("nn::linear_backward") && Contains("no completed forward pass"));
  nn::Conv2dCache<float> conv;
  CHECK_THROWS_AS(nn::conv2d_backward(none, conv, kStreams, none, none, no_vector),
                  std::logic_error);
  CHECK_THROWS_WITH(nn::conv2d_backward(none, conv, kStreams, none, none, no_vector),
                    Contains("nn::conv2d_backward") && Contains("no completed forward pass"));
  nn::MaxPool2dCache<float> pool;
  CHECK_THROWS_AS(nn::max_pool2d_backward(none, pool, none), std::logic_error);
  nn::BatchNorm2dCache<float> bn;
  CHECK_THROWS_AS(nn::batch_norm2d_backward(none, no_vector, bn, none, no_vector, no_vector),
                  std::logic_error);
}

TEST_CASE("A forward that throws after its checks leaves a cache its backward refuses",
          "[nn][errors][cache]") {
  // ±3e38 are finite, so the argument checks pass, but their range overflows float: the forward
  // quantizer throws after the op has started filling the cache.
  constexpr float kHuge = 3e38f;
  const auto policy = GENERATE(nn::Mode::QAT, nn::Mode::FQT);
  const auto p = nn::QuantPolicy::with_mode(policy);
  SECTION("linear") {
    const Matrix<float> w = nn_test::random_matrix<float>(3, 5, 2);
    nn::LinearCache<float> cache;
    Matrix<float> y4(4, 3), y8(8, 3);
    nn::linear_forward(nn_test::random_matrix<float>(4, 5, 1), w, Vector<float>(), p, cache, y4);
    Matrix<float> huge = nn_test::random_matrix<float>(8, 5, 3);
    huge(0, 0) = kHuge;
    huge(7, 4) = -kHuge;
    CHECK_THROWS_AS(nn::linear_forward(huge, w, Vector<float>(), p, cache, y8), std::domain_error);
    // The cache now has the new batch size but no valid X̂: backward must refuse it.
    const Matrix<float> g = nn_test::random_matrix<float>(8, 3, 4);
    Matrix<float> gx(8, 5), gw = Matrix<float>::Zero(3, 5);
    Vector<float> gb = Vector<float>::Zero(3);
    CHECK_THROWS_AS(nn::linear_backward(g, cache, kStreams, gx, gw, gb), std::logic_error);
    CHECK_THROWS_WITH(
        nn::linear_backward(g, cache, kStreams, gx, gw, gb),
        Contains("nn::linear_backward") && Contains("nn::linear_forward") && Contains("threw"));
    CHECK(gw.isZero());
    // The next forward refills the cache: backward gives what a fresh cache gives.
    const Matrix<float> x8 = nn_test::random_matrix<float>(8, 5, 5);
    nn::linear_forward(x8, w, Vector<float>(), p, cache, y8);
    nn::linear_backward(g, cache, kStreams, gx, gw, gb);
    nn::LinearCache<float> fresh;
    Matrix<float> fy(8, 3), fgx(8, 5), fgw = Matrix<float>::Zero(3, 5);
    Vector<float> fgb = Vector<float>::Zero(3);
    nn::linear_forward(x8, w, Vector<float>(), p, fresh, fy);
    nn::linear_backward(g, fresh, kStreams, fgx, fgw, fgb);
    CHECK(y8 == fy);
    CHECK(gx == fgx);
    CHECK(gw == fgw);
  }
  SECTION("conv2d with a larger geometry than the cache's last pass") {
    const nn::Conv2dGeometry small(1, 3, 3, 1, 2), big(2, 8, 8, 3, 3, 1, 1);
    nn::Conv2dCache<float> cache;
    Matrix<float> small_y(1, small.output_size());
    nn::conv2d_forward(nn_test::random_matrix<float>(1, 9, 6),
                       nn_test::random_matrix<float>(1, 4, 7), Vector<float>(), small, p, cache,
                       small_y);
    const Matrix<float> w = nn_test::random_matrix<float>(3, big.patch_size(), 8);
    Matrix<float> huge = nn_test::random_matrix<float>(4, big.input_size(), 9);
    huge(1, 5) = kHuge;
    huge(2, 7) = -kHuge;
    Matrix<float> y(4, big.output_size());
    CHECK_THROWS_AS(nn::conv2d_forward(huge, w, Vector<float>(), big, p, cache, y),
                    std::domain_error);
    // Before the fix the cache said "big" while its im2col buffer was the small one, and this
    // backward read past it.
    const Matrix<float> g = nn_test::random_matrix<float>(4, big.output_size(), 10);
    Matrix<float> gx(4, big.input_size()), gw = Matrix<float>::Zero(3, big.patch_size());
    Vector<float> gb = Vector<float>::Zero(3);
    CHECK_THROWS_AS(nn::conv2d_backward(g, cache, kStreams, gx, gw, gb), std::logic_error);
    CHECK_THROWS_WITH(nn::conv2d_backward(g, cache, kStreams, gx, gw, gb),
                      Contains("nn::conv2d_backward") && Contains("no completed forward pass"));
    CHECK(gw.isZero());
    CHECK(gb.isZero());
    const Matrix<float> x = nn_test::random_matrix<float>(4, big.input_size(), 11);
    nn::conv2d_forward(x, w, Vector<float>(), big, p, cache, y);
    nn::conv2d_backward(g, cache, kStreams, gx, gw, gb);
    nn::Conv2dCache<float> fresh;
    Matrix<float> fy(4, big.output_size()), fgx(4, big.input_size()),
        fgw = Matrix<float>::Zero(3, big.patch_size());
    Vector<float> fgb = Vector<float>::Zero(3);
    nn::conv2d_forward(x, w, Vector<float>(), big, p, fresh, fy);
    nn::conv2d_backward(g, fresh, kStreams, fgx, fgw, fgb);
    CHECK(y == fy);
    CHECK(gx == fgx);
    CHECK(gw == fgw);
    CHECK(gb == fgb);
  }
}

TEST_CASE("A forward that fails an argument check leaves the cache of the previous pass usable",
          "[nn][errors][cache]") {
  const Matrix<float> x = nn_test::random_matrix<float>(4, 5, 20);
  const Matrix<float> w = nn_test::random_matrix<float>(3, 5, 21);
  const Matrix<float> g = nn_test::random_matrix<float>(4, 3, 22);
  const nn::QuantPolicy policy;  // FQT
  nn::LinearCache<float> cache;
  Matrix<float> y(4, 3), gx(4, 5), gw = Matrix<float>::Zero(3, 5);
  Vector<float> gb = Vector<float>::Zero(3);
  nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);
  const Matrix<float> gx1 = gx, gw1 = gw;
  Matrix<float> bad = nn_test::random_matrix<float>(6, 5, 23);
  bad(2, 2) = std::numeric_limits<float>::quiet_NaN();
  Matrix<float> y6(6, 3);
  CHECK_THROWS_AS(nn::linear_forward(bad, w, Vector<float>(), policy, cache, y6),
                  std::domain_error);
  gw.setZero();
  nn::linear_backward(g, cache, kStreams, gx, gw, gb);  // still the pass on x
  CHECK(gx == gx1);
  CHECK(gw == gw1);
}

TEST_CASE("batch_norm2d_forward refuses statistics that overflow and changes nothing",
          "[nn][errors][bn][cache]") {
  // Finite inputs whose sum overflows double: the mean is infinite and the output would be NaN.
  Matrix<double> x = nn_test::random_matrix(4, 2 * 3, 30);
  for (Index s = 0; s < 4; ++s) x.row(s).segment(3, 3).setConstant(s == 1 ? -1e308 : 1e308);
  const Vector<double> gamma = Vector<double>::Ones(2), beta = Vector<double>::Zero(2);
  Vector<double> mean = Vector<double>::Constant(2, 0.5), var = Vector<double>::Constant(2, 2.0);
  nn::BatchNorm2dCache<double> cache;
  Matrix<double> y(4, 6);
  CHECK_THROWS_AS(
      nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1, 1e-5, true, true, cache, y),
      std::domain_error);
  CHECK_THROWS_WITH(
      nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1, 1e-5, true, true, cache, y),
      Contains("nn::batch_norm2d_forward") && Contains("channel 1") && Contains("overflow"));
  CHECK(mean == Vector<double>::Constant(2, 0.5));  // running statistics untouched
  CHECK(var == Vector<double>::Constant(2, 2.0));
  Matrix<double> gx(4, 6);
  Vector<double> gg = Vector<double>::Zero(2), gbeta = Vector<double>::Zero(2);
  CHECK_THROWS_AS(
      nn::batch_norm2d_backward(Matrix<double>::Ones(4, 6), gamma, cache, gx, gg, gbeta),
      std::logic_error);
}

TEST_CASE("batch_norm2d_forward rejects non-finite parameters and bad running statistics",
          "[nn][errors][bn]") {
  const Matrix<float> x = nn_test::random_matrix<float>(4, 2 * 3, 31);
  Vector<float> gamma = Vector<float>::Ones(2), beta = Vector<float>::Zero(2);
  Vector<float> mean = Vector<float>::Zero(2), var = Vector<float>::Ones(2);
  nn::BatchNorm2dCache<float> cache;
  Matrix<float> y(4, 6);
  SECTION("a negative running variance, used to normalise, would give NaN") {
    var(1) = -1;
    CHECK_THROWS_WITH(
        nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1f, 1e-5f, false, false, cache, y),
        Contains("running_var element 1 is -1"));
  }
  SECTION("a NaN running mean, moved toward the batch mean, stays NaN") {
    mean(0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(
        nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1f, 1e-5f, true, true, cache, y),
        std::domain_error);
  }
  SECTION("a NaN gamma") {
    gamma(1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(
        nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1f, 1e-5f, true, false, cache, y),
        Contains("gamma element (1, 0)"));
  }
  SECTION("an infinite or NaN eps, a NaN momentum") {
    const float inf = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(
        nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1f, inf, true, false, cache, y),
        Contains("eps inf"));
    CHECK_THROWS_AS(nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, 0.1f, std::nanf(""),
                                             true, false, cache, y),
                    std::invalid_argument);
    CHECK_THROWS_AS(nn::batch_norm2d_forward(x, 2, gamma, beta, mean, var, std::nanf(""), 1e-5f,
                                             true, false, cache, y),
                    std::invalid_argument);
  }
  CHECK_FALSE(cache.complete);  // every check threw before the cache was touched
}

// ---- sizes that overflow Index -----------------------------------------------------------------

TEST_CASE("detail::checked_product and checked_sum name the operands when they overflow",
          "[nn][errors][overflow]") {
  constexpr Index kMax = std::numeric_limits<Index>::max();
  CHECK(nn::detail::checked_product("f", "a * b", {3, 4}) == 12);
  CHECK(nn::detail::checked_product("f", "a * b", {0, kMax, kMax}) == 0);
  CHECK(nn::detail::checked_product("f", "a", {kMax}) == kMax);
  CHECK_THROWS_WITH(nn::detail::checked_product("f", "a * b * c", {2, kMax / 2 + 1, 1}),
                    Contains("f: a * b * c = 2 * 4611686018427387904 * 1 overflows Index"));
  CHECK_THROWS_WITH(nn::detail::checked_product("f", "a * b", {-2, 3}),
                    Contains("a * b = -2 * 3 has a negative factor"));
  CHECK(nn::detail::checked_sum("g", "a + b", {kMax - 1, 1}) == kMax);
  CHECK_THROWS_WITH(nn::detail::checked_sum("g", "a + b", {kMax, 1}), Contains("overflows Index"));
}

TEST_CASE("conv2d_forward rejects a geometry whose sizes overflow Index instead of crashing",
          "[nn][errors][overflow]") {
  constexpr Index k32 = Index{1} << 32;
  nn::Conv2dCache<float> cache;
  SECTION("H = W = 2^32: C·H·W wraps to 0 and every shape check would pass") {
    const nn::Conv2dGeometry g(1, k32, k32, 1, 1);
    Matrix<float> x(1, 0), w = Matrix<float>::Ones(1, 1), y(1, 0);
    CHECK_THROWS_WITH(
        nn::conv2d_forward(x, w, Vector<float>(), g, exact_policy(), cache, y),
        Contains("nn::conv2d_forward: in_channels * in_height * in_width = 1 * 4294967296 * "
                 "4294967296 overflows Index"));
  }
  SECTION("each derived size of the geometry") {
    nn::Conv2dGeometry padded(1, 4, 4, 1, 3, 1, Index{1} << 62);
    CHECK_THROWS_WITH(padded.validate("v"),
                      Contains("in_height + padding_height + padding_height = 4 + "
                               "4611686018427387904 + 4611686018427387904 overflows Index"));
    nn::Conv2dGeometry patch(Index{1} << 40, 1, 1, 1, 1 << 12, 1, 1 << 11);
    CHECK_THROWS_WITH(patch.validate("v"),
                      Contains("in_channels * kernel_height * kernel_width = 1099511627776 * "
                               "4096 * 4096 overflows Index"));
    nn::Conv2dGeometry output(1, 1 << 20, 1 << 20, Index{1} << 30, 1);
    CHECK_THROWS_WITH(output.validate("v"),
                      Contains("out_channels * out_height * out_width = 1073741824 * 1048576 * "
                               "1048576 overflows Index"));
    nn::Conv2dGeometry columns(1 << 20, 1 << 12, 1 << 12, 1, 1 << 10, 1, 1 << 9);
    CHECK_THROWS_WITH(
        columns.validate("v"),
        Contains("in_channels * kernel_height * kernel_width * out_height * out_width = 1048576 "
                 "* 1024 * 1024 * 4097 * 4097 overflows Index"));
  }
  SECTION("the im2col buffer of the batch, N·C·kh·kw × Ho·Wo") {
    // Per sample everything fits (C·H·W = 2^20, C·kh·kw·Ho·Wo ≈ 2^38), but N = 2^26 samples
    // need 2^64 columns entries. The maps are never read: the check comes first.
    const nn::Conv2dGeometry g(1, 1 << 10, 1 << 10, 1, 1 << 9, 1, 1 << 8);
    const Index n = Index{1} << 26;
    float buffer[1] = {0};
    const Matrix<float> w = Matrix<float>::Zero(1, g.patch_size());
    Eigen::Map<Matrix<float>> x(buffer, n, g.input_size()), y(buffer, n, g.output_size());
    CHECK_THROWS_WITH(nn::conv2d_forward(x, w, Vector<float>(), g, exact_policy(), cache, y),
                      Contains("batch * in_channels * kernel_height * kernel_width * out_height * "
                               "out_width = 67108864 * 1 * 512 * 512 * 1025 * 1025 overflows"));
  }
  CHECK_FALSE(cache.complete);
}

TEST_CASE("max_pool2d rejects sizes that overflow Index or its int32 argmax, and a negative stride",
          "[nn][errors][overflow]") {
  constexpr Index k32 = Index{1} << 32;
  nn::MaxPool2dCache<float> cache;
  const nn::Pool2dGeometry wraps(1, k32, k32, 2);
  Matrix<float> x(1, 0), y(1, 0);
  CHECK_THROWS_WITH(nn::max_pool2d_forward(x, wraps, cache, y),
                    Contains("nn::max_pool2d_forward: channels * in_height * in_width = 1 * "
                             "4294967296 * 4294967296 overflows Index"));
  // 2^32 columns fit an Index but not the int32 argmax.
  const nn::Pool2dGeometry wide(1, 1 << 16, 1 << 16, 2);
  float buffer[1] = {0};
  Eigen::Map<Matrix<float>> wide_x(buffer, 1, wide.input_size()),
      wide_y(buffer, 1, wide.output_size());
  CHECK_THROWS_WITH(nn::max_pool2d_forward(wide_x, wide, cache, wide_y),
                    Contains("4294967296 exceeds the int32 argmax index limit 2147483647"));
  const nn::Pool2dGeometry backwards(1, 4, 4, 2, -1);
  CHECK_THROWS_WITH(backwards.validate("v"), Contains("stride must be positive, got -1 x -1"));
  CHECK_FALSE(cache.complete);
}

// ---- enum fields out of range --------------------------------------------------------------

TEST_CASE("An out-of-range gradient quantizer is rejected before anything runs",
          "[nn][errors][policy]") {
  nn::QuantPolicy bad;
  bad.grad_input.kind = static_cast<fqt::QuantizerKind>(7);
  const Matrix<float> x = nn_test::random_matrix<float>(4, 5, 40);
  const Matrix<float> w = nn_test::random_matrix<float>(3, 5, 41);
  nn::LinearCache<float> cache;
  Matrix<float> y(4, 3);
  CHECK_THROWS_WITH(
      nn::linear_forward(x, w, Vector<float>(), bad, cache, y),
      Contains("nn::linear_forward") && Contains("kind must be one of") && Contains("got 7"));
  nn::Conv2dCache<float> cc;
  const nn::Conv2dGeometry geo(1, 3, 3, 1, 2);
  Matrix<float> cy(1, geo.output_size());
  CHECK_THROWS_WITH(nn::conv2d_forward(Matrix<float>::Ones(1, 9), Matrix<float>::Ones(1, 4),
                                       Vector<float>(), geo, bad, cc, cy),
                    Contains("nn::conv2d_forward") && Contains("got 7"));
  nn::QuantPolicy bad_rounding;
  bad_rounding.grad_weight.rounding = static_cast<fqt::RoundingMode>(2);
  CHECK_THROWS_WITH(nn::linear_forward(x, w, Vector<float>(), bad_rounding, cache, y),
                    Contains("rounding must be Stochastic or Nearest, got 2"));
  CHECK_FALSE(cache.complete);  // rejected before the cache was touched
}

TEST_CASE("The per-channel grad-weight quantizer: one grid per conv output channel",
          "[nn][conv][per_channel]") {
  // FQT's weight gradient is the QAT weight gradient of Q_b2(G) (the backward is linear in G), and
  // Q_b2 is the catalogue's per-channel quantizer with K channels drawn from the grad-weight
  // stream.
  const nn::Conv2dGeometry geo(2, 6, 5, 3, 3, 1, 1);
  const Index n = 4;
  const Matrix<double> x = nn_test::random_matrix(n, geo.input_size(), 301);
  const Matrix<double> w = nn_test::random_matrix(geo.out_channels, geo.patch_size(), 302);
  const Matrix<double> g = nn_test::random_matrix(n, geo.output_size(), 303);
  nn::QuantPolicy fqt;
  fqt.grad_weight.kind = fqt::parse_quantizer_kind("channel");
  fqt.grad_weight.bits = 3;
  nn::QuantPolicy qat = fqt;
  qat.mode = nn::Mode::QAT;
  auto weight_gradient = [&](const nn::QuantPolicy& policy, const Matrix<double>& grad) {
    nn::Conv2dCache<double> cache;
    Matrix<double> y(n, geo.output_size()), dw = Matrix<double>::Zero(w.rows(), w.cols());
    nn::conv2d_forward(x, w, Vector<double>(), geo, policy, cache, y);
    Matrix<double> none;
    Vector<double> no_bias;
    nn::conv2d_backward(grad, cache, kStreams, none, dw, no_bias);
    return dw;
  };
  const fqt::PerChannelQuantizer<double> per_channel(3, fqt.grad_weight.grid, geo.out_channels);
  const Matrix<double> expected = weight_gradient(qat, per_channel(g, kStreams.grad_weight));
  const Matrix<double> got = weight_gradient(fqt, g);
  CHECK(nn_test::relative_error(got, expected) < 1e-12);
  // ...and not the per-column quantizer's (one grid per (k, oy, ox)).
  const fqt::PerColumnQuantizer<double> per_column(3, fqt.grad_weight.grid);
  CHECK(nn_test::relative_error(got, weight_gradient(qat, per_column(g, kStreams.grad_weight))) >
        1e-3);
}
