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

  /// out(i, j) (+)= s_a·s_b·(S + r_a·(128 − z_b) − z_a·(c_b − K·z_b)) for an m × n block of S.
  void apply(const std::int32_t* s, Index lds, Scalar* out, Index ldo, bool accumulate) const {
    const Index m = row_scale.size(), n = col_scale.size();
    for (Index i = 0; i < m; ++i) {
      using Row = Eigen::Matrix<std::int32_t, 1, Eigen::Dynamic>;
      const auto bracket = Eigen::Map<const Row>(s + i * lds, n).template cast<double>().array() +
                           row_sum(i) * col_shift.transpose().array() -
                           row_zero(i) * col_sum.transpose().array();
      const auto value =
          (row_scale(i) * col_scale.transpose().array()) * bracket.template cast<Scalar>();
      Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> o(out + i * ldo, n);
      if (accumulate) {
        o.array() += value;
      } else {
        o.array() = value;
      }
    }
  }
};

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

}  // namespace detail

/// \brief The int8 backend over an integer GEMM engine (the portable one by default; oneDNN's in
/// fqt/nn/backends/dnnl.hpp).
class Int8Backend final : public BackendFor<Int8Backend> {
 public:
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
    signed_codes(qw, state.b);
    // A = X (n × in), B = Ŵᵀ (in × out) read from Ŵ's rows.
    GemmShape shape{1, n, out, in, {0, in, 1}, {0, 1, in}, {0, out, 1}};
    multiply(shape, qx.codes.data(), state.b.data(), state.s, state.plans[0]);
    auto& e = state.epilogue;
    rows_of(
        qx, n, [](Index i) { return std::pair<Index, Index>(i, 0); }, e);
    row_sums(qx.codes.data(), n, in, in, 1, e.row_sum);
    columns_of(
        qw, out, in, [](Index j) { return std::pair<Index, Index>(j, 0); },
        [&](Index j) { return code_sum(qw.codes.data() + j * in, in, 1); }, e);
    e.apply(state.s.data(), out, y.data(), y.outerStride(), false);
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
    signed_codes(qw, state.b);
    GemmShape shape{1, n, in, out, {0, out, 1}, {0, in, 1}, {0, in, 1}};
    multiply(shape, qg.codes.data(), state.b.data(), state.s, state.plans[1]);
    auto& e = state.epilogue;
    rows_of(
        qg, n, [](Index i) { return std::pair<Index, Index>(i, 0); }, e);
    row_sums(qg.codes.data(), n, out, out, 1, e.row_sum);
    columns_of(
        qw, in, out, [](Index) { return std::pair<Index, Index>(0, 0); },
        [&](Index j) { return code_sum(qw.codes.data() + j, out, in); }, e);
    e.apply(state.s.data(), in, dx.data(), dx.outerStride(), false);
    if (qg.transform) {
      // T⁻¹(Z)·Ŵ = apply_inverse_linear(Z·Ŵ) + c·(𝟙ᵀŴ); 𝟙ᵀŴ from Ŵ's column code sums.
      qg.transform->apply_inverse_linear(dx);
      // The epilogue's column terms are c_b − out·z_w, so (𝟙ᵀŴ)_j = s_w·col_sum(j).
      const Scalar sw = detail::map_at(qw, 0, 0).first;
      add_row_offsets(*qg.transform, sw * e.col_sum.array().template cast<Scalar>(), dx);
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
    signed_codes(qx, state.b);
    auto& e = state.epilogue;
    // The contraction runs over the samples: pieces of at most `depth` rows, each exact.
    const Index depth = std::max<Index>(1, max_exact_depth((1 << qg.bits) - 1));
    for (Index start = 0; start < n; start += depth) {
      const Index rows = std::min(depth, n - start);
      // A = Q_b2(G)ᵀ (out × rows) read from G's rows, B = X̂ (rows × in).
      GemmShape shape{1, out, in, rows, {0, 1, out}, {0, in, 1}, {0, in, 1}};
      multiply(shape, qg.codes.data() + start * out, state.b.data() + start * in, state.s,
               state.plans[2]);
      rows_of(
          qg, out, [](Index i) { return std::pair<Index, Index>(0, i); }, e);
      row_sums(qg.codes.data() + start * out, out, rows, 1, out, e.row_sum);
      columns_of(
          qx, in, rows, [](Index) { return std::pair<Index, Index>(0, 0); },
          [&](Index j) { return code_sum(qx.codes.data() + start * in + j, rows, in); }, e);
      e.apply(state.s.data(), in, dw.data(), dw.outerStride(), true);
    }
  }

  // ---- conv ---------------------------------------------------------------------------------

  template <class Scalar>
  void conv_forward_impl(const Conv2dGeometry& geo, const Operand<Scalar>& x,
                         const Operand<Scalar>& w, MatrixRef<Scalar> y,
                         std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<ConvState<Scalar>>(slot);
    state.coded = x.coded() && w.coded();
    if (!state.coded) return simulated_backend().conv_forward(geo, x, w, y, state.fallback);
    constexpr const char* kWhere = "nn::Int8Backend::conv_forward";
    const auto &qx = x.quantized(), &qw = w.quantized();
    const Index n = qx.rows(), k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane(), wide = n * plane;
    detail::check_depth(patch, qw.bits, kWhere, "Q_f(W)·im2col(Q_f(X))");
    columns(geo, qx, state);
    // A = Ŵ (k × patch) for every sample, B_s = columns of sample s (patch × plane).
    GemmShape shape{n, k, plane, patch, {0, patch, 1}, {plane, wide, 1}, {k * plane, plane, 1}};
    detail::ensure_size(state.s, n * k * plane);
    engine_->multiply(shape, qw.codes.data(), state.cols.data(), state.s.data(), state.plans[0]);
    const auto [sx, zx] = detail::map_at(qx, 0, 0);
    auto& e = state.epilogue;
    rows_of(
        qw, k, [](Index) { return std::pair<Index, Index>(0, 0); }, e);
    row_sums(qw.codes.data(), k, patch, patch, 1, e.row_sum);
    detail::ensure_size(e.col_scale, plane);
    detail::ensure_size(e.col_shift, plane);
    detail::ensure_size(e.col_sum, plane);
    e.col_scale.setConstant(sx);
    e.col_shift.setConstant(128.0 - zx);
    for (Index s = 0; s < n; ++s) {
      for (Index p = 0; p < plane; ++p)
        e.col_sum(p) = double(state.col_sums(s * plane + p)) - double(patch) * zx;
      e.apply(state.s.data() + s * k * plane, plane, y.data() + s * y.outerStride(), plane, false);
    }
    if (state.pad_error != 0) {
      // The padded taps took code P instead of the zero point z: subtract s_x·(P − z)·(Ŵ·M).
      const Matrix<Scalar> wv = qw.dequantize();
      const Matrix<Scalar> correction = (sx * state.pad_error) * (wv * pad_mask<Scalar>(geo));
      for (Index s = 0; s < n; ++s) {
        detail::RowMap<Scalar>(y.data() + s * y.outerStride(), k, plane) -= correction;
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
    const Index n = qg.rows(), k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane();
    detail::check_depth(k, qw.bits, kWhere, "Ŵᵀ·Q_b1(G)");
    detail::ensure_size(state.g, n * k * plane);
    detail::shift_to_signed(qg.codes.data(), n * k * plane, state.g.data());
    // A = Ŵᵀ (patch × k) for every sample, B_s = G_s (k × plane).
    GemmShape shape{
        n, patch, plane, k, {0, 1, patch}, {k * plane, plane, 1}, {patch * plane, plane, 1}};
    detail::ensure_size(state.s, n * patch * plane);
    engine_->multiply(shape, qw.codes.data(), state.g.data(), state.s.data(), state.plans[1]);
    auto& e = state.epilogue;
    rows_of(
        qw, patch, [](Index) { return std::pair<Index, Index>(0, 0); }, e);
    row_sums(qw.codes.data(), patch, k, 1, patch, e.row_sum);
    detail::ensure_size(state.dcols, patch * plane);
    for (Index s = 0; s < n; ++s) {
      const auto [sg, zg] = detail::map_at(qg, s, 0);
      detail::ensure_size(e.col_scale, plane);
      detail::ensure_size(e.col_shift, plane);
      detail::ensure_size(e.col_sum, plane);
      e.col_scale.setConstant(sg);
      e.col_shift.setConstant(128.0 - zg);
      const Code* gs = qg.codes.data() + s * k * plane;
      for (Index p = 0; p < plane; ++p)
        e.col_sum(p) = double(code_sum(gs + p, k, plane)) - double(k) * zg;
      e.apply(state.s.data() + s * patch * plane, plane, state.dcols.data(), plane, false);
      Scalar* xs = dx.data() + s * dx.outerStride();
      std::fill(xs, xs + geo.input_size(), Scalar(0));
      detail::col2im_add(state.dcols.data(), geo, xs);
    }
    if (qg.transform) {
      // T⁻¹(Z) feeds a map linear per row: apply T⁻¹'s linear part to the result rows, then add
      // c_s·col2im(Ŵᵀ·𝟙) for the offsets.
      qg.transform->apply_inverse_linear(dx);
      const Matrix<Scalar> wv = qw.dequantize();
      const Vector<Scalar> column = wv.colwise().sum().transpose();
      Matrix<Scalar> ones_image = column.replicate(1, plane);
      Vector<Scalar> offset = Vector<Scalar>::Zero(geo.input_size());
      detail::col2im_add(ones_image.data(), geo, offset.data());
      add_row_offsets(*qg.transform, offset.array(), dx);
    }
  }

  template <class Scalar>
  void conv_grad_weight_impl(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                             MatrixRef<Scalar> dw, std::unique_ptr<BackendState>& slot) const {
    auto& state = BackendState::of<ConvState<Scalar>>(slot);
    if (!state.coded) return simulated_backend().conv_grad_weight(geo, g, dw, state.fallback);
    const Index n = g.rows(), k = geo.out_channels, patch = geo.patch_size();
    const Index plane = geo.out_plane(), wide = n * plane;
    if (!g.coded()) return float_conv_grad_weight(geo, g, dw, state);
    constexpr const char* kWhere = "nn::Int8Backend::conv_grad_weight";
    const auto& qg = g.quantized();
    detail::require_factoring(qg, 0, kWhere, "Q_b2(G)");
    check(qg.granularity != Granularity::PerColumn, kWhere,
          "Q_b2(G) has one scale per (k, oy, ox), which varies along the contraction");
    detail::check_depth(plane, qg.bits, kWhere, "one sample of Q_b2(G)·im2col(X̂)ᵀ");
    // G's codes channel-major, (k, s, p), so that one GEMM contracts over (s, p).
    detail::ensure_size(state.gk, k * wide);
    for (Index s = 0; s < n; ++s)
      for (Index c = 0; c < k; ++c)
        std::copy_n(qg.codes.data() + (s * k + c) * plane, plane,
                    state.gk.data() + c * wide + s * plane);
    auto& e = state.epilogue;
    rows_of(
        qg, k, [plane](Index c) { return std::pair<Index, Index>(0, c * plane); }, e);
    detail::ensure_size(state.s, k * patch);
    const Index samples = std::max<Index>(1, max_exact_depth((1 << qg.bits) - 1) / plane);
    for (Index start = 0; start < n; start += samples) {
      const Index count = std::min(samples, n - start), depth = count * plane;
      // A = G (k × depth), B = columnsᵀ (depth × patch).
      GemmShape shape{1, k, patch, depth, {0, wide, 1}, {0, 1, wide}, {0, patch, 1}};
      engine_->multiply(shape, state.gk.data() + start * plane, state.cols.data() + start * plane,
                        state.s.data(), state.plans[2]);
      row_sums(state.gk.data() + start * plane, k, depth, wide, 1, e.row_sum);
      detail::ensure_size(e.col_scale, patch);
      detail::ensure_size(e.col_shift, patch);
      detail::ensure_size(e.col_sum, patch);
      e.col_scale.setConstant(state.sx);
      e.col_shift.setConstant(128.0 - state.zx);
      for (Index t = 0; t < patch; ++t) {
        std::int64_t sum = 0;
        const std::int8_t* row = state.cols.data() + t * wide + start * plane;
        for (Index j = 0; j < depth; ++j) sum += row[j] + 128;
        e.col_sum(t) = double(sum) - double(depth) * state.zx;
      }
      e.apply(state.s.data(), patch, dw.data(), dw.outerStride(), true);
    }
    if (state.pad_error != 0) {
      // Subtract s_x·(P − z)·(Σ_s Ĝ_s)·Mᵀ, the padded taps' share.
      const Matrix<Scalar> gv = qg.dequantize();
      Matrix<Scalar> sum = Matrix<Scalar>::Zero(k, plane);
      for (Index s = 0; s < n; ++s)
        sum += detail::ConstRowMap<Scalar>(gv.data() + s * k * plane, k, plane);
      dw -= (state.sx * state.pad_error) * (sum * pad_mask<Scalar>(geo).transpose());
    }
  }

  /// \brief What the int8 backend keeps per linear layer.
  template <class Scalar>
  struct LinearState final : BackendState {
    std::vector<std::int8_t> b;              // B's codes − 128
    std::vector<std::int32_t> s;             // the int32 GEMM
    std::unique_ptr<GemmPlan> plans[3];      // forward, grad-input, grad-weight
    detail::Epilogue<Scalar> epilogue;       // its per-row and per-column terms
    std::unique_ptr<BackendState> fallback;  // the simulated backend's, for unquantized operands
  };

  /// \brief What the int8 backend keeps per conv layer.
  template <class Scalar>
  struct ConvState final : BackendState {
    bool coded = false;             // the last forward ran on codes
    std::vector<std::int8_t> cols;  // im2col(X̂) codes − 128, (patch) × (n·plane)
    std::vector<std::int8_t> sample, sample_cols;  // one sample's codes − 128, and its im2col
    Vector<std::int64_t> col_sums;                 // code sums of every column (s, p)
    Scalar sx = 0, zx = 0, pad_error = 0;          // X̂'s map, and P − z of the padding code
    std::vector<std::int8_t> g;                    // G's codes − 128 (grad-input)
    std::vector<Code> gk;                          // G's codes channel-major (grad-weight)
    std::vector<std::int32_t> s;                   // the int32 GEMM
    std::vector<Scalar> dcols;                     // one sample's column gradient
    std::unique_ptr<GemmPlan> plans[3];
    detail::Epilogue<Scalar> epilogue;
    std::unique_ptr<BackendState> fallback;
  };

 private:
  const IntegerGemm* engine_;
  std::string name_;

  void multiply(const GemmShape& shape, const Code* a, const std::int8_t* b,
                std::vector<std::int32_t>& s, std::unique_ptr<GemmPlan>& plan) const {
    detail::ensure_size(s, shape.batch * shape.m * shape.n);
    engine_->multiply(shape, a, b, s.data(), plan);
  }

  template <class Scalar>
  static void signed_codes(const Quantized<Scalar, Code>& q, std::vector<std::int8_t>& out) {
    detail::ensure_size(out, q.codes.size());
    detail::shift_to_signed(q.codes.data(), q.codes.size(), out.data());
  }

  static Index code_sum(const Code* p, Index count, Index stride) {
    Index sum = 0;
    for (Index i = 0; i < count; ++i) sum += p[i * stride];
    return sum;
  }

  // r(i) = Σ_j codes[i·row + j·col] for i < m, j < count.
  template <class T>
  static void row_sums(const T* codes, Index m, Index count, Index row, Index col,
                       Vector<double>& r) {
    detail::ensure_size(r, m);
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
  static void rows_of(const Quantized<Scalar, Code>& q, Index m, At at,
                      detail::Epilogue<Scalar>& e) {
    detail::ensure_size(e.row_scale, m);
    detail::ensure_size(e.row_zero, m);
    for (Index i = 0; i < m; ++i) {
      const auto [r, c] = at(i);
      const auto [scale, zero] = detail::map_at(q, r, c);
      e.row_scale(i) = scale;
      e.row_zero(i) = zero;
    }
  }

  // The maps of B's n columns (column j: the map of element at(j) of q, code sum sum(j)) for a
  // contraction of depth k.
  template <class Scalar, class At, class Sum>
  static void columns_of(const Quantized<Scalar, Code>& q, Index n, Index k, At at, Sum sum,
                         detail::Epilogue<Scalar>& e) {
    detail::ensure_size(e.col_scale, n);
    detail::ensure_size(e.col_shift, n);
    detail::ensure_size(e.col_sum, n);
    for (Index j = 0; j < n; ++j) {
      const auto [r, c] = at(j);
      const auto [scale, zero] = detail::map_at(q, r, c);
      e.col_scale(j) = scale;
      e.col_shift(j) = 128.0 - zero;
      e.col_sum(j) = double(sum(j)) - double(k) * zero;
    }
  }

  // y.row(i) += c_i·v with c the transform's row offsets.
  template <class Scalar, class V>
  static void add_row_offsets(const BlockHouseholderTransform<Scalar>& t, const V& v,
                              MatrixRef<Scalar> y) {
    const Vector<Scalar>& c = t.row_offset();
    for (Index i = 0; i < y.rows(); ++i) {
      if (c(i) != 0) y.row(i).array() += c(i) * v.transpose();
    }
  }

  // im2col of X̂'s codes into state.cols (codes − 128, patch × (n·plane)), padding with the code
  // nearest the zero point, and the code sums of every column.
  template <class Scalar>
  static void columns(const Conv2dGeometry& geo, const Quantized<Scalar, Code>& qx,
                      ConvState<Scalar>& state) {
    const Index n = qx.rows(), patch = geo.patch_size(), plane = geo.out_plane();
    const Index wide = n * plane;
    const auto [sx, zx] = detail::map_at(qx, 0, 0);
    const Scalar max_code = Scalar((1 << qx.bits) - 1);
    const Scalar pad = std::min(max_code, std::max(Scalar(0), std::nearbyint(zx)));
    state.sx = sx;
    state.zx = zx;
    const bool padded = geo.padding_height > 0 || geo.padding_width > 0;
    state.pad_error = padded ? pad - zx : Scalar(0);
    detail::ensure_size(state.cols, patch * wide);
    detail::ensure_size(state.dcols, patch * plane);
    std::vector<std::int8_t>& one = state.sample_cols;
    std::vector<std::int8_t>& signed_x = state.sample;
    detail::ensure_size(one, patch * plane);
    detail::ensure_size(signed_x, qx.cols());
    const auto pad_code = static_cast<std::int8_t>(int(pad) - 128);
    for (Index s = 0; s < n; ++s) {
      detail::shift_to_signed(qx.codes.data() + s * qx.cols(), qx.cols(), signed_x.data());
      detail::im2col(signed_x.data(), geo, one.data(), pad_code);
      for (Index t = 0; t < patch; ++t)
        std::copy_n(one.data() + t * plane, plane, state.cols.data() + t * wide + s * plane);
    }
    detail::ensure_size(state.col_sums, wide);
    state.col_sums.setConstant(128 * patch);
    for (Index t = 0; t < patch; ++t) {
      const std::int8_t* row = state.cols.data() + t * wide;
      for (Index j = 0; j < wide; ++j) state.col_sums(j) += row[j];
    }
  }

  // M (patch × plane): 1 where tap t of output position p falls in the padding.
  template <class Scalar>
  static Matrix<Scalar> pad_mask(const Conv2dGeometry& geo) {
    Matrix<Scalar> ones = Matrix<Scalar>::Ones(1, geo.in_channels * geo.in_height * geo.in_width);
    Matrix<Scalar> inside(geo.patch_size(), geo.out_plane());
    detail::im2col(ones.data(), geo, inside.data());
    return Matrix<Scalar>::Ones(inside.rows(), inside.cols()) - inside;
  }

  // dw += Σ_s G_s·im2col(X̂_s)ᵀ in floating point, for an unquantized G (Mode::QAT).
  template <class Scalar>
  static void float_conv_grad_weight(const Conv2dGeometry& geo, const Operand<Scalar>& g,
                                     MatrixRef<Scalar> dw, ConvState<Scalar>& state) {
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
      dw.noalias() += detail::ConstRowMap<Scalar>(gv.data() + s * gv.outerStride(), k, plane) *
                      cols.transpose();
    }
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
