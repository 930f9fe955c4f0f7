#pragma once
/// \file
/// \brief The block Householder row transform of BHQ, applied implicitly in O(N·D).
///
/// T = Pᵀ·blockdiag(H_{m_1}, …, H_{m_k})·P·diag(s): scale row i by s_i, then, inside each group
/// of rows (a head followed by its small rows), apply the reflection H_m = I − 2vvᵀ with
/// v ∝ 𝟙/√m − e₁, which maps the head onto the all-1/√m direction. H_m is symmetric and
/// orthogonal, so T⁻¹ = diag(1/s)·Pᵀ·blockdiag(H)·P. Neither T nor T⁻¹ is ever formed: one
/// reflection costs two passes over its m rows (w = Σ v_j x_j, then x_j −= 2 v_j w).

#include <cmath>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/quant/detail/kernels.hpp"

namespace fqt {

/// \brief A row transform made of row scalings and Householder reflections over groups of rows.
template <class Scalar>
class BlockHouseholderTransform {
 public:
  BlockHouseholderTransform() = default;

  /// \param order the rows of every group, group after group, each group's head first
  /// \param offsets group g is order[offsets[g] .. offsets[g+1]); offsets.front() == 0,
  ///        offsets.back() == order.size()
  /// \param row_scale s_i for every row i (positive, finite)
  BlockHouseholderTransform(std::vector<Index> order, std::vector<Index> offsets,
                            Vector<Scalar> row_scale)
      : order_(std::move(order)), offsets_(std::move(offsets)), scale_(std::move(row_scale)) {
    check(!offsets_.empty() && offsets_.front() == 0 &&
              offsets_.back() == static_cast<Index>(order_.size()) &&
              static_cast<Index>(order_.size()) == scale_.size(),
          "BlockHouseholderTransform", "inconsistent groups: ", order_.size(), " rows in order, ",
          scale_.size(), " scales");
    check((scale_.array() > 0).all() && scale_.allFinite(), "BlockHouseholderTransform",
          "row scales must be positive and finite");
  }

  /// Number of rows N the transform acts on.
  Index rows() const { return scale_.size(); }
  /// Number of groups.
  Index groups() const { return static_cast<Index>(offsets_.size()) - 1; }
  /// Size m of group g.
  Index group_size(Index g) const { return offsets_[g + 1] - offsets_[g]; }
  /// Row of member j of group g (j = 0 is the head).
  Index member(Index g, Index j) const { return order_[offsets_[g] + j]; }
  /// The row scales s.
  const Vector<Scalar>& row_scale() const { return scale_; }

  /// Component j of the unit reflection vector v of a group of size m (m ≥ 2).
  static Scalar reflector(Index m, Index j) {
    const double root = std::sqrt(static_cast<double>(m));
    const double norm = std::sqrt(2.0 - 2.0 / root);
    return static_cast<Scalar>(j == 0 ? (1.0 / root - 1.0) / norm : (1.0 / root) / norm);
  }

  /// \brief x ← T·x in place (x has rows() rows). O(N·D), no allocation beyond one row.
  void apply(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "BlockHouseholderTransform::apply");
    x.array().colwise() *= scale_.array();
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w(x.cols());
    for (Index g = 0; g < groups(); ++g) reflect(x, g, w);
  }

  /// \brief x ← T⁻¹·x in place.
  void apply_inverse(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "BlockHouseholderTransform::apply_inverse");
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w(x.cols());
    for (Index g = 0; g < groups(); ++g) reflect(x, g, w);
    x.array().colwise() *= scale_.cwiseInverse().array();
  }

  /// \brief Reflects the rows of group g of x in place: x_j ← x_j − 2 v_j Σ_i v_i x_i, with
  /// explicit fused multiply-adds (the same operations as BHQ's fused kernel).
  /// \param w workspace of x.cols() elements
  void reflect(MatrixRef<Scalar> x, Index g, Eigen::Matrix<Scalar, 1, Eigen::Dynamic>& w) const {
    const Index m = group_size(g), d = x.cols();
    if (m < 2) return;
    w.resize(d);
    detail::scale_into(reflector(m, 0), x.row(member(g, 0)).data(), w.data(), d);
    for (Index j = 1; j < m; ++j)
      detail::fma_into(reflector(m, j), x.row(member(g, j)).data(), w.data(), d);
    for (Index j = 0; j < m; ++j)
      detail::fma_into(-2 * reflector(m, j), w.data(), x.row(member(g, j)).data(), d);
  }

  /// \brief c_r = ‖T⁻¹ e_r‖², the factor by which noise injected in transformed row r is
  /// amplified in the original domain (the weight of row r in BHQ's variance).
  Vector<double> inverse_column_norms() const {
    Vector<double> c(rows());
    for (Index g = 0; g < groups(); ++g) {
      const Index m = group_size(g);
      if (m < 2) {
        const double s = scale_(member(g, 0));
        c(member(g, 0)) = 1.0 / (s * s);
        continue;
      }
      // c_r = Σ_i (δ_ir − 2 v_i v_r)² / s_i² = 1/s_r² − 4 v_r²/s_r² + 4 v_r² Σ_i v_i²/s_i².
      double sum = 0;
      for (Index i = 0; i < m; ++i) {
        const double v = reflector(m, i), s = scale_(member(g, i));
        sum += v * v / (s * s);
      }
      for (Index r = 0; r < m; ++r) {
        const double v = reflector(m, r), s = scale_(member(g, r));
        c(member(g, r)) = (1 - 4 * v * v) / (s * s) + 4 * v * v * sum;
      }
    }
    return c;
  }

 private:
  void check_rows(Index n, const char* where) const {
    check(n == rows(), where, "the matrix has ", n, " rows, the transform acts on ", rows());
  }

  std::vector<Index> order_;
  std::vector<Index> offsets_{0};
  Vector<Scalar> scale_;
};

}  // namespace fqt
