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

  std::size_t bytes() const {
    return bytes_total(row_scale, col_scale, row_zero, row_sum, col_shift, col_sum);
  }

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
/// Frees a buffer (a layer that stops keeping it gives its memory back).
template <class T>
void release(std::vector<T>& v) {
  std::vector<T>().swap(v);
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
  std::size_t bytes() const override {
    return bytes_total(b, s, sums, fallback) + epilogue.bytes();
  }
};

/// \brief What the transposed conv grad-input (fqt/nn/detail/int8_conv.hpp) keeps per layer.
template <class Scalar>
struct TransposedState {
  std::vector<Code> flipped;         // W' (C × k·kh·kw), taps (o, i', j')
  std::vector<std::int8_t> padded;   // one sample's padded G codes − 128 (code 0 in the padding)
  std::vector<std::int8_t> columns;  // every sample's im2col, (k·kh·kw) × H·Wp each
  std::vector<std::int32_t> tap_sum, code_sum;  // Σ_o of one padded sample; its sums over taps
  std::vector<Scalar> inside, wide;             // padded 1/0 image; one sample's wide result
  Matrix<Scalar> per_tap, outside;              // Σ_o Ŵ' per (c, tap); V (C × H·Wp)
  Matrix<Scalar> through;  // Ŵ' contracted with 𝟙 inside the image (C × H·Wp)
  Vector<Scalar> offset;   // Ŵ' contracted with 𝟙 (C·H·W), for BHQ's row offsets
};

/// Samples per piece when a conv layer recomputes its columns (ConvColumns::Recompute): the
/// batched GEMMs run on this many samples' columns at a time.
inline constexpr Index kColumnPiece = 8;

/// \brief What the int8 backend keeps per conv layer.
template <class Scalar>
struct Int8ConvState final : BackendState {
  bool coded = false;                      // the last forward ran on codes
  bool kept = false;                       // cols hold the whole batch (ConvColumns::Keep)
  std::vector<std::int8_t> cols;           // im2col(X̂) codes − 128, patch × (samples·plane)
  std::vector<std::int8_t> sample;         // one sample's codes − 128
  std::vector<std::int32_t> channel_sums;  // Σ_c of one padded sample's codes
  std::vector<std::int32_t> row_sum;       // their tap sums along one output row
  Vector<std::int64_t> col_sums;           // code sums of every column (s, p)
  Scalar sx = 0, zx = 0, pad_error = 0;    // X̂'s map, and P − z of the padding code
  std::vector<std::int8_t> g;              // G's codes − 128 (grad-input)
  std::vector<Code> gk;                    // a piece of G's codes channel-major (grad-weight)
  std::vector<std::int32_t> s;             // the int32 GEMM
  std::vector<std::int32_t> s_sum;         // grad-weight: the sum of a group's pieces' GEMMs
  std::vector<std::int64_t> g_sums, column_code_sums;  // grad-weight: a group's code sums
  std::vector<std::int64_t> sums;                      // code column sums
  std::vector<Scalar> dcols;                           // one sample's column gradient
  std::vector<Scalar> offset_columns;                  // Ŵᵀ·𝟙, for BHQ's row offsets
  TransposedState<Scalar> transposed;                  // the unit-stride grad-input's
  Matrix<Scalar> mask, per_tap, pad_term;   // the padding's taps, Σ_c Ŵ per tap, its term
  Matrix<Scalar> values;                    // Σ_s Ĝ_s; QAT's float columns
  Vector<Scalar> offset;                    // col2im of it
  std::unique_ptr<GemmPlan> plans[3];       // forward, grad-input, grad-weight
  std::unique_ptr<GemmPlan> tail_plans[3];  // the same for a shorter last piece of samples
  Epilogue<Scalar> epilogue;
  std::unique_ptr<BackendState> fallback;

  std::size_t bytes() const override {
    const TransposedState<Scalar>& t = transposed;
    return bytes_total(cols, sample, channel_sums, row_sum, col_sums, g, gk, s, s_sum, g_sums,
                       column_code_sums, sums, dcols, offset_columns, mask, per_tap, pad_term,
                       values, offset, fallback, t.flipped, t.padded, t.columns, t.tap_sum,
                       t.code_sum, t.inside, t.wide, t.per_tap, t.outside, t.through, t.offset) +
           epilogue.bytes();
  }
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

// im2col of the codes of X̂'s samples [first, first + count) into state.cols (codes − 128,
// patch × (count·plane)), padding with the code nearest the zero point, and the code sums of
// every column into state.col_sums: Σ over the taps of the channel sums of the padded sample,
// O(C·H·W + kh·kw·plane) per sample.
template <class Scalar>
void columns(const Conv2dGeometry& geo, const Quantized<Scalar, Code>& qx, Index first, Index count,
             Int8ConvState<Scalar>& state) {
  const Index plane = geo.out_plane(), wide = count * plane;
  const auto [sx, zx] = map_at(qx, 0, 0);
  const Scalar max_code = Scalar((1 << qx.bits) - 1);
  const Scalar pad = std::min(max_code, std::max(Scalar(0), std::nearbyint(zx)));
  state.sx = sx;
  state.zx = zx;
  const bool padded = geo.padding_height > 0 || geo.padding_width > 0;
  state.pad_error = padded ? pad - zx : Scalar(0);
  ensure_size(state.cols, geo.patch_size() * wide);
  std::vector<std::int8_t>& signed_x = state.sample;
  ensure_size(signed_x, qx.cols());
  const auto pad_code = static_cast<std::int8_t>(int(pad) - 128);
  const Index ph = geo.padding_height, pw = geo.padding_width;
  const Index hp = geo.in_height + 2 * ph, wp = geo.in_width + 2 * pw;
  const Index image = geo.in_height * geo.in_width;
  std::vector<std::int32_t>& sums = state.channel_sums;
  ensure_size(sums, hp * wp);
  if (state.col_sums.size() < wide) state.col_sums.resize(wide);  // grows only
  for (Index s = 0; s < count; ++s) {
    const Code* x = qx.codes.data() + (first + s) * qx.cols();
    shift_to_signed(x, qx.cols(), signed_x.data());
    im2col(signed_x.data(), geo, state.cols.data() + s * plane, pad_code, wide);
    std::fill(sums.begin(), sums.end(), static_cast<std::int32_t>(geo.in_channels * int(pad)));
    for (Index y = 0; y < geo.in_height; ++y) {
      std::int32_t* row = sums.data() + (y + ph) * wp + pw;
      std::fill_n(row, geo.in_width, 0);
      for (Index c = 0; c < geo.in_channels; ++c) {
        const Code* in = x + c * image + y * geo.in_width;
        for (Index i = 0; i < geo.in_width; ++i) row[i] += in[i];
      }
    }
    // Tap by tap along each output row, so that the sums run along contiguous rows.
    const Index wo = geo.out_width(), sw = geo.stride_width;
    ensure_size(state.row_sum, wo);
    for (Index oy = 0; oy < geo.out_height(); ++oy) {
      std::int32_t* acc = state.row_sum.data();
      std::fill_n(acc, wo, 0);
      for (Index i = 0; i < geo.kernel_height; ++i)
        for (Index j = 0; j < geo.kernel_width; ++j) {
          const std::int32_t* at = sums.data() + (oy * geo.stride_height + i) * wp + j;
          if (sw == 1) {
            for (Index ox = 0; ox < wo; ++ox) acc[ox] += at[ox];
          } else {
            for (Index ox = 0; ox < wo; ++ox) acc[ox] += at[ox * sw];
          }
        }
      for (Index ox = 0; ox < wo; ++ox) state.col_sums(s * plane + oy * wo + ox) = acc[ox];
    }
  }
}

// M (kh·kw × plane): 1 where tap (i, j) of output position p falls in the padding (for every
// input channel alike).
template <class Scalar>
void tap_mask(const Conv2dGeometry& geo, Matrix<Scalar>& m) {
  const Index ho = geo.out_height(), wo = geo.out_width();
  m.resize(geo.kernel_height * geo.kernel_width, ho * wo);
  for (Index i = 0; i < geo.kernel_height; ++i)
    for (Index j = 0; j < geo.kernel_width; ++j)
      for (Index oy = 0; oy < ho; ++oy) {
        const Index iy = oy * geo.stride_height - geo.padding_height + i;
        for (Index ox = 0; ox < wo; ++ox) {
          const Index ix = ox * geo.stride_width - geo.padding_width + j;
          const bool inside = iy >= 0 && iy < geo.in_height && ix >= 0 && ix < geo.in_width;
          m(i * geo.kernel_width + j, oy * wo + ox) = inside ? Scalar(0) : Scalar(1);
        }
      }
}

// dw += Σ_s G_s·im2col(X̂_s)ᵀ in floating point, for an unquantized G (Mode::QAT); X̂'s columns
// kept by the forward, or built again one sample at a time from qx (nullptr when kept).
template <class Scalar>
void float_conv_grad_weight(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                            const Quantized<Scalar, Code>* qx, MatrixRef<Scalar> dw,
                            Int8ConvState<Scalar>& state) {
  const Index n = g.rows(), k = geo.out_channels, patch = geo.patch_size();
  const Index plane = geo.out_plane(), taps = geo.kernel_height * geo.kernel_width;
  const Index wide = state.kept ? n * plane : plane;
  tap_mask(geo, state.mask);
  const auto gv = g.value();
  Matrix<Scalar>& cols = state.values;
  cols.resize(patch, plane);
  for (Index s = 0; s < n; ++s) {
    if (!state.kept) columns(geo, *qx, s, 1, state);
    const std::int8_t* sample = state.cols.data() + (state.kept ? s * plane : 0);
    for (Index t = 0; t < patch; ++t) {
      const std::int8_t* row = sample + t * wide;
      for (Index p = 0; p < plane; ++p) {
        cols(t, p) =
            state.mask(t % taps, p) != 0 ? Scalar(0) : state.sx * (Scalar(row[p] + 128) - state.zx);
      }
    }
    dw.noalias() +=
        ConstRowMap<Scalar>(gv.data() + s * gv.outerStride(), k, plane) * cols.transpose();
  }
}

// The padded taps took code P instead of the zero point z, adding s_x·(P − z)·Ŵ·M per sample to
// the forward: that term, from Σ_c Ŵ per tap, O(k·C·kh·kw + k·kh·kw·plane).
template <class Scalar>
void forward_pad_term(const Conv2dGeometry& geo, const Quantized<Scalar, Code>& qw,
                      Int8ConvState<Scalar>& state) {
  const Index k = geo.out_channels, taps = geo.kernel_height * geo.kernel_width;
  const auto [sw, zw] = map_at(qw, 0, 0);
  tap_mask(geo, state.mask);
  state.per_tap.resize(k, taps);
  for (Index o = 0; o < k; ++o)
    for (Index r = 0; r < taps; ++r) {
      std::int64_t sum = 0;
      for (Index c = 0; c < geo.in_channels; ++c) sum += qw.codes(o, c * taps + r);
      state.per_tap(o, r) = sw * (Scalar(sum) - Scalar(geo.in_channels) * zw);
    }
  state.pad_term.noalias() = (state.sx * state.pad_error) * state.per_tap * state.mask;
}

// The grad-weight's share of the padded taps, s_x·(P − z)·(Σ_s Ĝ_s)·Mᵀ, subtracted from dw: one
// term per (o, tap), the same for every input channel.
template <class Scalar>
void subtract_grad_weight_pad_term(const Conv2dGeometry& geo, const Quantized<Scalar, Code>& qg,
                                   MatrixRef<Scalar> dw, Int8ConvState<Scalar>& state) {
  const Index n = qg.rows(), k = geo.out_channels, plane = geo.out_plane();
  const Index taps = geo.kernel_height * geo.kernel_width;
  tap_mask(geo, state.mask);
  column_sums(qg.codes.data(), n, k * plane, k * plane, state.sums);
  state.values.resize(k, plane);
  for (Index o = 0; o < k; ++o) {
    const auto [sg, zg] = map_at(qg, 0, o * plane);
    for (Index p = 0; p < plane; ++p) {
      const auto sum = state.sums[static_cast<std::size_t>(o * plane + p)];
      state.values(o, p) = sg * (Scalar(sum) - Scalar(n) * zg);
    }
  }
  state.per_tap.noalias() = (state.sx * state.pad_error) * state.values * state.mask.transpose();
  for (Index c = 0; c < geo.in_channels; ++c) dw.middleCols(c * taps, taps) -= state.per_tap;
}
}  // namespace detail
}  // namespace nn
}  // namespace fqt
