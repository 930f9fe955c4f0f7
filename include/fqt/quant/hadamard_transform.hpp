#pragma once
/// \file
/// \brief The randomized block Hadamard transform of HadamardQuantizer (O(N·log b·D)) and its fast
/// Walsh–Hadamard kernels.
///
/// **Randomized block Hadamard (HadamardQuantizer).** T = blockdiag(T_1, …, T_k) over consecutive
/// blocks of rows, T_g = H_m·diag(σ)/√m with H_m the m×m Sylvester–Hadamard matrix (entries ±1),
/// σ_i = ±1 a sign per row and m a power of two. T is orthogonal, so T⁻¹ = Tᵀ = blockdiag(diag(σ)·
/// H_m/√m). It is applied by the fast Walsh–Hadamard transform: log₂m stages of butterflies
/// (a, b) ← (a + b, a − b) on pairs of rows, each a vector operation along the columns, so
/// T·x costs N·log₂m·D additions and one multiplication per element (σ_i/√m, on the way in;
/// T⁻¹ applies it on the way out). The rows are processed in strips of columns that stay in the
/// L1 cache through all the stages. T is never formed.

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/simd.hpp"
#include "fqt/quant/detail/kernels.hpp"

namespace fqt {

namespace detail {

/// \brief The fast Walsh–Hadamard butterflies on the m rows at rows + j·stride, columns [0, n):
/// rows ← H_m·rows (unnormalised, m a power of two), stage by stage; stage h pairs row j with row
/// j + h within each run of 2h rows. Stages before `first` are taken as done.
template <class Scalar>
inline void walsh_hadamard_rows(Scalar* rows, Index stride, Index m, Index n, Index first = 1) {
  for (Index h = first; h < m; h *= 2) {
    for (Index i = 0; i < m; i += 2 * h) {
      for (Index j = i; j < i + h; ++j) {
        Scalar* a = rows + j * stride;
        Scalar* b = rows + (j + h) * stride;
        for (Index c = 0; c < n; ++c) {
          const Scalar u = a[c], v = b[c];
          a[c] = u + v;
          b[c] = u - v;
        }
      }
    }
  }
}

/// \brief out row r ← H_M·(f ∘ x) for the M rows x + r·stride, columns [0, n): the butterflies of
/// walsh_hadamard_rows after the scaling by f_r, with the M values of a column held in registers
/// through all the stages (the loop over columns vectorizes). The same operations in the same
/// order as scale_into followed by walsh_hadamard_rows, so the results are bit-identical.
FQT_SIMD_DIAGNOSTICS_PUSH
template <int M, class Scalar>
inline void walsh_hadamard_strip(const Scalar* x, Index stride, const Scalar* f, Scalar* out,
                                 Index out_stride, Index n) {
  constexpr Index kWidth = 64 / sizeof(Scalar);  // one vector register of columns
  Index c = 0;
#if FQT_HAVE_AVX512
  if constexpr (std::is_same_v<Scalar, float>) {
    // Fully unrolled, so that the M vectors stay in registers through the stages.
    for (; c + 16 <= n; c += 16) {
      __m512 v[M];
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r)
        v[r] = _mm512_mul_ps(_mm512_set1_ps(f[r]), _mm512_loadu_ps(x + r * stride + c));
#pragma GCC unroll 4
      for (int h = 1; h < M; h *= 2) {
#pragma GCC unroll 8
        for (int p = 0; p < M / 2; ++p) {  // pair p of stage h: rows j and j + h
          const int j = (p / h) * 2 * h + p % h;
          const __m512 a = v[j], b = v[j + h];
          v[j] = _mm512_add_ps(a, b);
          v[j + h] = _mm512_sub_ps(a, b);
        }
      }
#pragma GCC unroll 16
      for (int r = 0; r < M; ++r) _mm512_storeu_ps(out + r * out_stride + c, v[r]);
    }
  }
#endif
  for (; c + kWidth <= n; c += kWidth) {
    Scalar v[M][kWidth];
    for (int r = 0; r < M; ++r)
      for (Index k = 0; k < kWidth; ++k) v[r][k] = f[r] * x[r * stride + c + k];
    for (int h = 1; h < M; h *= 2) {
      for (int i = 0; i < M; i += 2 * h) {
        for (int j = i; j < i + h; ++j) {
          for (Index k = 0; k < kWidth; ++k) {
            const Scalar a = v[j][k], b = v[j + h][k];
            v[j][k] = a + b;
            v[j + h][k] = a - b;
          }
        }
      }
    }
    for (int r = 0; r < M; ++r)
      for (Index k = 0; k < kWidth; ++k) out[r * out_stride + c + k] = v[r][k];
  }
  if (c < n) {
    for (int r = 0; r < M; ++r)
      scale_into(f[r], x + r * stride + c, out + r * out_stride + c, n - c);
    walsh_hadamard_rows(out + c, out_stride, M, n - c);
  }
}
FQT_SIMD_DIAGNOSTICS_POP

/// \brief walsh_hadamard_strip for a block of m rows (a power of two ≥ 2): the register kernel
/// up to 16 rows; above, the kernel on each run of 16 rows, then the stages that cross runs.
template <class Scalar>
inline void walsh_hadamard_block(const Scalar* x, Index stride, const Scalar* f, Scalar* out,
                                 Index out_stride, Index m, Index n) {
  switch (m) {
    case 2:
      return walsh_hadamard_strip<2>(x, stride, f, out, out_stride, n);
    case 4:
      return walsh_hadamard_strip<4>(x, stride, f, out, out_stride, n);
    case 8:
      return walsh_hadamard_strip<8>(x, stride, f, out, out_stride, n);
    case 16:
      return walsh_hadamard_strip<16>(x, stride, f, out, out_stride, n);
    default:
      // The first four stages act within runs of 16 rows: the register kernel on each run, then
      // the remaining stages (h ≥ 16) across runs, on the strip while it is in L1.
      for (Index k = 0; k < m; k += 16) {
        walsh_hadamard_strip<16>(x + k * stride, stride, f + k, out + k * out_stride, out_stride,
                                 n);
      }
      walsh_hadamard_rows(out, out_stride, m, n, 16);
  }
}

}  // namespace detail

/// \brief The randomized block Hadamard transform T = blockdiag(H_m·diag(σ)/√m) over consecutive
/// blocks of rows (see the file comment): orthogonal and linear, T⁻¹ = Tᵀ.
///
/// Blocks: ⌊N/b⌋ blocks of b rows, then the N mod b rows that are left split into the largest
/// powers of two that fit, in decreasing order (13 left rows: 8, 4, 1). A block of one row is the
/// identity (its sign is not applied: on one row it would only negate it).
template <class Scalar>
class HadamardTransform {
 public:
  HadamardTransform() = default;

  /// \param block_size b, a power of two
  /// \param signs σ_i = ±1 for every row i (N = signs.size() rows)
  HadamardTransform(Index block_size, Vector<Scalar> signs)
      : block_(block_size), sign_(std::move(signs)) {
    constexpr const char* kWhere = "HadamardTransform";
    check(block_ >= 1 && (block_ & (block_ - 1)) == 0, kWhere,
          "block_size must be a power of two, got ", block_);
    check((sign_.array().abs() == Scalar(1)).all(), kWhere, "signs must be +1 or -1");
    const Index n = sign_.size();
    starts_.clear();
    Index start = 0;
    for (; start + block_ <= n; start += block_) starts_.push_back(start);
    for (Index m = block_ / 2; m >= 1; m /= 2) {
      if (start + m <= n) {
        starts_.push_back(start);
        start += m;
      }
    }
    starts_.push_back(start);
    offset_ = Vector<Scalar>::Zero(n);
  }

  /// Number of rows N the transform acts on.
  Index rows() const { return sign_.size(); }
  /// The block size b of the full blocks.
  Index block_size() const { return block_; }
  /// Number of blocks.
  Index blocks() const { return static_cast<Index>(starts_.size()) - 1; }
  /// First row of block g.
  Index block_start(Index g) const { return starts_[g]; }
  /// Rows m of block g (a power of two ≤ b).
  Index block_rows(Index g) const { return starts_[g + 1] - starts_[g]; }
  /// The signs σ.
  const Vector<Scalar>& signs() const { return sign_; }
  /// The row offsets: zero, T is linear (the member BHQ's transform has, for generic callers).
  const Vector<Scalar>& row_offset() const { return offset_; }

  /// \brief x ← T·x in place (x has rows() rows).
  void apply(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "HadamardTransform::apply");
    for (Index g = 0; g < blocks(); ++g) {
      Scalar* block = x.data() + block_start(g) * x.outerStride();
      transform_block(block, x.outerStride(), x.cols(), g, block, x.outerStride());
    }
  }

  /// \brief x ← T⁻¹·x = Tᵀ·x in place.
  /// \throws std::domain_error if a result is not finite
  void apply_inverse(MatrixRef<Scalar> x) const {
    check_rows(x.rows(), "HadamardTransform::apply_inverse");
    for (Index g = 0; g < blocks(); ++g) {
      check_domain(
          invert_block(x.data() + block_start(g) * x.outerStride(), x.outerStride(), x.cols(), g),
          "HadamardTransform::apply_inverse",
          "a value of the result overflows (the input lies outside the range of T)");
    }
  }

  /// \brief y ← T⁻¹·y: T is linear, so this is apply_inverse (the name BHQ's transform gives the
  /// part of T⁻¹ that commutes with a product).
  void apply_inverse_linear(MatrixRef<Scalar> y) const { apply_inverse(y); }

  /// \brief ‖T⁻¹e_r‖² = 1 for every row: T is orthogonal.
  Vector<double> inverse_column_norms() const { return Vector<double>::Ones(rows()); }

  /// \brief The m rows of block g at out + j·out_stride ← T_g applied to the rows at
  /// x + j·stride (d columns each; the block's own rows, not all of x). out may be x.
  void transform_block(const Scalar* x, Index stride, Index d, Index g, Scalar* out,
                       Index out_stride) const {
    const Index m = block_rows(g), first = block_start(g);
    if (m < 2) {
      if (out != x) std::copy_n(x, d, out);
      return;
    }
    const Index strip = strip_columns(m);
    const Scalar norm = normaliser(m);
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> f = sign_.segment(first, m) * norm;
    for (Index c0 = 0; c0 < d; c0 += strip) {
      const Index w = std::min(strip, d - c0);
      detail::walsh_hadamard_block(x + c0, stride, f.data(), out + c0, out_stride, m, w);
    }
  }

  /// \brief The m rows of block g at y + j·stride (d columns) ← T_g⁻¹ of them, in place.
  /// \return false if a result is not finite
  bool invert_block(Scalar* y, Index stride, Index d, Index g) const {
    const Index m = block_rows(g), first = block_start(g);
    if (m < 2) return detail::scale_shift_in_place(Scalar(1), Scalar(0), y, d);
    const Index strip = strip_columns(m);
    const Scalar norm = normaliser(m);
    bool finite = true;
    for (Index c0 = 0; c0 < d; c0 += strip) {
      const Index w = std::min(strip, d - c0);
      detail::walsh_hadamard_rows(y + c0, stride, m, w);
      for (Index j = 0; j < m; ++j) {
        finite = detail::scale_shift_in_place(sign_(first + j) * norm, Scalar(0),
                                              y + j * stride + c0, w) &&
                 finite;
      }
    }
    return finite;
  }

 private:
  static Scalar normaliser(Index m) {
    return static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(m)));
  }
  // Columns per strip: m rows of it (16 KiB of floats) stay in L1 through the log₂m stages.
  static Index strip_columns(Index m) {
    return std::max<Index>(16, (Index{4096} / std::max<Index>(m, 1)) / 16 * 16);
  }
  void check_rows(Index n, const char* where) const {
    check(n == rows(), where, "the matrix has ", n, " rows, the transform acts on ", rows());
  }

  Index block_ = 1;
  Vector<Scalar> sign_, offset_;
  std::vector<Index> starts_{0};
};

}  // namespace fqt
