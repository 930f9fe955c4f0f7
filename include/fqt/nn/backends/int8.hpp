#pragma once
/// \file
/// \brief The int8 backend: the forward and both backward products of linear and conv as integer
/// GEMMs on the quantizers' codes (u8 × s8 → s32, every bit width 1–8 on the same path), with the
/// affine corrections of the zero points, the scales applied in the epilogue and BHQ's T⁻¹
/// applied to the N-row result in O(N·D). Never dequantize-then-float-GEMM.
///
/// With A's codes a ∈ [0, 2^b − 1] (maps s_a, z_a per row of A) and B's codes b (maps s_b, z_b per
/// column of B), B is fed as b − 128 (signed) and
///   Σ_k s_a(a − z_a)·s_b(b − z_b) = s_a·s_b·(S + r_a·(128 − z_b) − z_a·(c_b − K·z_b)),
/// where S = Σ_k a·(b − 128) is the int32 GEMM, r_a the row sums of A's codes and c_b the column
/// sums of B's. S is exact while K ≤ max_exact_depth(2^b − 1); longer contractions over the
/// samples are split into exact pieces summed in a fixed order, a longer feature contraction
/// throws std::domain_error. Only the epilogue rounds, so results do not depend on the number
/// of threads or on the engine.
///
/// Conv runs im2col on the codes. Padding takes the code P = round(z) of the input's zero point;
/// when z is not an integer (an input quantized on a free grid whose range excludes 0), the
/// padded taps' contribution s·(P − z)·(Ŵ·M) is subtracted, M the padding mask of the geometry.
/// With unit strides the grad-input is a transposed convolution, one GEMM per sample straight
/// into ∇X (fqt/nn/detail/int8_conv.hpp); other strides form the column gradient and col2im it.
///
/// Products on unquantized operands (Mode::Exact; the gradient in Mode::QAT) run in floating point
/// as the simulated backend computes them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/gemm.hpp"
#include "fqt/core/integer_gemm.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/backends/simulated.hpp"
#include "fqt/nn/detail/im2col.hpp"
#include "fqt/nn/detail/int8_conv.hpp"
#include "fqt/nn/detail/int8_kernels.hpp"

namespace fqt {
namespace nn {

/// \brief The int8 backend over an integer GEMM engine (the portable one by default; oneDNN's in
/// fqt/nn/backends/dnnl.hpp).
class Int8Backend final : public BackendFor<Int8Backend> {
 public:
  /// \brief What the int8 backend keeps per linear layer (in LinearCache::state).
  template <class Scalar>
  using LinearState = detail::Int8LinearState<Scalar>;
  /// \brief What the int8 backend keeps per conv layer (in Conv2dCache::state).
  template <class Scalar>
  using ConvState = detail::Int8ConvState<Scalar>;
  explicit Int8Backend(const IntegerGemm& engine = portable_integer_gemm())
      : engine_(&engine), name_(std::string("int8-") + engine.name()) {}

  const char* name() const override { return name_.c_str(); }
  bool multiplies_codes() const override { return true; }
  /// \brief The integer GEMM engine.
  const IntegerGemm& engine() const { return *engine_; }

  // ---- linear -------------------------------------------------------------------------------

  template <class Scalar>
  void linear_forward_impl(const Operand<Scalar>& x, const Operand<Scalar>& w, MatrixRef<Scalar> y,
                           std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<LinearState<Scalar>>(slot);
    if (!x.coded() || !w.coded()) {
      return simulated_backend().linear_forward(x, w, y, state.fallback);
    }
    constexpr const char* kWhere = "nn::Int8Backend::linear_forward";
    const auto &qx = x.quantized(), &qw = w.quantized();
    const Index n = qx.rows(), in = qx.cols(), out = qw.rows();
    detail::check_depth(in, qx.bits, kWhere, "Q_f(X)·Q_f(W)ᵀ");
    detail::signed_codes(qw, state.b);
    // A = X (n × in), B = Ŵᵀ (in × out) read from Ŵ's rows.
    GemmShape shape{1, n, out, in, {0, in, 1}, {0, 1, in}, {0, out, 1}};
    multiply(shape, qx.codes.data(), state.b.data(), state.s, state.plans[0]);
    auto& e = state.epilogue;
    detail::rows_of(
        qx, n, [](Index i) { return std::pair<Index, Index>(i, 0); }, e);
    detail::row_sums(qx.codes.data(), n, in, in, 1, e.row_sum);
    detail::columns_of(
        qw, out, in, [](Index j) { return std::pair<Index, Index>(j, 0); },
        [&](Index j) { return detail::code_sum(qw.codes.data() + j * in, in, 1); }, e);
    e.apply(state.s.data(), out, y.data(), y.outerStride(), false, in, detail::max_code(qx));
  }

  template <class Scalar>
  void linear_grad_input_impl(const Operand<Scalar>& g, const Operand<Scalar>& w,
                              MatrixRef<Scalar> dx, std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<LinearState<Scalar>>(slot);
    if (!g.coded() || !w.coded()) {
      return simulated_backend().linear_grad_input(g, w, dx, state.fallback);
    }
    constexpr const char* kWhere = "nn::Int8Backend::linear_grad_input";
    const auto &qg = g.quantized(), &qw = w.quantized();
    detail::require_factoring(qg, 1, kWhere, "Q_b1(G)");
    const Index n = qg.rows(), out = qg.cols(), in = qw.cols();
    detail::check_depth(out, qg.bits, kWhere, "Q_b1(G)·Ŵ");
    detail::signed_codes(qw, state.b);
    GemmShape shape{1, n, in, out, {0, out, 1}, {0, in, 1}, {0, in, 1}};
    multiply(shape, qg.codes.data(), state.b.data(), state.s, state.plans[1]);
    auto& e = state.epilogue;
    detail::rows_of(
        qg, n, [](Index i) { return std::pair<Index, Index>(i, 0); }, e);
    detail::row_sums(qg.codes.data(), n, out, out, 1, e.row_sum);
    detail::column_sums(qw.codes.data(), out, in, in, state.sums);
    detail::columns_of(
        qw, in, out, [](Index) { return std::pair<Index, Index>(0, 0); },
        [&](Index j) { return state.sums[static_cast<std::size_t>(j)]; }, e);
    e.apply(state.s.data(), in, dx.data(), dx.outerStride(), false, out, detail::max_code(qg));
    if (qg.transform) {
      // T⁻¹(Z)·Ŵ = apply_inverse_linear(Z·Ŵ) + c·(𝟙ᵀŴ); 𝟙ᵀŴ from Ŵ's column code sums.
      qg.transform->apply_inverse_linear(dx);
      // The epilogue's column terms are c_b − out·z_w, so (𝟙ᵀŴ)_j = s_w·col_sum(j).
      const Scalar sw = detail::map_at(qw, 0, 0).first;
      detail::add_row_offsets(*qg.transform, sw * e.col_sum.array().template cast<Scalar>(), dx);
    }
  }

  template <class Scalar>
  void linear_grad_weight_impl(const Operand<Scalar>& g, const Operand<Scalar>& x,
                               MatrixRef<Scalar> dw, std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<LinearState<Scalar>>(slot);
    if (!g.coded() || !x.coded()) {
      return simulated_backend().linear_grad_weight(g, x, dw, state.fallback);
    }
    constexpr const char* kWhere = "nn::Int8Backend::linear_grad_weight";
    const auto &qg = g.quantized(), &qx = x.quantized();
    detail::require_factoring(qg, 0, kWhere, "Q_b2(G)");
    const Index n = qg.rows(), out = qg.cols(), in = qx.cols();
    detail::signed_codes(qx, state.b);
    auto& e = state.epilogue;
    // The contraction runs over the samples: pieces of at most `depth` rows, each exact.
    const Index depth = std::max<Index>(1, max_exact_depth((1 << qg.bits) - 1));
    for (Index start = 0; start < n; start += depth) {
      const Index rows = std::min(depth, n - start);
      // A = Q_b2(G)ᵀ (out × rows) read from G's rows, B = X̂ (rows × in).
      GemmShape shape{1, out, in, rows, {0, 1, out}, {0, in, 1}, {0, in, 1}};
      multiply(shape, qg.codes.data() + start * out, state.b.data() + start * in, state.s,
               state.plans[2]);
      detail::rows_of(
          qg, out, [](Index i) { return std::pair<Index, Index>(0, i); }, e);
      // Σ over the piece's samples: G's and X̂'s column sums, read row by row.
      detail::column_sums(qg.codes.data() + start * out, rows, out, out, state.sums, e.row_sum);
      detail::column_sums(qx.codes.data() + start * in, rows, in, in, state.sums);
      detail::columns_of(
          qx, in, rows, [](Index) { return std::pair<Index, Index>(0, 0); },
          [&](Index j) { return state.sums[static_cast<std::size_t>(j)]; }, e);
      e.apply(state.s.data(), in, dw.data(), dw.outerStride(), true, rows, detail::max_code(qg));
    }
  }

  // ---- conv ---------------------------------------------------------------------------------

  template <class Scalar>
  void conv_forward_impl(const Conv2dGeometry& geo, const Operand<Scalar>& x,
                         const Operand<Scalar>& w, MatrixRef<Scalar> y, ConvColumns keep,
                         std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<ConvState<Scalar>>(slot);
    state.coded = x.coded() && w.coded();
    if (!state.coded) return simulated_backend().conv_forward(geo, x, w, y, keep, state.fallback);
    constexpr const char* kWhere = "nn::Int8Backend::conv_forward";
    const auto &qx = x.quantized(), &qw = w.quantized();
    const Index n = qx.rows(), k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane();
    detail::check_depth(patch, qw.bits, kWhere, "Q_f(W)·im2col(Q_f(X))");
    state.kept = keep == ConvColumns::Keep;
    if (!state.kept) {
      // Give back the whole batch's columns a Keep pass left behind.
      const auto need = static_cast<std::size_t>(patch * std::min(n, detail::kColumnPiece) * plane);
      if (state.cols.capacity() > need) detail::release(state.cols);
    }
    auto& e = state.epilogue;
    detail::rows_of(
        qw, k, [](Index) { return std::pair<Index, Index>(0, 0); }, e);
    detail::row_sums(qw.codes.data(), k, patch, patch, 1, e.row_sum);
    detail::ensure_size(e.col_scale, plane);
    detail::ensure_size(e.col_shift, plane);
    detail::ensure_size(e.col_sum, plane);
    // Keep: the whole batch's columns and one GEMM; Recompute: pieces of kColumnPiece samples.
    const Index piece = state.kept ? n : std::min(n, detail::kColumnPiece);
    for (Index start = 0; start < n; start += piece) {
      const Index count = std::min(piece, n - start), wide = count * plane;
      detail::columns(geo, qx, start, count, state);
      // A = Ŵ (k × patch) for every sample, B_s = columns of sample s (patch × plane).
      GemmShape shape{
          count, k, plane, patch, {0, patch, 1}, {plane, wide, 1}, {k * plane, plane, 1}};
      detail::ensure_size(state.s, count * k * plane);
      engine_->multiply(shape, qw.codes.data(), state.cols.data(), state.s.data(),
                        count == piece ? state.plans[0] : state.tail_plans[0]);
      const auto [sx, zx] = detail::map_at(qx, 0, 0);
      e.col_scale.setConstant(sx);
      e.col_shift.setConstant(128.0 - zx);
      for (Index s = 0; s < count; ++s) {
        for (Index p = 0; p < plane; ++p)
          e.col_sum(p) = double(state.col_sums(s * plane + p)) - double(patch) * zx;
        e.apply(state.s.data() + s * k * plane, plane, y.data() + (start + s) * y.outerStride(),
                plane, false, patch, detail::max_code(qw));
      }
    }
    if (state.pad_error != 0) {
      detail::forward_pad_term(geo, qw, state);
      for (Index s = 0; s < n; ++s) {
        detail::RowMap<Scalar>(y.data() + s * y.outerStride(), k, plane) -= state.pad_term;
      }
    }
  }

  template <class Scalar>
  void conv_grad_input_impl(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                            const Operand<Scalar>& w, MatrixRef<Scalar> dx,
                            std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<ConvState<Scalar>>(slot);
    if (!g.coded() || !w.coded()) {
      return simulated_backend().conv_grad_input(geo, g, w, dx, state.fallback);
    }
    constexpr const char* kWhere = "nn::Int8Backend::conv_grad_input";
    const auto &qg = g.quantized(), &qw = w.quantized();
    detail::require_factoring(qg, 1, kWhere, "Q_b1(G)");
    // Keep: the whole batch in one GEMM; Recompute: pieces of kColumnPiece samples.
    const Index n = qg.rows(), piece = state.kept ? n : std::min(n, detail::kColumnPiece);
    if (detail::transposes_directly(geo)) {
      return detail::transposed_grad_input(*engine_, geo, qg, qw, dx, piece, state.transposed,
                                           state.s, state.plans[1], state.tail_plans[1],
                                           state.epilogue);
    }
    // Other strides: the column gradient Ŵᵀ·Q_b1(G), then col2im.
    const Index k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane();
    detail::check_depth(k, qw.bits, kWhere, "Ŵᵀ·Q_b1(G)");
    auto& e = state.epilogue;
    detail::rows_of(
        qw, patch, [](Index) { return std::pair<Index, Index>(0, 0); }, e);
    detail::column_sums(qw.codes.data(), k, patch, patch, state.sums, e.row_sum);
    detail::ensure_size(state.dcols, patch * plane);
    detail::ensure_size(e.col_scale, plane);
    detail::ensure_size(e.col_shift, plane);
    detail::ensure_size(e.col_sum, plane);
    for (Index first = 0; first < n; first += piece) {
      const Index count = std::min(piece, n - first);
      detail::ensure_size(state.g, count * k * plane);
      detail::shift_to_signed(qg.codes.data() + first * k * plane, count * k * plane,
                              state.g.data());
      // A = Ŵᵀ (patch × k) for every sample, B_s = G_s (k × plane).
      GemmShape shape{
          count, patch, plane, k, {0, 1, patch}, {k * plane, plane, 1}, {patch * plane, plane, 1}};
      detail::ensure_size(state.s, count * patch * plane);
      engine_->multiply(shape, qw.codes.data(), state.g.data(), state.s.data(),
                        count == piece ? state.plans[1] : state.tail_plans[1]);
      for (Index local = 0; local < count; ++local) {
        const Index s = first + local;
        const auto [sg, zg] = detail::map_at(qg, s, 0);
        e.col_scale.setConstant(sg);
        e.col_shift.setConstant(128.0 - zg);
        const Code* gs = qg.codes.data() + s * k * plane;
        detail::column_sums(gs, k, plane, plane, state.sums);
        for (Index p = 0; p < plane; ++p)
          e.col_sum(p) = double(state.sums[static_cast<std::size_t>(p)]) - double(k) * zg;
        e.apply(state.s.data() + local * patch * plane, plane, state.dcols.data(), plane, false, k,
                detail::max_code(qw));
        Scalar* xs = dx.data() + s * dx.outerStride();
        std::fill(xs, xs + geo.input_size(), Scalar(0));
        detail::col2im_add(state.dcols.data(), geo, xs);
      }
    }
    if (qg.transform) {
      // T⁻¹(Z) feeds a map linear per row: apply T⁻¹'s linear part to the result rows, then add
      // c_s·col2im(Ŵᵀ·𝟙) for the offsets.
      qg.transform->apply_inverse_linear(dx);
      // Ŵᵀ·𝟙 from Ŵ's column code sums (held in the epilogue's row terms: r_t of Wᵀ's rows).
      const auto [sw, zw] = detail::map_at(qw, 0, 0);
      auto& image = state.offset_columns;
      detail::ensure_size(image, patch * plane);
      for (Index t = 0; t < patch; ++t) {
        std::fill_n(image.data() + t * plane, plane, sw * Scalar(e.row_sum(t) - double(k) * zw));
      }
      detail::ensure_size(state.offset, geo.input_size());
      state.offset.setZero();
      detail::col2im_add(image.data(), geo, state.offset.data());
      detail::add_row_offsets(*qg.transform, state.offset.array(), dx);
    }
  }

  template <class Scalar>
  void conv_grad_weight_impl(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                             const Operand<Scalar>& x, MatrixRef<Scalar> dw,
                             std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<ConvState<Scalar>>(slot);
    if (!state.coded) return simulated_backend().conv_grad_weight(geo, g, x, dw, state.fallback);
    const Index n = g.rows(), k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane();
    // Recompute: the columns are built again, piece by piece, from X̂'s codes.
    const Quantized<Scalar, Code>* qx = state.kept ? nullptr : &x.quantized();
    if (!g.coded()) return detail::float_conv_grad_weight(geo, g, qx, dw, state);
    constexpr const char* kWhere = "nn::Int8Backend::conv_grad_weight";
    const auto& qg = g.quantized();
    detail::require_factoring(qg, 0, kWhere, "Q_b2(G)");
    check(qg.granularity != Granularity::PerColumn, kWhere,
          "Q_b2(G) has one scale per (k, oy, ox), which varies along the contraction");
    detail::check_depth(plane, qg.bits, kWhere, "one sample of Q_b2(G)·im2col(X̂)ᵀ");
    auto& e = state.epilogue;
    detail::rows_of(
        qg, k, [plane](Index c) { return std::pair<Index, Index>(0, c * plane); }, e);
    // Groups of samples whose int32 sum is exact, one epilogue each; Recompute splits a group
    // into pieces of kColumnPiece samples and adds their int32 GEMMs and code sums exactly, so
    // that both give the same bits.
    const Index group =
        std::min(n, std::max<Index>(1, max_exact_depth((1 << qg.bits) - 1) / plane));
    const Index piece = state.kept ? group : std::min(group, detail::kColumnPiece);
    detail::ensure_size(e.col_scale, patch);
    detail::ensure_size(e.col_shift, patch);
    detail::ensure_size(e.col_sum, patch);
    e.col_scale.setConstant(state.sx);
    e.col_shift.setConstant(128.0 - state.zx);
    detail::ensure_size(state.g_sums, k);
    detail::ensure_size(state.column_code_sums, patch);
    for (Index start = 0; start < n; start += group) {
      const Index count = std::min(group, n - start), depth = count * plane;
      const bool summed = piece < count;  // several pieces: their GEMMs are added in s_sum
      std::fill(state.g_sums.begin(), state.g_sums.end(), 0);
      std::fill(state.column_code_sums.begin(), state.column_code_sums.end(), 0);
      for (Index first = start; first < start + count; first += piece) {
        const Index size = std::min(piece, start + count - first);
        if (summed && first == start) {
          detail::ensure_size(state.s_sum, k * patch);
          std::fill(state.s_sum.begin(), state.s_sum.end(), 0);
        }
        detail::grad_weight_piece(*engine_, geo, qg, qx, n, first, size, size == piece, state);
        if (summed) {
          for (std::size_t i = 0; i < state.s.size(); ++i) state.s_sum[i] += state.s[i];
        }
      }
      detail::ensure_size(e.row_sum, k);
      for (Index c = 0; c < k; ++c)
        e.row_sum(c) = double(state.g_sums[static_cast<std::size_t>(c)]);
      for (Index t = 0; t < patch; ++t) {
        e.col_sum(t) =
            double(state.column_code_sums[static_cast<std::size_t>(t)]) - double(depth) * state.zx;
      }
      e.apply(summed ? state.s_sum.data() : state.s.data(), patch, dw.data(), dw.outerStride(),
              true, depth, detail::max_code(qg));
    }
    if (state.pad_error != 0) detail::subtract_grad_weight_pad_term(geo, qg, dw, state);
  }

 private:
  const IntegerGemm* engine_;
  std::string name_;

  void multiply(const GemmShape& shape, const Code* a, const std::int8_t* b,
                std::vector<std::int32_t>& s, std::unique_ptr<GemmPlan>& plan) const {
    detail::ensure_size(s, shape.batch * shape.m * shape.n);
    engine_->multiply(shape, a, b, s.data(), plan);
  }
};

/// \brief The int8 backend on the portable integer GEMM, for QuantPolicy::backend (one shared,
/// stateless instance; the per-layer state lives in the layers' caches).
inline std::shared_ptr<const Backend> int8_backend() {
  static const auto backend = std::make_shared<const Int8Backend>();
  return backend;
}

}  // namespace nn
}  // namespace fqt
