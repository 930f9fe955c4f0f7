// BHQ (quant/block_householder.hpp) and its transform (quant/transform.hpp).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <fqt/quant.hpp>
#include <numeric>

#include "support/quant_support.hpp"

using fqt::Grid;
using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

// A test-only dense construction of the paper's transform, written from the digest's §3.3
// (get_transform in the reference's quantizers.cpp): sort, greedy heads, apportioning with
// roundf, the −1/3 scales (with the reference's normalisation), and T = Pᵀ·H·P·diag(s) as an
// explicit N×N matrix. Also returns, per row, the scale of its group's head, because fqt keeps
// the head at s = 1 (a per-group factor that does not change the quantization error).
struct DenseReference {
  Matrix<double> t;
  Eigen::VectorXd head_scale;
};

Matrix<double> dense_householder(Index m) {
  Eigen::VectorXd v = Eigen::VectorXd::Constant(m, 1.0 / std::sqrt(double(m)));
  v(0) -= 1;
  if (m == 1) return Matrix<double>::Identity(1, 1);
  v.normalize();
  return Matrix<double>::Identity(m, m) - 2 * v * v.transpose();
}

DenseReference dense_reference(const Eigen::VectorXd& range) {
  const Index n = range.size();
  std::vector<Index> idx(n);
  std::iota(idx.begin(), idx.end(), Index{0});
  std::stable_sort(idx.begin(), idx.end(), [&](Index a, Index b) { return range(a) > range(b); });
  double total = range.sum();
  Index z = 0;
  while (true) {
    ++z;
    total -= range(idx[n - z]);
    if (double(z) * range(idx[n - z - 1]) / total > 1) break;
  }
  const Index k = n - z;
  DenseReference ref{Matrix<double>::Zero(n, n), Eigen::VectorXd::Ones(n)};
  Eigen::VectorXd s = Eigen::VectorXd::Ones(n);
  double acc = 0;
  Index prev = 0;
  for (Index i = 0; i < k; ++i) {
    acc += double(z) * range(idx[i]) / total;
    const Index c = static_cast<Index>(std::round(acc));
    const Index m = c - prev + 1;
    std::vector<Index> rows{idx[i]};
    for (Index j = prev; j < c; ++j) rows.push_back(idx[k + j]);
    const Matrix<double> h = dense_householder(m);
    if (m >= 2) {
      const double q = h.cwiseAbs().maxCoeff();
      const double w1 = range(idx[i]) / std::sqrt(double(m)), w2 = range(idx[k + prev]) * q;
      double s1 = std::pow(w1, -1.0 / 3), s2 = std::pow(w2 / double(m - 1), -1.0 / 3);
      const double norm = std::sqrt(1 / (s1 * s1) + 1 / (s2 * s2));
      s1 *= norm, s2 *= norm;
      s(rows[0]) = s1;
      for (Index j = 1; j < m; ++j) s(rows[j]) = s2;
      for (Index j = 0; j < m; ++j) ref.head_scale(rows[j]) = s1;
    }
    for (Index a = 0; a < m; ++a)
      for (Index b = 0; b < m; ++b) ref.t(rows[a], rows[b]) = h(a, b);
    prev = c;
  }
  ref.t = ref.t * s.asDiagonal();
  return ref;
}

Eigen::VectorXd row_ranges(const Matrix<double>& x) {
  return x.rowwise().maxCoeff() - x.rowwise().minCoeff();
}

}  // namespace

TEST_CASE("BHQ's implicit transform equals the paper's dense construction", "[quant][bhq]") {
  const Index n = GENERATE(3, 4, 7, 16, 33, 64);
  const std::uint64_t seed = GENERATE(1, 2, 3);
  // Log-uniform row scales over four decades: heavy-tailed, no ties.
  std::vector<double> scales(static_cast<std::size_t>(n));
  const Philox rng(seed, 5);
  for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = std::pow(10.0, 4 * rng.uniform(i));
  const Matrix<double> x = fqt_test::scaled_rows<double>(n, 20, scales, seed);
  const fqt::BlockHouseholderQuantizer<double> bhq(4);
  const auto t = bhq.transform_for(x);
  REQUIRE(t);
  const DenseReference ref = dense_reference(row_ranges(x));
  Matrix<double> dense = Matrix<double>::Identity(n, n);
  t->apply(dense);  // T·I
  const Matrix<double> ours = dense * ref.head_scale.asDiagonal();
  INFO("n " << n << " seed " << seed);
  REQUIRE((ours - ref.t).cwiseAbs().maxCoeff() <= 1e-12 * ref.t.cwiseAbs().maxCoeff());
  // Applying T implicitly to a matrix is the dense product.
  Matrix<double> tx = x;
  t->apply(tx);
  REQUIRE((tx - dense * x).cwiseAbs().maxCoeff() <= 1e-12 * (dense * x).cwiseAbs().maxCoeff());
}

TEST_CASE("BHQ's reflections are orthogonal and T^-1 T = I", "[quant][bhq]") {
  for (Index m = 1; m <= 9; ++m) {
    const Matrix<double> h = dense_householder(m);
    REQUIRE((h * h.transpose() - Matrix<double>::Identity(m, m)).cwiseAbs().maxCoeff() < 1e-14);
    // H maps e1 onto the all-1/sqrt(m) direction.
    REQUIRE((h.col(0).array() - 1 / std::sqrt(double(m))).abs().maxCoeff() < 1e-14);
    if (m >= 2) {
      REQUIRE(fqt::detail::householder_max_entry(m) == Approx(h.cwiseAbs().maxCoeff()));
      for (Index j = 0; j < m; ++j) {
        // The implicit reflector is the dense one's.
        Eigen::VectorXd e = Eigen::VectorXd::Zero(m);
        e(j) = 1;
        const double v0 = fqt::BlockHouseholderTransform<double>::reflector(m, 0);
        const double vj = fqt::BlockHouseholderTransform<double>::reflector(m, j);
        REQUIRE(h(0, j) == Approx((j == 0 ? 1.0 : 0.0) - 2 * v0 * vj).margin(1e-14));
      }
    }
  }
  const Matrix<float> x = fqt_test::heavy_tailed<float>(40, 64, 9);
  const auto t = fqt::BlockHouseholderQuantizer<float>(4).transform_for(x);
  REQUIRE(t);
  Matrix<float> y = x;
  t->apply(y);
  t->apply_inverse(y);
  REQUIRE((y - x).cwiseAbs().maxCoeff() <= 1e-5f * x.cwiseAbs().maxCoeff());
}

TEST_CASE("BHQ falls back to PSQ below three rows", "[quant][bhq]") {
  for (Index n : {1, 2}) {
    const Matrix<float> x = fqt_test::heavy_tailed<float>(n, 50, 4);
    const fqt::BlockHouseholderQuantizer<float> bhq(4);
    const fqt::PerSampleQuantizer<float> psq(4);
    REQUIRE_FALSE(bhq.transform_for(x));
    const auto q = bhq.quantize(x, Philox(8));
    REQUIRE_FALSE(q.transform);
    REQUIRE(q.codes == psq.quantize(x, Philox(8)).codes);
    REQUIRE(bhq.expected_variance(x) == psq.expected_variance(x));
  }
}

TEST_CASE("BHQ on three rows, ties, all-equal rows and one huge row", "[quant][bhq]") {
  SECTION("three rows: one head with two small rows") {
    Matrix<double> x = fqt_test::scaled_rows<double>(3, 30, {1, 50, 2}, 6);
    const auto t = fqt::BlockHouseholderQuantizer<double>(4).transform_for(x);
    REQUIRE(t);
    REQUIRE(t->groups() == 1);
    REQUIRE(t->member(0, 0) == 1);  // the largest row heads the group
    REQUIRE(t->group_size(0) == 3);
  }
  SECTION("ties are broken by row index, deterministically") {
    const Matrix<double> x = fqt_test::scaled_rows<double>(9, 16, {1}, 1);
    Matrix<double> tied(9, 16);
    for (Index i = 0; i < 9; ++i) tied.row(i) = x.row(0);  // nine identical rows
    const auto t = fqt::BlockHouseholderQuantizer<double>(4).transform_for(tied);
    REQUIRE(t);
    // Equal ranges: heads are the k lowest rows, each taking the next rows in index order.
    for (Index g = 0; g < t->groups(); ++g) REQUIRE(t->member(g, 0) == g);
    const auto again = fqt::BlockHouseholderQuantizer<double>(4).transform_for(tied);
    for (Index g = 0; g < t->groups(); ++g)
      for (Index j = 0; j < t->group_size(g); ++j) REQUIRE(t->member(g, j) == again->member(g, j));
    // Identical rows quantize without bias and with no more variance than PSQ.
    const fqt::BlockHouseholderQuantizer<double> bhq(4);
    const auto m = fqt_test::moments(bhq, tied, 800, 3);
    fqt_test::require_unbiased(m, bhq.element_variance(tied), tied, 1.0);
  }
  SECTION("all-zero rows beside a live row stay exactly zero") {
    Matrix<float> x = Matrix<float>::Zero(6, 40);
    x.row(2) = fqt_test::scaled_rows<float>(1, 40, {3}, 2);
    const fqt::BlockHouseholderQuantizer<float> bhq(4);
    const auto t = bhq.transform_for(x);
    REQUIRE(t);
    REQUIRE(t->row_scale().allFinite());
    const Matrix<float> q = bhq(x, Philox(1));
    REQUIRE(q.allFinite());
    // The head is spread over six rows: variance far below PSQ's.
    REQUIRE(bhq.expected_variance(x) < fqt::PerSampleQuantizer<float>(4).expected_variance(x) / 3);
  }
  SECTION("one huge row among many small ones") {
    std::vector<double> scales(64, 1.0);
    scales[17] = 1e4;
    const Matrix<double> x = fqt_test::scaled_rows<double>(64, 128, scales, 12);
    const fqt::BlockHouseholderQuantizer<double> bhq(4);
    const auto t = bhq.transform_for(x);
    REQUIRE(t);
    REQUIRE(t->member(0, 0) == 17);
    const double psq = fqt::PerSampleQuantizer<double>(4).expected_variance(x);
    const double ours = bhq.expected_variance(x);
    INFO("PSQ " << psq << " BHQ " << ours);
    REQUIRE(ours < psq / 10);
    const auto m = fqt_test::moments(bhq, x, 400, 5);
    REQUIRE(std::abs(m.mse - ours) <= 6 * m.mse_se);
  }
}

TEST_CASE("BHQ codes are PSQ codes of the transformed matrix", "[quant][bhq]") {
  // Shifted, most rows no longer contain 0 and are centred before they are mixed.
  const float shift = GENERATE(0.0f, 1000.0f);
  const Matrix<float> x = fqt_test::heavy_tailed<float>(24, 48, 21).array() + shift;
  const fqt::BlockHouseholderQuantizer<float> bhq(4, Grid::Free);
  const auto q = bhq.quantize(x, Philox(3, 1));
  REQUIRE(q.transform);
  Matrix<float> tx = x;
  q.transform->apply(tx);
  const auto p = fqt::PerSampleQuantizer<float>(4, Grid::Free).quantize(tx, Philox(3, 1));
  // The fused kernel and apply() share the transform's routines: the same rows, bit for bit.
  REQUIRE(q.codes == p.codes);
  REQUIRE(q.scale == p.scale);
  REQUIRE(q.zero_point == p.zero_point);
  // And the fused fake quantization is the dequantized codes, bit for bit.
  REQUIRE(bhq(x, Philox(3, 1)) == q.dequantize());
}

TEST_CASE("BHQ mixing only where it helps is never worse than PSQ or the full BHQ",
          "[quant][bhq]") {
  const int bits = GENERATE(2, 4, 8);
  const Grid grid = GENERATE(Grid::ZeroAligned, Grid::Auto, Grid::Free);
  for (const double zeros : {0.0, 0.5, 0.85}) {
    const Matrix<double> x = fqt_test::sparse<double>(48, 64, zeros, 31);
    INFO("bits " << bits << " grid " << fqt::to_string(grid) << " zeros " << zeros);
    const fqt::BlockHouseholderQuantizer<double> selective(bits, grid,
                                                           fqt::BhqMixing::WhereItHelps);
    const double s = selective.expected_variance(x);
    const double full = fqt::BlockHouseholderQuantizer<double>(bits, grid).expected_variance(x);
    const double psq = fqt::PerSampleQuantizer<double>(bits, grid).expected_variance(x);
    INFO("selective " << s << " full " << full << " psq " << psq);
    REQUIRE(s <= full * (1 + 1e-12));
    REQUIRE(s <= psq * (1 + 1e-12));
    // Its exact variance is its codes': the element variances add up, and codes are the PSQ codes
    // of its transformed matrix.
    REQUIRE_THAT(selective.element_variance(x).sum(), Catch::Matchers::WithinRel(s, 1e-9));
    const auto t = selective.transform_for(x);
    if (t) {
      Matrix<double> tx = x;
      t->apply(tx);
      Matrix<double> back = tx;
      t->apply_inverse(back);
      REQUIRE((back - x).cwiseAbs().maxCoeff() <= 1e-9 * x.cwiseAbs().maxCoeff());
    }
  }
  REQUIRE_THROWS_WITH(
      fqt::BlockHouseholderQuantizer<double>(4, Grid::Auto, static_cast<fqt::BhqMixing>(5)),
      Catch::Matchers::Contains("mixing must be All or WhereItHelps"));
}

TEST_CASE("BHQ mixing where it helps is unbiased with its exact variance",
          "[quant][bhq][statistical]") {
  const Matrix<double> x = fqt_test::sparse<double>(12, 40, 0.5, 41);
  for (const int bits : {2, 4}) {
    const fqt::BlockHouseholderQuantizer<double> q(bits, Grid::Auto, fqt::BhqMixing::WhereItHelps);
    const auto m = fqt_test::moments(q, x, 2000, 300 + static_cast<std::uint64_t>(bits));
    fqt_test::require_unbiased(m, q.element_variance(x), x,
                               static_cast<double>(q.quantize(x, Philox(0)).scale.maxCoeff()));
    const double exact = q.expected_variance(x);
    INFO("bits " << bits << " exact " << exact << " Monte-Carlo " << m.mse << " ± " << m.mse_se);
    REQUIRE(std::abs(m.mse - exact) <= 6 * m.mse_se + 1e-9 * exact);
  }
}
