#pragma once
/// \file
/// \brief The simulated backend: every product is a floating-point GEMM on the dequantized
/// operands — exactly the values an integer GEMM with the affine corrections would produce, up to
/// the rounding of the float accumulation. Results do not depend on the thread count.

#include <algorithm>
#include <memory>
#include <vector>

#include "fqt/core/gemm.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/detail/im2col.hpp"

namespace fqt {
namespace nn {

/// \brief Multiplies dequantized values in Scalar with fqt's thread-count-independent GEMM; conv
/// runs per sample on im2col columns in fixed chunks of samples.
class SimulatedBackend final : public BackendFor<SimulatedBackend> {
 public:
  /// \brief What the simulated backend keeps per linear layer: operands given as codes,
  /// dequantized.
  template <class Scalar>
  struct LinearState final : BackendState {
    Matrix<Scalar> a, b;
    std::size_t bytes() const override { return detail::bytes_total(a, b); }
  };

  /// \brief What the simulated backend keeps per conv layer (in Conv2dCache::state).
  template <class Scalar>
  struct ConvState final : BackendState {
    // ConvColumns::Keep: im2col of the forward input, sample n in rows [n·patch, (n+1)·patch).
    Matrix<Scalar> columns;
    bool kept = false;                              // columns hold the last forward's input
    Matrix<Scalar> x_values, w_values, g_values;    // dequantized operands given as codes
    std::vector<Matrix<Scalar>> thread_columns;     // per thread: one sample's columns or gradient
    std::vector<Matrix<Scalar>> chunk_grad_weight;  // per sample chunk: partial ∇W
    std::size_t bytes() const override {
      return detail::bytes_total(columns, x_values, w_values, g_values, thread_columns,
                                 chunk_grad_weight);
    }
  };

  const char* name() const override { return "simulated"; }
  bool multiplies_codes() const override { return false; }

  template <class Scalar>
  void linear_forward_impl(const Operand<Scalar>& x, const Operand<Scalar>& w, MatrixRef<Scalar> y,
                           std::unique_ptr<BackendState>& slot) const {
    LinearState<Scalar>& state = BackendState::of<LinearState<Scalar>>(slot);
    fqt::detail::gemm(y, values(x, state.a), values(w, state.b).transpose(), false);
  }
  template <class Scalar>
  void linear_grad_input_impl(const Operand<Scalar>& g, const Operand<Scalar>& w,
                              MatrixRef<Scalar> dx, std::unique_ptr<BackendState>& slot) const {
    LinearState<Scalar>& state = BackendState::of<LinearState<Scalar>>(slot);
    fqt::detail::gemm(dx, values(g, state.a), values(w, state.b), false);
  }
  template <class Scalar>
  void linear_grad_weight_impl(const Operand<Scalar>& g, const Operand<Scalar>& x,
                               MatrixRef<Scalar> dw, std::unique_ptr<BackendState>& slot) const {
    LinearState<Scalar>& state = BackendState::of<LinearState<Scalar>>(slot);
    fqt::detail::gemm(dw, values(g, state.a).transpose(), values(x, state.b), true);
  }

  template <class Scalar>
  void conv_forward_impl(const Conv2dGeometry& geometry, const Operand<Scalar>& x,
                         const Operand<Scalar>& w, MatrixRef<Scalar> y, ConvColumns keep,
                         std::unique_ptr<BackendState>& slot) const {
    ConvState<Scalar>& state = BackendState::of<ConvState<Scalar>>(slot);
    const Conv2dGeometry& g = geometry;
    const Index n = x.rows(), patch = g.patch_size(), plane = g.out_plane();
    const auto xv = values(x, state.x_values);
    const auto wv = values(w, state.w_values);
    state.kept = keep == ConvColumns::Keep;
    if (state.kept) {
      ensure(state.columns, n * patch, plane);
    } else {
      state.columns.resize(0, 0);
      per_thread(state.thread_columns, patch, plane);
    }
    const Index chunks = (n + detail::kConvChunk - 1) / detail::kConvChunk;
    const double flops = static_cast<double>(n) * g.out_channels * patch * plane;
    fqt::detail::run_blocks(chunks, flops, [&](Index chunk) {
      const Index end = std::min(n, (chunk + 1) * detail::kConvChunk);
      for (Index s = chunk * detail::kConvChunk; s < end; ++s) {
        Scalar* columns = state.kept ? state.columns.data() + s * patch * plane
                                     : mine(state.thread_columns).data();
        detail::im2col(xv.data() + s * xv.outerStride(), g, columns);
        detail::RowMap<Scalar> ys(y.data() + s * y.outerStride(), g.out_channels, plane);
        ys.noalias() = wv * detail::ConstRowMap<Scalar>(columns, patch, plane);
      }
    });
  }

  template <class Scalar>
  void conv_grad_input_impl(const Conv2dGeometry& geometry, const Operand<Scalar>& g_op,
                            const Operand<Scalar>& w, MatrixRef<Scalar> dx,
                            std::unique_ptr<BackendState>& slot) const {
    ConvState<Scalar>& state = BackendState::of<ConvState<Scalar>>(slot);
    const Conv2dGeometry& g = geometry;
    const Index n = g_op.rows(), k = g.out_channels, patch = g.patch_size(), plane = g.out_plane();
    const auto gv = values(g_op, state.g_values);
    const auto wv = values(w, state.w_values);
    const Index chunks = (n + detail::kConvChunk - 1) / detail::kConvChunk;
    per_thread(state.thread_columns, patch, plane);
    const double flops = static_cast<double>(n) * k * patch * plane;
    fqt::detail::run_blocks(chunks, flops, [&](Index chunk) {
      Matrix<Scalar>& dcols = mine(state.thread_columns);
      const Index end = std::min(n, (chunk + 1) * detail::kConvChunk);
      for (Index s = chunk * detail::kConvChunk; s < end; ++s) {
        const detail::ConstRowMap<Scalar> gs(gv.data() + s * gv.outerStride(), k, plane);
        dcols.noalias() = wv.transpose() * gs;
        Scalar* xs = dx.data() + s * dx.outerStride();
        std::fill(xs, xs + g.input_size(), Scalar(0));
        detail::col2im_add(dcols.data(), g, xs);
      }
    });
  }

  template <class Scalar>
  void conv_grad_weight_impl(const Conv2dGeometry& geometry, const Operand<Scalar>& g_op,
                             const Operand<Scalar>& x, MatrixRef<Scalar> dw,
                             std::unique_ptr<BackendState>& slot) const {
    ConvState<Scalar>& state = BackendState::of<ConvState<Scalar>>(slot);
    const Conv2dGeometry& g = geometry;
    const Index n = g_op.rows(), k = g.out_channels, patch = g.patch_size(), plane = g.out_plane();
    FQT_ASSERT(state.kept ? state.columns.rows() == n * patch && state.columns.cols() == plane
                          : x.rows() == n && x.cols() == g.input_size());
    const auto gv = values(g_op, state.g_values);
    // Recompute: the columns of each sample again, from the forward input.
    const auto xv = state.kept ? x.value() : values(x, state.x_values);
    if (!state.kept) per_thread(state.thread_columns, patch, plane);
    const Index chunks = (n + detail::kConvChunk - 1) / detail::kConvChunk;
    if (static_cast<Index>(state.chunk_grad_weight.size()) < chunks) {
      state.chunk_grad_weight.resize(chunks);
    }
    const double flops = static_cast<double>(n) * k * patch * plane;
    fqt::detail::run_blocks(chunks, flops, [&](Index chunk) {
      Matrix<Scalar>& partial = state.chunk_grad_weight[chunk];
      ensure(partial, k, patch);
      partial.setZero();
      const Index end = std::min(n, (chunk + 1) * detail::kConvChunk);
      for (Index s = chunk * detail::kConvChunk; s < end; ++s) {
        const Scalar* data = nullptr;
        if (state.kept) {
          data = state.columns.data() + s * patch * plane;
        } else {
          Scalar* scratch = mine(state.thread_columns).data();
          detail::im2col(xv.data() + s * xv.outerStride(), g, scratch);
          data = scratch;
        }
        const detail::ConstRowMap<Scalar> columns(data, patch, plane);
        const detail::ConstRowMap<Scalar> gs(gv.data() + s * gv.outerStride(), k, plane);
        partial.noalias() += gs * columns.transpose();
      }
    });
    for (Index c = 0; c < chunks; ++c) dw += state.chunk_grad_weight[c];
  }

 private:
  template <class Scalar>
  static void ensure(Matrix<Scalar>& m, Index rows, Index cols) {
    if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
  }
  // One rows × cols buffer per thread of fqt's parallel loops.
  template <class Scalar>
  static void per_thread(std::vector<Matrix<Scalar>>& buffers, Index rows, Index cols) {
    const auto threads = static_cast<std::size_t>(std::max(1, num_threads()));
    if (buffers.size() < threads) buffers.resize(threads);
    for (auto& b : buffers) ensure(b, rows, cols);
  }
  // The calling thread's buffer. A loop that runs serially inside someone else's parallel region
  // (where thread numbers can exceed num_threads()) uses the last one: one thread at a time.
  template <class Scalar>
  static Matrix<Scalar>& mine(std::vector<Matrix<Scalar>>& buffers) {
    const auto t = static_cast<std::size_t>(thread_index());
    return buffers[std::min(t, buffers.size() - 1)];
  }

  // The values of an operand: a view of them, or the codes dequantized into `scratch`.
  template <class Scalar>
  static typename Operand<Scalar>::Values values(const Operand<Scalar>& op,
                                                 Matrix<Scalar>& scratch) {
    if (!op.coded()) return op.value();
    ensure(scratch, op.rows(), op.cols());
    op.quantized().dequantize(scratch);
    return typename Operand<Scalar>::Values(scratch.data(), scratch.rows(), scratch.cols(),
                                            Eigen::OuterStride<>(scratch.cols()));
  }
};

/// \brief The simulated backend (stateless; the per-layer state lives in the layers' caches).
inline const Backend& simulated_backend() {
  static const SimulatedBackend backend;
  return backend;
}

}  // namespace nn
}  // namespace fqt
