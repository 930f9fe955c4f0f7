#pragma once
/// \file
/// \brief The quantized-product seam: the interface of a **backend**, which computes the six
/// products of the GEMM layers — linear and conv, forward, grad-input and grad-weight — on
/// `Operand`s that are either integer codes with their affine maps (`Quantized`) or plain values.
///
/// The ops (fqt/nn/ops/linear.hpp, conv2d.hpp) check their arguments, quantize the operands as
/// the policy says (fqt/nn/product.hpp) and hand them to the policy's backend; they never
/// multiply themselves. A backend that `multiplies_codes()` receives the codes of every quantized
/// operand and must apply the maps (and BHQ's T⁻¹) to its results; one that does not receives the
/// dequantized values (bit-identical to dequantizing the codes) and multiplies them in floating
/// point. Unquantized operands (Mode::Exact, and the gradient in Mode::QAT) always arrive as
/// values.
///
/// A new backend derives from `BackendFor<Derived>` and defines the six products as member
/// templates over Scalar (see fqt/nn/backends/simulated.hpp).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "fqt/core/matrix.hpp"
#include "fqt/nn/geometry.hpp"
#include "fqt/quant/quantized.hpp"

namespace fqt {
namespace nn {

/// \brief The element type of the codes the products consume (every policy bit width is ≤ 8).
using Code = std::uint8_t;

/// \brief What a conv layer keeps of its input for the grad-weight product, between the forward
/// pass and the backward pass.
enum class ConvColumns {
  /// The im2col columns of the whole batch (C·kh·kw × Ho·Wo per sample: about kh·kw/stride² times
  /// the input), built once in the forward pass.
  Keep,
  /// Only the input (X̂, as the layer stores it anyway in the quantized modes): the forward and the
  /// grad-weight product build the columns a few samples at a time into buffers whose size does
  /// not grow with the batch. Bit-identical results; the backward pays one more im2col.
  Recompute
};

/// \brief "keep" or "recompute".
inline const char* to_string(ConvColumns c) {
  return c == ConvColumns::Keep ? "keep" : "recompute";
}

/// \brief One operand of a product: the codes of a quantized matrix, or a matrix of values.
/// A view: it owns nothing and must not outlive what it refers to.
template <class Scalar>
class Operand {
 public:
  using Values = Eigen::Map<const Matrix<Scalar>, 0, Eigen::OuterStride<>>;

  /// \brief The operand given by codes and their maps.
  static Operand codes(const Quantized<Scalar, Code>& q) {
    Operand op(q.codes.rows(), q.codes.cols());
    op.codes_ = &q;
    return op;
  }
  /// \brief The operand given by values.
  static Operand values(const MatrixCRef<Scalar>& x) {
    Operand op(x.rows(), x.cols());
    op.data_ = x.data();
    op.stride_ = x.outerStride();
    return op;
  }

  /// \brief True when the operand is codes (call quantized()), false when values (call value()).
  bool coded() const { return codes_ != nullptr; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// \brief The codes and maps; only when coded().
  const Quantized<Scalar, Code>& quantized() const {
    FQT_ASSERT(coded());
    return *codes_;
  }
  /// \brief A 0 × 0 operand of values: what a product receives for an operand it does not read.
  static Operand none() { return Operand(0, 0); }
  /// \brief The values; only when !coded().
  Values value() const {
    FQT_ASSERT(!coded());
    return Values(data_, rows_, cols_, Eigen::OuterStride<>(stride_));
  }

 private:
  Operand(Index rows, Index cols) : rows_(rows), cols_(cols) {}
  const Quantized<Scalar, Code>* codes_ = nullptr;
  const Scalar* data_ = nullptr;
  Index rows_ = 0, cols_ = 0, stride_ = 0;
};

/// \brief What a backend keeps for one layer between a forward pass and its backward passes (for
/// conv, the im2col columns of the input) and its workspaces, owned by the layer's cache (so that
/// layers, and models trained on different threads, never share one). Each backend derives its
/// own; `BackendState::of` finds or (re)creates it.
class BackendState {
 public:
  virtual ~BackendState() = default;
  /// \brief The bytes this state holds (its buffers' sizes; what stays allocated between passes).
  virtual std::size_t bytes() const = 0;

  /// \brief The state of type T in `slot`, created when the slot is empty or holds another
  /// backend's state.
  template <class T>
  static T& of(std::unique_ptr<BackendState>& slot) {
    if (auto* state = dynamic_cast<T*>(slot.get())) return *state;
    slot = std::make_unique<T>();
    return static_cast<T&>(*slot);
  }
};

namespace detail {
/// \brief The bytes of a buffer (its capacity), of an Eigen matrix, of codes with their maps, of
/// a backend state; `bytes_total` sums them.
template <class T>
std::size_t bytes_of(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}
template <class T, int R, int C, int O, int MR, int MC>
std::size_t bytes_of(const Eigen::Matrix<T, R, C, O, MR, MC>& m) {
  return static_cast<std::size_t>(m.size()) * sizeof(T);
}
template <class Scalar, class C>
std::size_t bytes_of(const Quantized<Scalar, C>& q) {
  return bytes_of(q.codes) + bytes_of(q.scale) + bytes_of(q.zero_point);
}
inline std::size_t bytes_of(const std::unique_ptr<BackendState>& state) {
  return state ? state->bytes() : 0;
}
template <class T, int R, int C, int O, int MR, int MC>
std::size_t bytes_of(const std::vector<Eigen::Matrix<T, R, C, O, MR, MC>>& v) {
  std::size_t sum = 0;
  for (const auto& m : v) sum += bytes_of(m);
  return sum;
}
template <class... T>
std::size_t bytes_total(const T&... buffers) {
  return (std::size_t{0} + ... + bytes_of(buffers));
}
}  // namespace detail

/// \brief The six products for one Scalar type. Shapes: linear X is N × in, W out × in, G N × out;
/// conv X is N × (C·H·W), W K × (C·kh·kw), G N × (K·Ho·Wo). Every operand has been checked
/// (shapes, finiteness, the policy) before a product is called; a product may still throw (e.g.
/// std::domain_error when a result overflows) and then leaves its output unspecified.
template <class Scalar>
class BackendProducts {
 public:
  virtual ~BackendProducts() = default;
  /// \brief y = x·wᵀ (overwrites y, N × out).
  virtual void linear_forward(const Operand<Scalar>& x, const Operand<Scalar>& w,
                              MatrixRef<Scalar> y, std::unique_ptr<BackendState>& state) const = 0;
  /// \brief dx = g·w (overwrites dx, N × in).
  virtual void linear_grad_input(const Operand<Scalar>& g, const Operand<Scalar>& w,
                                 MatrixRef<Scalar> dx,
                                 std::unique_ptr<BackendState>& state) const = 0;
  /// \brief dw += gᵀ·x (accumulates into dw, out × in).
  virtual void linear_grad_weight(const Operand<Scalar>& g, const Operand<Scalar>& x,
                                  MatrixRef<Scalar> dw,
                                  std::unique_ptr<BackendState>& state) const = 0;
  /// \brief y_n = w·im2col(x_n) for every sample n (overwrites y); with ConvColumns::Keep, keeps
  /// in `state` the columns conv_grad_weight needs, with Recompute only buffers that do not grow
  /// with the batch.
  virtual void conv_forward(const Conv2dGeometry& geometry, const Operand<Scalar>& x,
                            const Operand<Scalar>& w, MatrixRef<Scalar> y, ConvColumns columns,
                            std::unique_ptr<BackendState>& state) const = 0;
  /// \brief dx_n = col2im(wᵀ·g_n) for every sample n (overwrites dx).
  virtual void conv_grad_input(const Conv2dGeometry& geometry, const Operand<Scalar>& g,
                               const Operand<Scalar>& w, MatrixRef<Scalar> dx,
                               std::unique_ptr<BackendState>& state) const = 0;
  /// \brief dw += Σ_n g_n·im2col(x_n)ᵀ with x the input of the last conv_forward on `state`
  /// (accumulates into dw). `x` is that input when the forward ran with ConvColumns::Recompute
  /// (the product builds the columns again from it), Operand::none() when it kept them.
  virtual void conv_grad_weight(const Conv2dGeometry& geometry, const Operand<Scalar>& g,
                                const Operand<Scalar>& x, MatrixRef<Scalar> dw,
                                std::unique_ptr<BackendState>& state) const = 0;
};

/// \brief A backend: the products for float and double, a name, and whether it multiplies codes.
class Backend : public BackendProducts<float>, public BackendProducts<double> {
 public:
  using BackendProducts<float>::linear_forward, BackendProducts<double>::linear_forward;
  using BackendProducts<float>::linear_grad_input, BackendProducts<double>::linear_grad_input;
  using BackendProducts<float>::linear_grad_weight, BackendProducts<double>::linear_grad_weight;
  using BackendProducts<float>::conv_forward, BackendProducts<double>::conv_forward;
  using BackendProducts<float>::conv_grad_input, BackendProducts<double>::conv_grad_input;
  using BackendProducts<float>::conv_grad_weight, BackendProducts<double>::conv_grad_weight;

  /// \brief A short name for messages and reports, e.g. "simulated".
  virtual const char* name() const = 0;
  /// \brief True when quantized operands reach the products as codes, false when as values.
  virtual bool multiplies_codes() const = 0;
};

namespace detail {
template <class Derived, class Scalar>
class ProductsFor : public virtual Backend {
  const Derived& self() const { return static_cast<const Derived&>(*this); }

 public:
  // The products of the other Scalar stay visible (no hidden overloads).
  using Backend::conv_forward, Backend::conv_grad_input, Backend::conv_grad_weight;
  using Backend::linear_forward, Backend::linear_grad_input, Backend::linear_grad_weight;

  void linear_forward(const Operand<Scalar>& x, const Operand<Scalar>& w, MatrixRef<Scalar> y,
                      std::unique_ptr<BackendState>& state) const override {
    self().template linear_forward_impl<Scalar>(x, w, y, state);
  }
  void linear_grad_input(const Operand<Scalar>& g, const Operand<Scalar>& w, MatrixRef<Scalar> dx,
                         std::unique_ptr<BackendState>& state) const override {
    self().template linear_grad_input_impl<Scalar>(g, w, dx, state);
  }
  void linear_grad_weight(const Operand<Scalar>& g, const Operand<Scalar>& x, MatrixRef<Scalar> dw,
                          std::unique_ptr<BackendState>& state) const override {
    self().template linear_grad_weight_impl<Scalar>(g, x, dw, state);
  }
  void conv_forward(const Conv2dGeometry& geometry, const Operand<Scalar>& x,
                    const Operand<Scalar>& w, MatrixRef<Scalar> y, ConvColumns columns,
                    std::unique_ptr<BackendState>& state) const override {
    self().template conv_forward_impl<Scalar>(geometry, x, w, y, columns, state);
  }
  void conv_grad_input(const Conv2dGeometry& geometry, const Operand<Scalar>& g,
                       const Operand<Scalar>& w, MatrixRef<Scalar> dx,
                       std::unique_ptr<BackendState>& state) const override {
    self().template conv_grad_input_impl<Scalar>(geometry, g, w, dx, state);
  }
  void conv_grad_weight(const Conv2dGeometry& geometry, const Operand<Scalar>& g,
                        const Operand<Scalar>& x, MatrixRef<Scalar> dw,
                        std::unique_ptr<BackendState>& state) const override {
    self().template conv_grad_weight_impl<Scalar>(geometry, g, x, dw, state);
  }
};
}  // namespace detail

/// \brief Base of a backend class `Derived` that defines the six products once, as member
/// templates `linear_forward_impl<Scalar>(...)`, ..., `conv_grad_weight_impl<Scalar>(...)` with
/// the signatures of BackendProducts, plus name() and multiplies_codes().
template <class Derived>
class BackendFor : public detail::ProductsFor<Derived, float>,
                   public detail::ProductsFor<Derived, double> {};

}  // namespace nn
}  // namespace fqt
