#pragma once
/// \file
/// \brief Internals of the int8 backend (fqt/nn/backends/int8.hpp): the epilogue that turns an
/// int32 GEMM of codes into values, code sums, the im2col of codes and the per-layer state.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/integer_gemm.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/im2col.hpp"
#include "fqt/quant/quantized.hpp"
#include "fqt/quant/transform.hpp"

namespace fqt {
namespace nn {
namespace detail {

using Int32Matrix = Matrix<std::int32_t>;
using Int8Matrix = Matrix<std::int8_t>;

/// \brief The affine map of element (i, j) of q: (scale, zero point).
template <class Scalar>
std::pair<Scalar, Scalar> map_at(const Quantized<Scalar, Code>& q, Index i, Index j) {
  switch (q.granularity) {
    case Granularity::PerTensor:
      return {q.scale(0), q.zero_point(0)};
    case Granularity::PerRow:
      return {q.scale(i), q.zero_point(i)};
    case Granularity::PerColumn:
      return {q.scale(j), q.zero_point(j)};
    case Granularity::PerChannel: {
      const Index k = j / (q.cols() / q.scale.size());
      return {q.scale(k), q.zero_point(k)};
    }
  }
  return {Scalar(0), Scalar(0)};
}

/// \brief Throws std::invalid_argument unless q's maps are constant along `axis` (0: along its
/// rows, i.e. the same for every row; 1: along its columns), so that they factor out of a product
/// contracting that axis. The policy rejects such quantizers first; this guards direct calls.
template <class Scalar>
void require_factoring(const Quantized<Scalar, Code>& q, int axis, const char* where,
                       const char* what) {
  const Granularity g = q.granularity;
  const bool ok = g == Granularity::PerTensor ||
                  (axis == 1 ? g == Granularity::PerRow : g != Granularity::PerRow);
  check(ok, where, what, "'s scales vary along the contraction, so no integer GEMM can apply them");
  check(!q.transform || axis == 1, where, what, " carries a row transform across the contraction");
}

/// \brief The per-row (of A) and per-column (of B) terms of the epilogue, expanded. The bracket
/// S + r_a·(128 − z_b) − z_a·(c_b − K·z_b) is formed in double — exact for integer zero points,
/// and free of the cancellation of its large terms otherwise — and rounded once to Scalar.
template <class Scalar>
struct Epilogue {
  Vector<Scalar> row_scale, col_scale;  // s_a per row of A, s_b per column of B
  Vector<double> row_zero, row_sum;     // z_a, r_a per row of A
  Vector<double> col_shift, col_sum;    // 128 − z_b, c_b − K·z_b per column of B

  /// out(i, j) (+)= s_a·s_b·(S + r_a·(128 − z_b) − z_a·(c_b − K·z_b)) for an m × n block of S,
  /// from a contraction of `depth` terms with A's codes at most `max_a`.
  void apply(const std::int32_t* s, Index lds, Scalar* out, Index ldo, bool accumulate, Index depth,
             int max_a) const {
    if constexpr (std::is_same_v<Scalar, float>) {
      // Σ a·b = S + 128·r_a of unsigned codes fits int32: form it exactly, then the small
      // remaining terms in float (16 lanes), with no cancellation of the 128 shift.
      if (static_cast<double>(depth) * max_a * 255 < 2147483647.0)
        return apply_float(s, lds, out, ldo, accumulate);
    }
    const Index m = row_scale.size(), n = col_scale.size();
    for (Index i = 0; i < m; ++i) {
      using Row = Eigen::Matrix<std::int32_t, 1, Eigen::Dynamic>;
      const auto bracket = Eigen::Map<const Row>(s + i * lds, n).template cast<double>().array() +
                           row_sum(i) * col_shift.transpose().array() -
                           row_zero(i) * col_sum.transpose().array();
      const auto value =
          (row_scale(i) * col_scale.transpose().array()) * bracket.template cast<Scalar>();
      store(value, out + i * ldo, n, accumulate);
    }
  }

 private:
  mutable Eigen::Array<float, 1, Eigen::Dynamic> zero_b_, sum_b_;  // z_b, c_b − K·z_b in float
  mutable Eigen::Array<std::int32_t, 1, Eigen::Dynamic> exact_;    // one row of S + 128·r_a

  template <class Value>
  static void store(const Value& value, Scalar* out, Index n, bool accumulate) {
    Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> o(out, n);
    if (accumulate) {
      o.array() += value;
    } else {
      o.array() = value;
    }
  }

  void apply_float(const std::int32_t* s, Index lds, Scalar* out, Index ldo,
                   bool accumulate) const {
    const Index m = row_scale.size(), n = col_scale.size();
    zero_b_ = (128.0 - col_shift.transpose().array()).template cast<float>();
    sum_b_ = col_sum.transpose().array().template cast<float>();
    for (Index i = 0; i < m; ++i) {
      using Row = Eigen::Array<std::int32_t, 1, Eigen::Dynamic>;
      exact_ = Eigen::Map<const Row>(s + i * lds, n) + static_cast<std::int32_t>(128 * row_sum(i));
      const float r = static_cast<float>(row_sum(i)), z = static_cast<float>(row_zero(i));
      const auto bracket = exact_.template cast<float>() - r * zero_b_ - z * sum_b_;
      store((row_scale(i) * col_scale.transpose().array()) * bracket, out + i * ldo, n, accumulate);
    }
  }
};

/// \brief The largest code of q, 2^bits − 1.
template <class Scalar>
int max_code(const Quantized<Scalar, Code>& q) {
  return (1 << q.bits) - 1;
}

/// \brief codes − 128 as signed bytes.
inline void shift_to_signed(const Code* codes, Index size, std::int8_t* out) {
  for (Index i = 0; i < size; ++i) out[i] = static_cast<std::int8_t>(int(codes[i]) - 128);
}

inline void check_depth(Index depth, int bits, const char* where, const char* what) {
  const Index bound = max_exact_depth((1 << bits) - 1);
  check_domain(depth <= bound, where, what, " contracts over ", depth, " terms, more than the ",
               bound, " for which a ", bits, "-bit × 8-bit int32 accumulation is exact");
}

template <class T>
void ensure_size(std::vector<T>& v, Index size) {
  if (static_cast<Index>(v.size()) != size) v.resize(static_cast<std::size_t>(size));
}
template <class T>
void ensure_size(Vector<T>& v, Index size) {
  if (v.size() != size) v.resize(size);
}

template <class Scalar>
struct Int8LinearState final : BackendState {
  std::vector<std::int8_t> b;              // B's codes − 128
  std::vector<std::int32_t> s;             // the int32 GEMM
  std::vector<std::int64_t> sums;          // code column sums
  std::unique_ptr<GemmPlan> plans[3];      // forward, grad-input, grad-weight
  Epilogue<Scalar> epilogue;               // its per-row and per-column terms
  std::unique_ptr<BackendState> fallback;  // the simulated backend's, for unquantized operands
};

/// \brief What the int8 backend keeps per conv layer.
template <class Scalar>
struct Int8ConvState final : BackendState {
  bool coded = false;                            // the last forward ran on codes
  std::vector<std::int8_t> cols;                 // im2col(X̂) codes − 128, (patch) × (n·plane)
  std::vector<std::int8_t> sample, sample_cols;  // one sample's codes − 128, and its im2col
  Vector<std::int64_t> col_sums;                 // code sums of every column (s, p)
  Scalar sx = 0, zx = 0, pad_error = 0;          // X̂'s map, and P − z of the padding code
  std::vector<std::int8_t> g;                    // G's codes − 128 (grad-input)
  std::vector<Code> gk;                          // G's codes channel-major (grad-weight)
  std::vector<std::int32_t> s;                   // the int32 GEMM
  std::vector<std::int64_t> sums;                // code column sums
  std::vector<Scalar> dcols;                     // one sample's column gradient
  std::vector<Scalar> offset_columns;            // Ŵᵀ·𝟙, for BHQ's row offsets
  Vector<Scalar> offset;                         // col2im of it
  std::unique_ptr<GemmPlan> plans[3];
  Epilogue<Scalar> epilogue;
  std::unique_ptr<BackendState> fallback;
};

template <class Scalar>
void signed_codes(const Quantized<Scalar, Code>& q, std::vector<std::int8_t>& out) {
  ensure_size(out, q.codes.size());
  shift_to_signed(q.codes.data(), q.codes.size(), out.data());
}

/// \brief sums(j) = Σ_i codes[i·row + j] for j < cols, i < rows: column sums read row by row
/// (contiguously), in int64.
template <class T>
void column_sums(const T* codes, Index rows, Index cols, Index row,
                 std::vector<std::int64_t>& sums) {
  ensure_size(sums, cols);
  std::fill(sums.begin(), sums.end(), 0);
  for (Index i = 0; i < rows; ++i) {
    const T* p = codes + i * row;
    for (Index j = 0; j < cols; ++j) sums[static_cast<std::size_t>(j)] += p[j];
  }
}

/// \brief The same column sums as doubles.
template <class T>
void column_sums(const T* codes, Index rows, Index cols, Index row, std::vector<std::int64_t>& work,
                 Vector<double>& out) {
  column_sums(codes, rows, cols, row, work);
  ensure_size(out, cols);
  for (Index j = 0; j < cols; ++j) out(j) = double(work[static_cast<std::size_t>(j)]);
}

inline Index code_sum(const Code* p, Index count, Index stride) {
  Index sum = 0;
  for (Index i = 0; i < count; ++i) sum += p[i * stride];
  return sum;
}

// r(i) = Σ_j codes[i·row + j·col] for i < m, j < count.
template <class T>
void row_sums(const T* codes, Index m, Index count, Index row, Index col, Vector<double>& r) {
  ensure_size(r, m);
  for (Index i = 0; i < m; ++i) {
    std::int64_t sum = 0;
    const T* p = codes + i * row;
    if (col == 1) {
      for (Index j = 0; j < count; ++j) sum += p[j];
    } else {
      for (Index j = 0; j < count; ++j) sum += p[j * col];
    }
    r(i) = double(sum);
  }
}

// The maps of A's m rows: row i has the map of element at(i) of q.
template <class Scalar, class At>
void rows_of(const Quantized<Scalar, Code>& q, Index m, At at, Epilogue<Scalar>& e) {
  ensure_size(e.row_scale, m);
  ensure_size(e.row_zero, m);
  for (Index i = 0; i < m; ++i) {
    const auto [r, c] = at(i);
    const auto [scale, zero] = map_at(q, r, c);
    e.row_scale(i) = scale;
    e.row_zero(i) = zero;
  }
}

// The maps of B's n columns (column j: the map of element at(j) of q, code sum sum(j)) for a
// contraction of depth k.
template <class Scalar, class At, class Sum>
void columns_of(const Quantized<Scalar, Code>& q, Index n, Index k, At at, Sum sum,
                Epilogue<Scalar>& e) {
  ensure_size(e.col_scale, n);
  ensure_size(e.col_shift, n);
  ensure_size(e.col_sum, n);
  for (Index j = 0; j < n; ++j) {
    const auto [r, c] = at(j);
    const auto [scale, zero] = map_at(q, r, c);
    e.col_scale(j) = scale;
    e.col_shift(j) = 128.0 - zero;
    e.col_sum(j) = double(sum(j)) - double(k) * zero;
  }
}

// y.row(i) += c_i·v with c the transform's row offsets.
template <class Scalar, class V>
void add_row_offsets(const RowTransform<Scalar>& t, const V& v, MatrixRef<Scalar> y) {
  const Vector<Scalar>& c = t.row_offset();
  for (Index i = 0; i < y.rows(); ++i) {
    if (c(i) != 0) y.row(i).array() += c(i) * v.transpose();
  }
}

// im2col of X̂'s codes into state.cols (codes − 128, patch × (n·plane)), padding with the code
// nearest the zero point, and the code sums of every column.
template <class Scalar>
void columns(const Conv2dGeometry& geo, const Quantized<Scalar, Code>& qx,
             Int8ConvState<Scalar>& state) {
  const Index n = qx.rows(), patch = geo.patch_size(), plane = geo.out_plane();
  const Index wide = n * plane;
  const auto [sx, zx] = map_at(qx, 0, 0);
  const Scalar max_code = Scalar((1 << qx.bits) - 1);
  const Scalar pad = std::min(max_code, std::max(Scalar(0), std::nearbyint(zx)));
  state.sx = sx;
  state.zx = zx;
  const bool padded = geo.padding_height > 0 || geo.padding_width > 0;
  state.pad_error = padded ? pad - zx : Scalar(0);
  ensure_size(state.cols, patch * wide);
  ensure_size(state.dcols, patch * plane);
  std::vector<std::int8_t>& one = state.sample_cols;
  std::vector<std::int8_t>& signed_x = state.sample;
  ensure_size(one, patch * plane);
  ensure_size(signed_x, qx.cols());
  const auto pad_code = static_cast<std::int8_t>(int(pad) - 128);
  for (Index s = 0; s < n; ++s) {
    shift_to_signed(qx.codes.data() + s * qx.cols(), qx.cols(), signed_x.data());
    im2col(signed_x.data(), geo, one.data(), pad_code);
    for (Index t = 0; t < patch; ++t)
      std::copy_n(one.data() + t * plane, plane, state.cols.data() + t * wide + s * plane);
  }
  ensure_size(state.col_sums, wide);
  state.col_sums.setConstant(128 * patch);
  for (Index t = 0; t < patch; ++t) {
    const std::int8_t* row = state.cols.data() + t * wide;
    for (Index j = 0; j < wide; ++j) state.col_sums(j) += row[j];
  }
}

// M (patch × plane): 1 where tap t of output position p falls in the padding.
template <class Scalar>
Matrix<Scalar> pad_mask(const Conv2dGeometry& geo) {
  Matrix<Scalar> ones = Matrix<Scalar>::Ones(1, geo.in_channels * geo.in_height * geo.in_width);
  Matrix<Scalar> inside(geo.patch_size(), geo.out_plane());
  im2col(ones.data(), geo, inside.data());
  return Matrix<Scalar>::Ones(inside.rows(), inside.cols()) - inside;
}

// dw += Σ_s G_s·im2col(X̂_s)ᵀ in floating point, for an unquantized G (Mode::QAT).
template <class Scalar>
void float_conv_grad_weight(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                            MatrixRef<Scalar> dw, Int8ConvState<Scalar>& state) {
  const Index n = g.rows(), k = geo.out_channels, patch = geo.patch_size();
  const Index plane = geo.out_plane(), wide = n * plane;
  const Matrix<Scalar> mask = pad_mask<Scalar>(geo);
  const auto gv = g.value();
  Matrix<Scalar> cols(patch, plane);
  for (Index s = 0; s < n; ++s) {
    for (Index t = 0; t < patch; ++t) {
      const std::int8_t* row = state.cols.data() + t * wide + s * plane;
      for (Index p = 0; p < plane; ++p) {
        cols(t, p) = mask(t, p) != 0 ? Scalar(0) : state.sx * (Scalar(row[p] + 128) - state.zx);
      }
    }
    dw.noalias() +=
        ConstRowMap<Scalar>(gv.data() + s * gv.outerStride(), k, plane) * cols.transpose();
  }
}
}  // namespace detail
}  // namespace nn
}  // namespace fqt
