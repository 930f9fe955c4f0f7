#pragma once
/// \file
/// \brief The int8 backend's conv kernels: the grad-input for unit strides as a transposed
/// convolution (one integer GEMM per sample straight into ∇X, with no column gradient and no
/// col2im), and one piece of samples of the grad-weight.
///
/// With stride 1, ∇X_s(c, y, x) = Σ_{o,i,j} Ŵ(o, c, i, j)·Ĝ_s(o, y + ph − i, x + pw − j): a
/// convolution of Ĝ_s, padded by kh − 1 − ph and kw − 1 − pw, with the flipped kernel
/// W'(c, (o, i', j')) = Ŵ(o, c, kh − 1 − i', kw − 1 − j'). On the padded image (Hp × Wp, row
/// length Wp = W + kw − 1) the im2col row of tap (o, i', j') for the "wide" output positions
/// y·Wp + x (x < Wp) is one contiguous slice starting at o·Hp·Wp + i'·Wp + j', so the columns are
/// copied slice by slice; the Wp − W wrapped positions of each output row are computed and
/// dropped (Wp/W times the work of the GEMM, e.g. 18/16).
///
/// The padding takes code 0, whose terms s_g·(a − z_w)·s_w·(0 − z_g) the epilogue would count;
/// they are added back as s_g·z_g·V with V(c, p) = Σ of Ŵ' over the taps that fall in the
/// padding at p (nonzero only near the border), from the per-tap sums of Ŵ' over o.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/integer_gemm.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/detail/int8_kernels.hpp"
#include "fqt/quant/quantized.hpp"

namespace fqt {
namespace nn {
namespace detail {

/// \brief True when the conv grad-input runs as a transposed convolution: unit strides and
/// paddings smaller than the kernel.
inline bool transposes_directly(const Conv2dGeometry& g) {
  return g.stride_height == 1 && g.stride_width == 1 && g.padding_height < g.kernel_height &&
         g.padding_width < g.kernel_width;
}

/// \brief The padded image of the transposed convolution: Hp × Wp, and the offset of tap (i', j').
struct TransposedWindow {
  Index pad_top, pad_left, height, width, out_height, out_width;
  TransposedWindow(const Conv2dGeometry& g)  // NOLINT(google-explicit-constructor)
      : pad_top(g.kernel_height - 1 - g.padding_height),
        pad_left(g.kernel_width - 1 - g.padding_width),
        height(g.out_height() + 2 * pad_top),
        width(g.out_width() + 2 * pad_left),
        out_height(g.in_height),
        out_width(g.in_width) {}
  /// Elements of one padded channel, with the slack that the last tap's slice reads past it.
  Index channel(const Conv2dGeometry& g) const { return height * width + g.kernel_width - 1; }
  /// Wide output positions, H·Wp.
  Index wide() const { return out_height * width; }
  bool padded() const { return pad_top > 0 || pad_left > 0; }
};

/// \brief Copies one channel of codes (oh × ow), shifted by −128, into the middle of a padded
/// channel that holds code 0 (−128) elsewhere.
inline void pad_channel(const Code* src, const Conv2dGeometry& g, const TransposedWindow& t,
                        std::int8_t* dst) {
  std::fill(dst, dst + t.channel(g), std::int8_t(-128));
  const Index oh = g.out_height(), ow = g.out_width();
  for (Index y = 0; y < oh; ++y) {
    std::int8_t* row = dst + (y + t.pad_top) * t.width + t.pad_left;
    const Code* in = src + y * ow;
    for (Index x = 0; x < ow; ++x) row[x] = static_cast<std::int8_t>(int(in[x]) - 128);
  }
}

/// \brief ∇X = T⁻¹(Q_b1(G)) ⊛ᵀ Ŵ for a geometry that `transposes_directly`, into dx (n × C·H·W);
/// `s` holds the int32 GEMM, `plan` the engine's plan, `e` the epilogue.
template <class Scalar>
void transposed_grad_input(const IntegerGemm& engine, const Conv2dGeometry& geo,
                           const Quantized<Scalar, Code>& qg, const Quantized<Scalar, Code>& qw,
                           MatrixRef<Scalar> dx, Index piece, TransposedState<Scalar>& state,
                           std::vector<std::int32_t>& s, std::unique_ptr<GemmPlan>& plan,
                           std::unique_ptr<GemmPlan>& tail_plan, Epilogue<Scalar>& e) {
  const Index n = qg.rows(), k = geo.out_channels, c = geo.in_channels;
  const Index kh = geo.kernel_height, kw = geo.kernel_width, taps = kh * kw, depth = k * taps;
  const Index plane = geo.out_plane(), image = geo.in_height * geo.in_width;
  const TransposedWindow t(geo);
  const Index wide = t.wide(), channel = t.channel(geo);
  check_depth(depth, qw.bits, "nn::Int8Backend::conv_grad_input", "W'·im2col(Q_b1(G))");

  // A = W' (C × depth) for every sample: W'(c, (o, i', j')) = Ŵ(o, (c, kh−1−i', kw−1−j')).
  ensure_size(state.flipped, c * depth);
  for (Index o = 0; o < k; ++o)
    for (Index ci = 0; ci < c; ++ci)
      for (Index i = 0; i < kh; ++i)
        for (Index j = 0; j < kw; ++j)
          state.flipped[static_cast<std::size_t>(ci * depth + (o * kh + i) * kw + j)] =
              qw.codes(o, (ci * kh + kh - 1 - i) * kw + kw - 1 - j);
  const auto [sw, zw] = map_at(qw, 0, 0);
  rows_of(
      qw, c, [](Index) { return std::pair<Index, Index>(0, 0); }, e);
  row_sums(state.flipped.data(), c, depth, depth, 1, e.row_sum);

  // Σ_o Ŵ' per tap, and the padded 1/0 image: V = per_tap · (taps of 1 − inside).
  state.per_tap.resize(c, taps);
  for (Index ci = 0; ci < c; ++ci)
    for (Index r = 0; r < taps; ++r) {
      std::int64_t sum = 0;
      for (Index o = 0; o < k; ++o)
        sum += state.flipped[static_cast<std::size_t>(ci * depth + o * taps + r)];
      state.per_tap(ci, r) = sw * (Scalar(sum) - Scalar(k) * zw);
    }
  ensure_size(state.inside, channel);
  std::fill(state.inside.begin(), state.inside.end(), Scalar(0));
  for (Index y = 0; y < geo.out_height(); ++y)
    std::fill_n(state.inside.data() + (y + t.pad_top) * t.width + t.pad_left, geo.out_width(),
                Scalar(1));
  const auto tap_row = [&](const Scalar* img, Index r) {
    return Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(
        img + (r / kw) * t.width + r % kw, wide);
  };
  if (t.padded()) {
    state.outside.setZero(c, wide);
    for (Index r = 0; r < taps; ++r)
      state.outside.noalias() +=
          state.per_tap.col(r) * (Scalar(1) - tap_row(state.inside.data(), r).array()).matrix();
  }

  // B_s: tap (o, i', j') of wide position q is the padded G_s at o·channel + i'·Wp + j' + q.
  // Pieces of `piece` samples: the columns of one piece at a time.
  ensure_size(state.padded, k * channel);
  ensure_size(state.tap_sum, channel);
  ensure_size(state.code_sum, wide);
  ensure_size(state.wide, c * wide);
  ensure_size(e.col_scale, wide);
  ensure_size(e.col_shift, wide);
  ensure_size(e.col_sum, wide);
  for (Index first = 0; first < n; first += piece) {
    const Index count = std::min(piece, n - first);
    ensure_size(state.columns, count * depth * wide);
    for (Index smp = 0; smp < count; ++smp) {
      const Code* g = qg.codes.data() + (first + smp) * k * plane;
      for (Index o = 0; o < k; ++o)
        pad_channel(g + o * plane, geo, t, state.padded.data() + o * channel);
      std::int8_t* cols = state.columns.data() + smp * depth * wide;
      for (Index o = 0; o < k; ++o)
        for (Index i = 0; i < kh; ++i)
          for (Index j = 0; j < kw; ++j)
            std::copy_n(state.padded.data() + o * channel + i * t.width + j, wide,
                        cols + ((o * kh + i) * kw + j) * wide);
    }
    GemmShape shape{
        count, c, wide, depth, {0, depth, 1}, {depth * wide, wide, 1}, {c * wide, wide, 1}};
    ensure_size(s, count * c * wide);
    engine.multiply(shape, state.flipped.data(), state.columns.data(), s.data(),
                    count == piece ? plan : tail_plan);

    // Per sample: the epilogue over the wide positions, V's share, then the W valid columns.
    for (Index local = 0; local < count; ++local) {
      const Index smp = first + local;
      const auto [sg, zg] = map_at(qg, smp, 0);
      const Code* g = qg.codes.data() + smp * k * plane;
      std::fill(state.tap_sum.begin(), state.tap_sum.end(), 0);
      for (Index o = 0; o < k; ++o) {
        const Code* ch = g + o * plane;
        for (Index y = 0; y < geo.out_height(); ++y) {
          std::int32_t* row = state.tap_sum.data() + (y + t.pad_top) * t.width + t.pad_left;
          for (Index x = 0; x < geo.out_width(); ++x) row[x] += ch[y * geo.out_width() + x];
        }
      }
      std::fill(state.code_sum.begin(), state.code_sum.end(), 0);
      for (Index r = 0; r < taps; ++r) {
        const std::int32_t* src = state.tap_sum.data() + (r / kw) * t.width + r % kw;
        for (Index q = 0; q < wide; ++q) state.code_sum[static_cast<std::size_t>(q)] += src[q];
      }
      e.col_scale.setConstant(sg);
      e.col_shift.setConstant(128.0 - zg);
      for (Index q = 0; q < wide; ++q)
        e.col_sum(q) = double(state.code_sum[static_cast<std::size_t>(q)]) - double(depth) * zg;
      e.apply(s.data() + local * c * wide, wide, state.wide.data(), wide, false, depth,
              max_code(qw));
      auto result = Eigen::Map<Matrix<Scalar>>(state.wide.data(), c, wide);
      if (t.padded() && zg != 0) result += (sg * zg) * state.outside;
      Scalar* out = dx.data() + smp * dx.outerStride();
      for (Index ci = 0; ci < c; ++ci)
        for (Index y = 0; y < t.out_height; ++y)
          std::copy_n(state.wide.data() + ci * wide + y * t.width, t.out_width,
                      out + (ci * t.out_height + y) * t.out_width);
    }
  }
  if (!qg.transform) return;
  // T⁻¹(Z) feeds a map linear per row: T⁻¹'s linear part on the result rows, then c_s times the
  // transposed convolution of 𝟙 (inside the image) with Ŵ'.
  qg.transform->apply_inverse_linear(dx);
  Matrix<Scalar>& ones_image = state.through;
  ones_image.setZero(c, wide);
  for (Index r = 0; r < taps; ++r)
    ones_image.noalias() += state.per_tap.col(r) * tap_row(state.inside.data(), r);
  ensure_size(state.offset, c * image);
  for (Index ci = 0; ci < c; ++ci)
    for (Index y = 0; y < t.out_height; ++y)
      for (Index x = 0; x < t.out_width; ++x)
        state.offset((ci * t.out_height + y) * t.out_width + x) = ones_image(ci, y * t.width + x);
  add_row_offsets(*qg.transform, state.offset.array(), dx);
}

// Samples [first, first + size) of a grad-weight group: G's codes channel-major (k, s, p), so
// that one GEMM contracts over (s, p); the piece's columns (built again under Recompute); the
// int32 GEMM G·columnsᵀ into state.s; the piece's code sums added to the group's.
template <class Scalar>
void grad_weight_piece(const IntegerGemm& engine, const Conv2dGeometry& geo,
                       const Quantized<Scalar, Code>& qg, const Quantized<Scalar, Code>* qx,
                       Index n, Index first, Index size, bool full, Int8ConvState<Scalar>& state) {
  const Index k = geo.out_channels, patch = geo.patch_size(), plane = geo.out_plane();
  const Index span = size * plane;
  ensure_size(state.gk, k * span);
  for (Index s = 0; s < size; ++s)
    for (Index c = 0; c < k; ++c)
      std::copy_n(qg.codes.data() + ((first + s) * k + c) * plane, plane,
                  state.gk.data() + c * span + s * plane);
  if (!state.kept) columns(geo, *qx, first, size, state);
  // The piece's columns: at sample `first` of the whole batch's, or its own.
  const std::int8_t* cols = state.cols.data() + (state.kept ? first * plane : 0);
  const Index ldc = state.kept ? n * plane : span;
  // A = G (k × span), B = columnsᵀ (span × patch).
  GemmShape shape{1, k, patch, span, {0, span, 1}, {0, 1, ldc}, {0, patch, 1}};
  ensure_size(state.s, k * patch);
  engine.multiply(shape, state.gk.data(), cols, state.s.data(),
                  full ? state.plans[2] : state.tail_plans[2]);
  for (Index c = 0; c < k; ++c) {
    const Code* row = state.gk.data() + c * span;
    std::int64_t sum = 0;
    for (Index j = 0; j < span; ++j) sum += row[j];
    state.g_sums[static_cast<std::size_t>(c)] += sum;
  }
  for (Index t = 0; t < patch; ++t) {
    std::int64_t sum = 0;
    const std::int8_t* row = cols + t * ldc;
    for (Index j = 0; j < span; ++j) sum += row[j] + 128;
    state.column_code_sums[static_cast<std::size_t>(t)] += sum;
  }
}

}  // namespace detail
}  // namespace nn
}  // namespace fqt
