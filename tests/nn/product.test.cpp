// The quantized-product seam: what reaches a backend, and that a backend multiplying codes gives
// the simulated results bit for bit when it multiplies the dequantized codes.
#include "fqt/nn/product.hpp"

#include <catch2/catch.hpp>
#include <limits>
#include <memory>
#include <string>

#include "fqt/nn/functional.hpp"
#include "support/nn_gradcheck.hpp"
#include "support/quant_support.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;
using fqt::Vector;
namespace nn = fqt::nn;
using Catch::Matchers::Contains;

namespace {

// A backend that takes codes, counts what arrives as codes, dequantizes and runs the simulated
// products. Since dequantize(quantize(x)) == fake_quantize(x) bit for bit, its results must be
// the simulated backend's exactly.
class DequantizingBackend final : public nn::BackendFor<DequantizingBackend> {
 public:
  const char* name() const override { return "dequantizing"; }
  bool multiplies_codes() const override { return true; }
  mutable int coded = 0, plain = 0;

  template <class S>
  void linear_forward_impl(const nn::Operand<S>& x, const nn::Operand<S>& w, fqt::MatrixRef<S> y,
                           std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> xs, ws;
    nn::simulated_backend().linear_forward(values(x, xs), values(w, ws), y, state);
  }
  template <class S>
  void linear_grad_input_impl(const nn::Operand<S>& g, const nn::Operand<S>& w,
                              fqt::MatrixRef<S> dx,
                              std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> gs, ws;
    nn::simulated_backend().linear_grad_input(values(g, gs), values(w, ws), dx, state);
  }
  template <class S>
  void linear_grad_weight_impl(const nn::Operand<S>& g, const nn::Operand<S>& x,
                               fqt::MatrixRef<S> dw,
                               std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> gs, xs;
    nn::simulated_backend().linear_grad_weight(values(g, gs), values(x, xs), dw, state);
  }
  template <class S>
  void conv_forward_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& x,
                         const nn::Operand<S>& w, fqt::MatrixRef<S> y, nn::ConvColumns columns,
                         std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> xs, ws;
    nn::simulated_backend().conv_forward(geo, values(x, xs), values(w, ws), y, columns, state);
  }
  template <class S>
  void conv_grad_input_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& g,
                            const nn::Operand<S>& w, fqt::MatrixRef<S> dx,
                            std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> gs, ws;
    nn::simulated_backend().conv_grad_input(geo, values(g, gs), values(w, ws), dx, state);
  }
  template <class S>
  void conv_grad_weight_impl(const nn::Conv2dGeometry& geo, const nn::Operand<S>& g,
                             const nn::Operand<S>& x, fqt::MatrixRef<S> dw,
                             std::unique_ptr<nn::BackendState>& state) const {
    Matrix<S> gs, xs;
    // x is Operand::none() unless the forward recomputes its columns.
    const nn::Operand<S> input = x.rows() == 0 ? x : values(x, xs);
    nn::simulated_backend().conv_grad_weight(geo, values(g, gs), input, dw, state);
  }

 private:
  template <class S>
  nn::Operand<S> values(const nn::Operand<S>& op, Matrix<S>& scratch) const {
    if (!op.coded()) {
      ++plain;
      return op;
    }
    ++coded;
    scratch = op.quantized().dequantize();
    return nn::Operand<S>::values(scratch);
  }
};

struct Results {
  Matrix<double> y, dx, dw;
  Vector<double> db;
};

Results run_linear(const nn::QuantPolicy& policy) {
  const Matrix<double> x = nn_test::random_matrix(12, 9, 501);
  const Matrix<double> w = nn_test::random_matrix(7, 9, 502);
  const Vector<double> b = nn_test::random_matrix(7, 1, 503);
  const Matrix<double> g = nn_test::random_matrix(12, 7, 504);
  nn::LinearCache<double> cache;
  Results r{Matrix<double>(12, 7), Matrix<double>(12, 9), Matrix<double>::Zero(7, 9),
            Vector<double>::Zero(7)};
  nn::linear_forward(x, w, b, policy, cache, r.y);
  nn::linear_backward(g, cache, nn::gradient_streams(Philox(9), 1, 2), r.dx, r.dw, r.db);
  return r;
}

Results run_conv(const nn::QuantPolicy& policy) {
  const nn::Conv2dGeometry geo(3, 7, 6, 4, 3, 2, 1);
  const Matrix<double> x = nn_test::random_matrix(5, geo.input_size(), 511);
  const Matrix<double> w = nn_test::random_matrix(4, geo.patch_size(), 512);
  const Vector<double> b = nn_test::random_matrix(4, 1, 513);
  const Matrix<double> g = nn_test::random_matrix(5, geo.output_size(), 514);
  nn::Conv2dCache<double> cache;
  Results r{Matrix<double>(5, geo.output_size()), Matrix<double>(5, geo.input_size()),
            Matrix<double>::Zero(4, geo.patch_size()), Vector<double>::Zero(4)};
  nn::conv2d_forward(x, w, b, geo, policy, cache, r.y);
  nn::conv2d_backward(g, cache, nn::gradient_streams(Philox(9), 1, 2), r.dx, r.dw, r.db);
  return r;
}

void check_identical(const Results& a, const Results& b) {
  CHECK(a.y == b.y);
  CHECK(a.dx == b.dx);
  CHECK(a.dw == b.dw);
  CHECK(a.db == b.db);
}

}  // namespace

TEST_CASE("A backend that multiplies codes gets the codes of every quantized operand",
          "[nn][backend]") {
  const auto backend = std::make_shared<DequantizingBackend>();
  for (const auto& grad_input : fqt::kQuantizerKinds) {
    if (!fqt::can_feed(grad_input.kind, fqt::Contraction::Columns)) continue;
    for (const auto& grad_weight : fqt::kQuantizerKinds) {
      if (!fqt::can_feed(grad_weight.kind, fqt::Contraction::RowsAndChannels)) continue;
      for (int bits : {2, 5, 8}) {
        CAPTURE(grad_input.name, grad_weight.name, bits);
        nn::QuantPolicy simulated;
        simulated.grad_input.kind = grad_input.kind;
        simulated.grad_weight.kind = grad_weight.kind;
        simulated.grad_input.bits = simulated.grad_weight.bits = bits;
        simulated.activation_bits = simulated.weight_bits = bits;
        nn::QuantPolicy coded = simulated;
        coded.backend = backend;
        backend->coded = backend->plain = 0;
        check_identical(run_linear(coded), run_linear(simulated));
        check_identical(run_conv(coded), run_conv(simulated));
        // Forward: X̂ and Ŵ; grad-input: Q_b1(G) and Ŵ; grad-weight: Q_b2(G) (and X̂ for linear).
        CHECK(backend->coded == 6 + 5);
        CHECK(backend->plain == 0);
      }
    }
  }
}

TEST_CASE("Unquantized operands reach a backend as values: Exact everywhere, G in QAT",
          "[nn][backend]") {
  const auto backend = std::make_shared<DequantizingBackend>();
  for (nn::Mode mode : {nn::Mode::Exact, nn::Mode::QAT}) {
    CAPTURE(nn::to_string(mode));
    nn::QuantPolicy simulated = nn::QuantPolicy::with_mode(mode);
    nn::QuantPolicy coded = simulated;
    coded.backend = backend;
    backend->coded = backend->plain = 0;
    check_identical(run_linear(coded), run_linear(simulated));
    check_identical(run_conv(coded), run_conv(simulated));
    if (mode == nn::Mode::Exact) {
      CHECK(backend->coded == 0);
      CHECK(backend->plain == 11);
    } else {
      CHECK(backend->coded == 7);  // X̂, Ŵ twice each, Ŵ in grad-input, X̂ in linear grad-weight
      CHECK(backend->plain == 4);  // G in the two grad-input and two grad-weight products
    }
  }
}

TEST_CASE("A backend that multiplies codes refuses scales that vary along a contraction",
          "[nn][backend][errors]") {
  nn::QuantPolicy policy;
  policy.backend = std::make_shared<DequantizingBackend>();
  policy.grad_weight.kind = fqt::QuantizerKind::PerColumn;
  // Linear: per-column scales are constant over the samples, which its grad-weight contracts.
  CHECK_NOTHROW(run_linear(policy));
  // Conv: its grad-weight contracts over (n, oy, ox) too.
  CHECK_THROWS_AS(run_conv(policy), std::invalid_argument);
  CHECK_THROWS_WITH(run_conv(policy), Contains("nn::conv2d_forward") &&
                                          Contains("dequantizing backend multiplies codes") &&
                                          Contains("'column'") && Contains("ptq, channel"));
  policy.backend = nullptr;  // the simulated backend runs it
  CHECK_NOTHROW(run_conv(policy));
}

TEST_CASE("NaN in grad_output is found by the quantizer's range scan and named by the op",
          "[nn][backend][errors]") {
  nn::LinearCache<float> cache;
  const Matrix<float> x = nn_test::random_matrix<float>(4, 3, 520);
  const Matrix<float> w = nn_test::random_matrix<float>(2, 3, 521);
  Matrix<float> y(4, 2), dx(4, 3), dw = Matrix<float>::Zero(2, 3);
  Vector<float> db = Vector<float>::Zero(2);
  Matrix<float> g = Matrix<float>::Ones(4, 2);
  g(2, 1) = std::numeric_limits<float>::quiet_NaN();
  for (const char* name : {"ptq", "psq", "bhq"}) {
    CAPTURE(name);
    nn::QuantPolicy policy;
    policy.grad_input.kind = fqt::parse_quantizer_kind(name);
    nn::linear_forward(x, w, Vector<float>(), policy, cache, y);
    CHECK_THROWS_AS(
        nn::linear_backward(g, cache, nn::gradient_streams(Philox(1), 0, 0), dx, dw, db),
        std::domain_error);
    CHECK_THROWS_WITH(
        nn::linear_backward(g, cache, nn::gradient_streams(Philox(1), 0, 0), dx, dw, db),
        Contains("nn::linear_backward: grad_output:") && Contains("nan"));
    // Nothing was written.
    CHECK(dw == Matrix<float>::Zero(2, 3));
    CHECK(db == Vector<float>::Zero(2));
  }
}

TEST_CASE("A store decides an adaptive quantizer's candidate every `every` calls",
          "[nn][product][adaptive]") {
  // One row: BHQ and Hadamard fall back to PSQ and the tie goes to PSQ (candidate 0);
  // heavy-tailed rows: a mixing candidate wins.
  const Matrix<float> one_row = fqt_test::heavy_tailed<float>(1, 64, 3);
  const Matrix<float> heavy = fqt_test::heavy_tailed<float>(32, 64, 3);
  const fqt::AdaptiveQuantizer<float> adaptive(4);
  const Index heavy_choice = adaptive.choose(heavy, Philox(1, 2));
  REQUIRE(adaptive.choose(one_row, Philox(1, 1)) == 0);
  REQUIRE(heavy_choice != 0);
  fqt::QuantizerSpec spec{fqt::QuantizerKind::Adaptive, 4};
  spec.every = 2;
  nn::OperandStore<float> store;
  REQUIRE(store.adaptive_choice() == -1);
  store.quantize(spec, one_row, Philox(1, 1), true);
  REQUIRE(store.adaptive_choice() == 0);
  // The second call reuses the decision: PSQ codes of the heavy rows.
  store.quantize(spec, heavy, Philox(1, 2), true);
  REQUIRE(store.adaptive_choice() == 0);
  REQUIRE(store.codes().codes ==
          fqt::PerSampleQuantizer<float>(4).quantize(heavy, Philox(1, 2)).codes);
  REQUIRE_FALSE(store.codes().transform);
  // The third decides again.
  store.quantize(spec, heavy, Philox(1, 2), true);
  REQUIRE(store.adaptive_choice() == heavy_choice);
  REQUIRE(store.codes().codes == adaptive.quantize(heavy, Philox(1, 2)).codes);
  // A new spec decides at once.
  store.quantize(spec, one_row, Philox(1, 1), false);
  REQUIRE(store.adaptive_choice() == heavy_choice);
  spec.bits = 5;
  store.quantize(spec, one_row, Philox(1, 1), false);
  REQUIRE(store.adaptive_choice() == 0);
  // A throw leaves the decision as it was.
  Matrix<float> bad = heavy;
  bad(3, 3) = std::numeric_limits<float>::infinity();
  spec.every = 1;
  REQUIRE_THROWS_AS(store.quantize(spec, bad, Philox(1, 2), true), std::domain_error);
  REQUIRE(store.adaptive_choice() == 0);
}
