// The grids of quant/grid.hpp: the paper's released configuration (Grid::Paper), pinned to values
// computed from the reference's formulas, and the automatic choice (Grid::Auto) between the Free
// and the zero-aligned grid.
#include <catch2/catch.hpp>
#include <cmath>
#include <fqt/quant.hpp>
#include <limits>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

// The paper's released PTQ (`ScalarPreconditioner`, digest §3.1) written out from its formulas,
// without the ±1e-8 padding: mn = min(min x, 0), mx = max(max x, 0), scale = B/(mx − mn),
// iqzero = ⌊−mn·scale⌋, scale ← iqzero/|mn|, and the variance Σ f(1 − f)/scale² of y = (x −
// mn)·scale. Only for inputs with iqzero ≥ 1 (elsewhere the reference divides by zero).
double reference_ptq_variance(const Matrix<double>& x, int bits, double* step = nullptr,
                              double* zero_code = nullptr) {
  const double b = std::ldexp(1.0, bits) - 1;
  const double mn = std::min(x.minCoeff(), 0.0), mx = std::max(x.maxCoeff(), 0.0);
  double scale = b / (mx - mn);
  const double iqzero = std::floor(-mn * scale);
  REQUIRE(iqzero >= 1);
  scale = iqzero / std::abs(mn);
  double total = 0;
  for (Index k = 0; k < x.size(); ++k) {
    const double y = (x.data()[k] - mn) * scale;
    const double f = y - std::floor(y);
    total += f * (1 - f) / (scale * scale);
  }
  if (step) *step = 1 / scale;
  if (zero_code) *zero_code = iqzero;
  return total;
}

Matrix<double> rows_of(std::initializer_list<std::initializer_list<double>> rows) {
  Matrix<double> x(static_cast<Index>(rows.size()), static_cast<Index>(rows.begin()->size()));
  Index i = 0;
  for (const auto& r : rows) {
    Index j = 0;
    for (const double v : r) x(i, j++) = v;
    ++i;
  }
  return x;
}

// The 16-bit noise resolves f to 2^-16: the exact variance and Σ f(1 − f) agree to about that.
constexpr double kNoiseResolution = 1e-4;

}  // namespace

TEST_CASE("Grid::Paper is the released PTQ: range widened to 0, zero code floor(k*)",
          "[quant][grid]") {
  // k* = 15·0.5/2.6 = 2.88: the reference's zero code is 2 and Δ = 0.25; the zero-aligned grid
  // takes the better of 2 and 3 (Δ = max(0.5/3, 2.1/12) = 0.175).
  const Matrix<double> x = rows_of({{-0.5, 0.0, 0.25, 2.1}, {1.2, -0.1, 0.0, 0.7}});
  const fqt::PerTensorQuantizer<double> paper(4, Grid::Paper);
  const auto q = paper.quantize(x, Philox(1));
  REQUIRE(q.scale(0) == Approx(0.25));
  REQUIRE(q.zero_point(0) == 2);
  double step = 0, zero = 0;
  const double reference = reference_ptq_variance(x, 4, &step, &zero);
  REQUIRE(step == Approx(0.25));
  REQUIRE(zero == 2);
  REQUIRE_THAT(paper.expected_variance(x), Catch::Matchers::WithinRel(reference, kNoiseResolution));
  // By hand: y = 4x + 2 = (0, 2, 3, 10.4 | 6.8, 1.6, 2, 4.8), Σ f(1 − f) = 0.24 + 0.16 + 0.24 +
  // 0.16 = 0.8, times Δ² = 1/16.
  REQUIRE_THAT(paper.expected_variance(x), Catch::Matchers::WithinRel(0.05, kNoiseResolution));
  const auto aligned = fqt::PerTensorQuantizer<double>(4, Grid::ZeroAligned).quantize(x, Philox(1));
  REQUIRE(aligned.scale(0) == Approx(0.175));
  REQUIRE(aligned.zero_point(0) == 3);
}

TEST_CASE("Grid::Paper matches the reference's formulas on random sparse gradients",
          "[quant][grid]") {
  for (const int bits : {2, 4, 8}) {
    for (const std::uint64_t seed : {1u, 2u, 3u}) {
      Matrix<double> x = fqt_test::sparse<double>(12, 40, 0.4, seed);
      // A negative part of at least one bin at every width, so that the reference is defined.
      x(0, 0) = -x.cwiseAbs().maxCoeff();
      INFO("bits " << bits << " seed " << seed);
      const double reference = reference_ptq_variance(x, bits);
      REQUIRE_THAT(fqt::PerTensorQuantizer<double>(bits, Grid::Paper).expected_variance(x),
                   Catch::Matchers::WithinRel(reference, kNoiseResolution));
    }
  }
}

TEST_CASE("Grid::Paper where the reference divides by zero, and on one-signed ranges",
          "[quant][grid]") {
  SECTION("a negative part below one bin gets the zero code 1, and the range stays covered") {
    // k* = 3·0.5/2.5 = 0.6: the reference's iqzero is 0 (NaN). fqt: code 1, Δ = 2/(3 − 1) = 1.
    const Matrix<double> x = rows_of({{-0.5, 0.0, 0.25, 2.0, 1.2, -0.1}});
    const fqt::PerTensorQuantizer<double> paper(2, Grid::Paper);
    const auto q = paper.quantize(x, Philox(3));
    REQUIRE(q.scale(0) == 1.0);
    REQUIRE(q.zero_point(0) == 1);
    // y = x + 1: Σ f(1 − f) = 0.25 + 0.1875 + 0.16 + 0.09.
    REQUIRE_THAT(paper.expected_variance(x), Catch::Matchers::WithinRel(0.6875, kNoiseResolution));
    const Matrix<double> v = q.dequantize();
    REQUIRE(v(0, 1) == 0.0);
  }
  SECTION("a range >= 0 is widened to [0, hi]: code 0 at 0, unlike the Free grid") {
    const Matrix<double> x = rows_of({{0.5, 2.0, 1.0, 1.5}});
    const auto q = fqt::PerTensorQuantizer<double>(2, Grid::Paper).quantize(x, Philox(3));
    REQUIRE(q.scale(0) == Approx(2.0 / 3));
    REQUIRE(q.zero_point(0) == 0);
    REQUIRE(fqt::PerTensorQuantizer<double>(2, Grid::Free).quantize(x, Philox(3)).scale(0) ==
            Approx(0.5));
  }
  SECTION("an all-negative range puts 0 on the top code") {
    const Matrix<double> x = rows_of({{-0.5, -2.0, -1.0}});
    const auto q = fqt::PerTensorQuantizer<double>(3, Grid::Paper).quantize(x, Philox(3));
    REQUIRE(q.zero_point(0) == 7);
    REQUIRE(q.scale(0) == Approx(2.0 / 7));
  }
  SECTION("1 bit with both signs has no grid through 0: the Free grid") {
    const Matrix<double> x = rows_of({{-0.5, 0.0, 1.5}});
    const auto q = fqt::PerTensorQuantizer<double>(1, Grid::Paper).quantize(x, Philox(3));
    REQUIRE(q.scale(0) == 2.0);
    REQUIRE(q.zero_point(0) == 0.25);
  }
}

TEST_CASE("Grid::Paper is the Free grid for every quantizer but PTQ, bit for bit",
          "[quant][grid]") {
  const Matrix<float> x = fqt_test::sparse<float>(10, 48, 0.3, 9);
  const Philox rng(5, 6);
  auto same = [&](const auto& paper, const auto& free) {
    const auto a = paper.quantize(x, rng), b = free.quantize(x, rng);
    REQUIRE(a.codes == b.codes);
    REQUIRE(a.scale == b.scale);
    REQUIRE(a.zero_point == b.zero_point);
    REQUIRE(paper.expected_variance(x) == free.expected_variance(x));
  };
  same(fqt::PerSampleQuantizer<float>(4, Grid::Paper),
       fqt::PerSampleQuantizer<float>(4, Grid::Free));
  same(fqt::PerColumnQuantizer<float>(4, Grid::Paper),
       fqt::PerColumnQuantizer<float>(4, Grid::Free));
  same(fqt::PerChannelQuantizer<float>(4, Grid::Paper, 4),
       fqt::PerChannelQuantizer<float>(4, Grid::Free, 4));
  same(fqt::BlockHouseholderQuantizer<float>(4, Grid::Paper),
       fqt::BlockHouseholderQuantizer<float>(4, Grid::Free));
  same(fqt::HadamardQuantizer<float>(4, Grid::Paper), fqt::HadamardQuantizer<float>(4, Grid::Free));
}

TEST_CASE("Grid::Auto takes, group by group, the lower-variance grid of Free and ZeroAligned",
          "[quant][grid]") {
  const int bits = GENERATE(2, 4, 8);
  const double zeros = GENERATE(0.0, 0.05, 0.5);
  Matrix<double> x = fqt_test::sparse<double>(16, 64, zeros, 11 + bits);
  // Rows that straddle 0 barely (dense rows where the zero-aligned step is much coarser) and a
  // row that does not straddle it at all.
  x.row(1) = x.row(1).cwiseAbs();
  x(1, 3) = -1e-3 * x.row(1).maxCoeff();
  x.row(2) = -x.row(2).cwiseAbs();
  INFO("bits " << bits << " zeros " << zeros);
  // Per row: the Auto variance of every row is that of the better grid for that row.
  const fqt::PerSampleQuantizer<double> automatic(bits, Grid::Auto), free(bits, Grid::Free),
      aligned(bits, Grid::ZeroAligned);
  const Matrix<double> va = automatic.element_variance(x), vf = free.element_variance(x),
                       vz = aligned.element_variance(x);
  const auto qa = automatic.quantize(x, Philox(2)), qf = free.quantize(x, Philox(2)),
             qz = aligned.quantize(x, Philox(2));
  int free_rows = 0, zero_rows = 0;
  for (Index i = 0; i < x.rows(); ++i) {
    const double a = va.row(i).sum(), f = vf.row(i).sum(), z = vz.row(i).sum();
    INFO("row " << i << ": auto " << a << " free " << f << " zero " << z);
    REQUIRE(a <= std::min(f, z) * (1 + kNoiseResolution) + 1e-300);
    const bool took_free = qa.scale(i) == qf.scale(i) && qa.zero_point(i) == qf.zero_point(i);
    const bool took_zero = qa.scale(i) == qz.scale(i) && qa.zero_point(i) == qz.zero_point(i);
    REQUIRE((took_free || took_zero));
    REQUIRE(qa.codes.row(i) == (took_zero ? qz : qf).codes.row(i));
    if (f != z) (took_zero ? zero_rows : free_rows) += 1;
  }
  if (zeros == 0.5) REQUIRE(zero_rows > 0);
  if (zeros == 0.0) REQUIRE(free_rows > 0);
  // Per tensor, column and channel: never above the better of the two grids.
  auto never_worse = [&](const auto& a, const auto& f, const auto& z) {
    const double va_ = a.expected_variance(x), vf_ = f.expected_variance(x),
                 vz_ = z.expected_variance(x);
    INFO(a.name() << ": auto " << va_ << " free " << vf_ << " zero " << vz_);
    REQUIRE(va_ <= std::min(vf_, vz_) * (1 + kNoiseResolution));
  };
  never_worse(fqt::PerTensorQuantizer<double>(bits, Grid::Auto),
              fqt::PerTensorQuantizer<double>(bits, Grid::Free),
              fqt::PerTensorQuantizer<double>(bits, Grid::ZeroAligned));
  never_worse(fqt::PerChannelQuantizer<double>(bits, Grid::Auto, 8),
              fqt::PerChannelQuantizer<double>(bits, Grid::Free, 8),
              fqt::PerChannelQuantizer<double>(bits, Grid::ZeroAligned, 8));
  // Per column the choice is per column: compare column sums.
  const fqt::PerColumnQuantizer<double> ca(bits, Grid::Auto), cf(bits, Grid::Free),
      cz(bits, Grid::ZeroAligned);
  const Eigen::RowVectorXd sa = ca.element_variance(x).colwise().sum(),
                           sf = cf.element_variance(x).colwise().sum(),
                           sz = cz.element_variance(x).colwise().sum();
  for (Index j = 0; j < x.cols(); ++j) {
    INFO("column " << j);
    REQUIRE(sa(j) <= std::min(sf(j), sz(j)) * (1 + kNoiseResolution) + 1e-300);
  }
  // The transformed rows of BHQ and Hadamard choose the same way.
  never_worse(fqt::BlockHouseholderQuantizer<double>(bits, Grid::Auto),
              fqt::BlockHouseholderQuantizer<double>(bits, Grid::Free),
              fqt::BlockHouseholderQuantizer<double>(bits, Grid::ZeroAligned));
  never_worse(fqt::HadamardQuantizer<double>(bits, Grid::Auto),
              fqt::HadamardQuantizer<double>(bits, Grid::Free),
              fqt::HadamardQuantizer<double>(bits, Grid::ZeroAligned));
}

TEST_CASE("Grid::Auto keeps exact zeros exact where it takes the zero-aligned grid",
          "[quant][grid]") {
  const Matrix<float> x = fqt_test::sparse<float>(16, 64, 0.6, 8);
  const fqt::PerSampleQuantizer<float> q(4, Grid::Auto);
  const auto r = q.quantize(x, Philox(4));
  const Matrix<float> v = r.dequantize();
  for (Index i = 0; i < x.rows(); ++i) {
    if (r.zero_point(i) != std::floor(r.zero_point(i))) continue;  // a Free row
    for (Index j = 0; j < x.cols(); ++j)
      if (x(i, j) == 0) REQUIRE(v(i, j) == 0);
  }
  REQUIRE(q.expected_variance(x) <=
          fqt::PerSampleQuantizer<float>(4, Grid::ZeroAligned).expected_variance(x) *
              (1 + kNoiseResolution));
}

TEST_CASE("grids: defaults, names and bad values", "[quant][grid][errors]") {
  REQUIRE(fqt::PerSampleQuantizer<float>(4).grid() == Grid::Auto);
  REQUIRE(fqt::BlockHouseholderQuantizer<float>(4).grid() == Grid::Auto);
  REQUIRE(fqt::HadamardQuantizer<float>(4).grid() == Grid::Auto);
  REQUIRE(fqt::QuantizerSpec{}.grid == Grid::Auto);
  for (const Grid g : {Grid::Free, Grid::ZeroAligned, Grid::Paper, Grid::Auto})
    REQUIRE(fqt::parse_grid(fqt::to_string(g)) == g);
  REQUIRE_THROWS_WITH(fqt::parse_grid("middle"),
                      Catch::Matchers::Contains("free, zero, paper or auto"));
  REQUIRE_THROWS_AS(fqt::PerSampleQuantizer<float>(4, static_cast<Grid>(9)), std::invalid_argument);
  fqt::QuantizerSpec spec;
  spec.grid = static_cast<Grid>(-1);
  REQUIRE_THROWS_WITH(fqt::AnyQuantizer<float>(spec), Catch::Matchers::Contains("grid must be"));
}
