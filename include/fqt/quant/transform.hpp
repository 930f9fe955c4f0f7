#pragma once
/// \file
/// \brief The row transforms of the transformed-row quantizers, applied implicitly: BHQ's block
/// Householder transform (O(N·D)), the randomized block Hadamard transform of HadamardQuantizer
/// (O(N·log b·D), in fqt/quant/hadamard_transform.hpp), and `RowTransform`, which holds either
/// (what `Quantized` carries).
///
/// **Block Householder (BHQ).**
/// T·x = Pᵀ·blockdiag(H_{m_1}, …, H_{m_k})·P·diag(s)·(x − c·𝟙ᵀ): shift row i by its offset c_i
/// (0 for a row whose range contains 0, its midpoint otherwise), scale it by s_i, then, inside each
/// group of rows (a head followed by its small rows), apply the reflection H_m = I − 2vvᵀ with
/// v ∝ 𝟙/√m − e₁, which maps the head onto the all-1/√m direction. H_m is symmetric and
/// orthogonal, so T⁻¹·y = diag(1/s)·Pᵀ·blockdiag(H)·P·y + c·𝟙ᵀ. Neither T nor T⁻¹ is ever formed:
/// one reflection costs two passes over its m rows (w = Σ v_j x_j, then x_j −= 2 v_j w).
///
/// Why the offsets: a row with a large offset and a small range (say constant rows at 10⁵ beside a
/// head row of unit scale) would otherwise be mixed as s·10⁵, and the float rounding of s·10⁵ − 2vw
/// would swamp the head's contribution — a deterministic error that biases BHQ. Centred, every
/// transformed value is of the order of the ranges, and its rounding is far below one step. A row
/// that contains 0 keeps c = 0, so its exact zeros stay exact zeros of the transformed rows.
///
/// The routines `mix`, `transform_row` and `invert_group` are the only places where the
/// reflections are computed: `apply`, `apply_inverse` and BHQ's fused kernel all call them, so the
/// transformed rows (and so the codes) are bit-identical whichever path computes them.

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/simd.hpp"
#include "fqt/quant/detail/kernels.hpp"
#include "fqt/quant/hadamard_transform.hpp"

namespace fqt {

/// \brief An affine row transform made of row shifts, row scalings and Householder reflections
/// over groups of rows.
template <class Scalar>
class BlockHouseholderTransform {
 public:
  BlockHouseholderTransform() = default;

  /// \param order the rows of every group, group after group, each group's head first
  /// \param offsets group g is order[offsets[g] .. offsets[g+1]); offsets.front() == 0,
  ///        offsets.back() == order.size()
  /// \param row_scale s_i for every row i (positive, finite)
  /// \param row_offset c_i for every row i (finite), or empty for c = 0
  BlockHouseholderTransform(std::vector<Index> order, std::vector<Index> offsets,
                            Vector<Scalar> row_scale, Vector<Scalar> row_offset = {})
      : order_(std::move(order)),
        offsets_(std::move(offsets)),
        scale_(std::move(row_scale)),
        shift_(std::move(row_offset)) {
    constexpr const char* kWhere = "BlockHouseholderTransform";
    check(!offsets_.empty() && offsets_.front() == 0 &&
              offsets_.back() == static_cast<Index>(order_.size()) &&
              static_cast<Index>(order_.size()) == scale_.size(),
          kWhere, "inconsistent groups: ", order_.size(), " rows in order, ", scale_.size(),
          " scales");
    check((scale_.array() > 0).all() && scale_.allFinite(), kWhere,
          "row scales must be positive and finite");
    if (shift_.size() == 0) shift_ = Vector<Scalar>::Zero(scale_.size());
    check(shift_.size() == scale_.size() && shift_.allFinite(), kWhere,
          "row offsets: ", shift_.size(), " for ", scale_.size(), " rows; they must be finite");
    inv_scale_ = scale_.cwiseInverse();
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
  /// The row offsets c (zero for rows whose range contains 0).
  const Vector<Scalar>& row_offset() const { return shift_; }

  /// Component j of the unit reflection vector v of a group of size m (m ≥ 2).
  static Scalar reflector(Index m, Index j) {
    const double root = std::sqrt(static_cast<double>(m));
    const double norm = std::sqrt(2.0 - 2.0 / root);
    return static_cast<Scalar>(j == 0 ? (1.0 / root - 1.0) / norm : (1.0 / root) / norm);
  }

  /// \brief x ← T·x in place (x has rows() rows). O(N·D), no allocation beyond one row.
  void apply(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "BlockHouseholderTransform::apply");
    const Index d = x.cols(), stride = x.outerStride();
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w(d);
    for (Index g = 0; g < groups(); ++g) {
      mix(x.data(), stride, d, g, w.data());
      for (Index j = 0; j < group_size(g); ++j) {
        Scalar* row = x.data() + member(g, j) * stride;
        Scalar lo, hi;
        transform_row(x.data(), stride, d, g, j, w.data(), row, lo, hi);
      }
    }
  }

  /// \brief x ← T⁻¹·x in place.
  /// \throws std::domain_error if a result is not finite (x far outside the range T maps)
  void apply_inverse(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "BlockHouseholderTransform::apply_inverse");
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w(x.cols());
    for (Index g = 0; g < groups(); ++g) {
      check_domain(invert_group(x.data(), x.outerStride(), x.cols(), g, w.data()),
                   "BlockHouseholderTransform::apply_inverse",
                   "a value of the result overflows (the input lies outside the range of T)");
    }
  }

  /// \brief y ← diag(1/s)·Pᵀ·blockdiag(H)·P·y in place: T⁻¹ without its row offsets, the part
  /// that commutes with a product. An integer GEMM on BHQ's codes uses it: T⁻¹(Z)·W is
  /// apply_inverse_linear(Z·W) plus c·(𝟙ᵀ·W).
  /// \throws std::domain_error if a result is not finite
  void apply_inverse_linear(MatrixRef<Scalar> y) const {
    check_rows(y.rows(), "BlockHouseholderTransform::apply_inverse_linear");
    Eigen::Matrix<Scalar, 1, Eigen::Dynamic> w(y.cols());
    for (Index g = 0; g < groups(); ++g) {
      check_domain(invert_group(y.data(), y.outerStride(), y.cols(), g, w.data(), false),
                   "BlockHouseholderTransform::apply_inverse_linear",
                   "a value of the result overflows");
    }
  }

  /// \brief w ← Σ_j (v_j·s_j)·(x_j − c_j) over the members j of group g, whose rows are
  /// x + r·stride (d elements each); w ← 0 for a group of one row.
  void mix(const Scalar* x, Index stride, Index d, Index g, Scalar* w) const {
    const Index m = group_size(g);
    if (m < 2) {
      std::fill(w, w + d, Scalar(0));
      return;
    }
    const Index head = member(g, 0);
    detail::scale_shifted_into(reflector(m, 0) * scale_(head), x + head * stride, shift_(head), w,
                               d);
    for (Index j = 1; j < m; ++j) {
      const Index r = member(g, j);
      detail::fma_shifted_into(reflector(m, j) * scale_(r), x + r * stride, shift_(r), w, d);
    }
  }

  /// \brief Transformed row j of group g: t ← fma(−2v_j, w, s_r·(x_r − c_r)) with w from `mix`,
  /// and its minimum and maximum in the same pass. t may be the row x_r itself.
  /// \return false if a transformed value is not finite
  bool transform_row(const Scalar* x, Index stride, Index d, Index g, Index j, const Scalar* w,
                     Scalar* t, Scalar& lo, Scalar& hi) const {
    const Index m = group_size(g), r = member(g, j);
    const Scalar v2 = m >= 2 ? 2 * reflector(m, j) : Scalar(0);
    return detail::transformed_row(scale_(r), x + r * stride, shift_(r), v2, w, t, d, lo, hi);
  }

  /// \brief The rows of group g of y (row r at y + r·stride) ← diag(1/s)·H·y + c, in place (without
  /// + c when `with_offsets` is false).
  /// \param w workspace of d elements
  /// \return false if a result is not finite
  bool invert_group(Scalar* y, Index stride, Index d, Index g, Scalar* w,
                    bool with_offsets = true) const {
    const Index m = group_size(g);
    if (m >= 2) {
      detail::scale_into(reflector(m, 0), y + member(g, 0) * stride, w, d);
      for (Index j = 1; j < m; ++j)
        detail::fma_into(reflector(m, j), y + member(g, j) * stride, w, d);
    }
    bool finite = true;
    for (Index j = 0; j < m; ++j) {
      const Index r = member(g, j);
      Scalar* row = y + r * stride;
      if (m >= 2) detail::fma_into(-2 * reflector(m, j), w, row, d);
      finite = detail::scale_shift_in_place(inv_scale_(r), with_offsets ? shift_(r) : Scalar(0),
                                            row, d) &&
               finite;
    }
    return finite;
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
  Vector<Scalar> scale_, inv_scale_, shift_;
};

/// \brief The row transform a `Quantized` carries: BHQ's block Householder transform or the
/// randomized Hadamard transform. It exposes what generic code needs — rows(), apply,
/// apply_inverse, apply_inverse_linear (T⁻¹ without its row offsets), row_offset() (c, zero for
/// Hadamard) and inverse_column_norms() — so that T⁻¹(Z)·W = apply_inverse_linear(Z·W) +
/// c·(𝟙ᵀW) holds for either; `block_householder()` and `hadamard()` give the concrete transform.
template <class Scalar>
class RowTransform {
 public:
  /// Holds BHQ's transform (implicit, so a BHQ transform converts where a RowTransform is asked).
  RowTransform(BlockHouseholderTransform<Scalar> t) : t_(std::move(t)) {}
  /// Holds a Hadamard transform.
  RowTransform(HadamardTransform<Scalar> t) : t_(std::move(t)) {}

  /// Number of rows N the transform acts on.
  Index rows() const {
    return std::visit([](const auto& t) { return t.rows(); }, t_);
  }
  /// \brief x ← T·x in place.
  void apply(MatrixRef<Scalar> x) const {
    std::visit([&](const auto& t) { t.apply(x); }, t_);
  }
  /// \brief x ← T⁻¹·x in place. \throws std::domain_error if a result is not finite
  void apply_inverse(MatrixRef<Scalar> x) const {
    std::visit([&](const auto& t) { t.apply_inverse(x); }, t_);
  }
  /// \brief y ← the linear part of T⁻¹ applied to y (all of T⁻¹ for Hadamard).
  void apply_inverse_linear(MatrixRef<Scalar> y) const {
    std::visit([&](const auto& t) { t.apply_inverse_linear(y); }, t_);
  }
  /// The row offsets c of T⁻¹·y = (linear part)·y + c·𝟙ᵀ.
  const Vector<Scalar>& row_offset() const {
    return std::visit([](const auto& t) -> const Vector<Scalar>& { return t.row_offset(); }, t_);
  }
  /// ‖T⁻¹e_r‖² for every row r.
  Vector<double> inverse_column_norms() const {
    return std::visit([](const auto& t) { return t.inverse_column_norms(); }, t_);
  }
  /// BHQ's transform, or nullptr.
  const BlockHouseholderTransform<Scalar>* block_householder() const {
    return std::get_if<BlockHouseholderTransform<Scalar>>(&t_);
  }
  /// The Hadamard transform, or nullptr.
  const HadamardTransform<Scalar>* hadamard() const {
    return std::get_if<HadamardTransform<Scalar>>(&t_);
  }

 private:
  std::variant<BlockHouseholderTransform<Scalar>, HadamardTransform<Scalar>> t_;
};

}  // namespace fqt
