#pragma once
/// \file
/// \brief A small reverse-mode autograd: `Variable` (a shared handle to a value and its gradient),
/// `Tape` (the backward closures of one forward pass, replayed in reverse), and the differentiable
/// ops — linear, conv2d, relu, max_pool2d, flatten, batch_norm2d — each a thin wrapper over the
/// functional op of the same name (functional.hpp).
///
/// A batch is an N × (C·H·W) matrix; a Variable also carries the per-sample FeatureShape (C, H, W)
/// so that spatial ops know their geometry. Gradients accumulate: every op adds its contribution
/// to the `grad()` of its inputs, which is empty until the first contribution arrives.

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/functional.hpp"
#include "fqt/nn/policy.hpp"

namespace fqt {
namespace nn {

/// \brief The shape of one sample: C channels of H×W (a feature vector is C×1×1).
struct FeatureShape {
  Index channels = 0;  ///< C
  Index height = 1;    ///< H
  Index width = 1;     ///< W
  /// \brief C·H·W, the number of columns of a batch (not overflow-checked: a Variable checks its
  /// shape with checked_size() when it is built or reshaped).
  Index size() const { return channels * height * width; }
  /// \brief C·H·W; throws std::invalid_argument naming `where` unless every dimension is ≥ 0 and
  /// the product fits in an Index.
  Index checked_size(const char* where) const {
    check(channels >= 0 && height >= 0 && width >= 0, where, "shape dimensions must be >= 0, got ",
          channels, " x ", height, " x ", width);
    return detail::checked_product(where, "channels * height * width", {channels, height, width});
  }
  friend bool operator==(const FeatureShape& a, const FeatureShape& b) {
    return a.channels == b.channels && a.height == b.height && a.width == b.width;
  }
};

/// \brief A node of the computation: a value (N × features, one sample per row), its gradient and
/// whether gradients flow into it. Copies share the node (handle semantics): a layer's parameter,
/// the optimizer and the tape all see the same value and gradient.
template <class Scalar = float>
class Variable {
 public:
  /// \brief An undefined variable (e.g. "no bias").
  Variable() = default;
  /// \brief A variable of per-sample shape (cols, 1, 1).
  explicit Variable(Matrix<Scalar> value, bool requires_grad = false)
      : Variable(std::move(value), FeatureShape{}, requires_grad) {}
  /// \brief A variable with an explicit per-sample shape (shape.size() must equal value.cols()).
  Variable(Matrix<Scalar> value, FeatureShape shape, bool requires_grad = false)
      : node_(std::make_shared<Node>()), shape_(shape) {
    if (shape_.channels == 0) shape_ = FeatureShape{value.cols(), 1, 1};
    check(shape_.checked_size("nn::Variable") == value.cols(), "nn::Variable", "shape ",
          shape_.channels, " x ", shape_.height, " x ", shape_.width, " does not match ",
          value.cols(), " columns");
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
  }

  /// \brief True unless default-constructed.
  bool defined() const { return node_ != nullptr; }
  /// \brief The value, N × shape().size(). (Handle semantics: const does not protect the node.)
  Matrix<Scalar>& value() const { return node().value; }
  /// \brief The accumulated gradient; 0 × 0 until a gradient arrives or zero_grad() runs.
  Matrix<Scalar>& grad() const { return node().grad; }
  /// \brief True when a gradient has arrived.
  bool has_grad() const { return defined() && node_->grad.size() > 0; }
  /// \brief Whether backward computes a gradient for this variable.
  bool requires_grad() const { return defined() && node_->requires_grad; }
  /// \brief The per-sample shape.
  const FeatureShape& shape() const { return shape_; }
  /// \brief Rows of the value: the batch size N.
  Index batch() const { return value().rows(); }

  /// \brief Sets the gradient to zeros of the value's shape.
  void zero_grad() const { node().grad.setZero(node().value.rows(), node().value.cols()); }
  /// \brief grad += g (grad = g when empty).
  void accumulate_grad(Matrix<Scalar>&& g) const {
    Node& n = node();
    if (n.grad.size() == 0) {
      n.grad = std::move(g);
    } else {
      n.grad += g;
    }
  }
  /// \brief The same node seen with another per-sample shape of the same size (a view).
  Variable reshaped(FeatureShape shape) const {
    check(shape.checked_size("nn::Variable::reshaped") == shape_.size(), "nn::Variable::reshaped",
          "cannot view ", shape_.size(), " features as ", shape.channels, " x ", shape.height,
          " x ", shape.width);
    Variable v = *this;
    v.shape_ = shape;
    return v;
  }

 private:
  struct Node {
    Matrix<Scalar> value;
    Matrix<Scalar> grad;
    bool requires_grad = false;
  };
  Node& node() const {
    check(node_ != nullptr, "nn::Variable", "the variable is undefined");
    return *node_;
  }

  std::shared_ptr<Node> node_;
  FeatureShape shape_;
};

/// \brief The record of one forward pass: backward closures, run in reverse by backward().
template <class Scalar = float>
class Tape {
 public:
  /// \brief Appends the backward step of an op (run after every op recorded later).
  void record(std::function<void()> backward_step) { steps_.push_back(std::move(backward_step)); }

  /// \brief Seeds ∂loss/∂loss = 1 and runs every recorded step in reverse; the tape is empty
  /// afterwards (also when a step throws). Gradients accumulate into the variables' grad().
  /// \param loss a 1 × 1 variable that requires a gradient
  void backward(const Variable<Scalar>& loss) {
    std::vector<std::function<void()>> steps = std::move(steps_);
    steps_.clear();
    check(loss.defined() && loss.value().rows() == 1 && loss.value().cols() == 1,
          "nn::Tape::backward", "the loss must be a defined 1 x 1 variable, got ",
          loss.defined() ? loss.value().rows() : 0, " x ",
          loss.defined() ? loss.value().cols() : 0);
    check(loss.requires_grad(), "nn::Tape::backward",
          "the loss does not depend on any variable that requires a gradient");
    loss.accumulate_grad(Matrix<Scalar>::Ones(1, 1));
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) (*it)();
  }

  /// \brief Number of recorded steps.
  std::size_t size() const { return steps_.size(); }
  /// \brief Drops every recorded step (and the caches they hold).
  void clear() { steps_.clear(); }

 private:
  std::vector<std::function<void()>> steps_;
};

namespace detail {

template <class Scalar>
Eigen::Map<Vector<Scalar>> as_vector(Matrix<Scalar>& m) {
  return Eigen::Map<Vector<Scalar>>(m.data(), m.size());
}
template <class Scalar>
Eigen::Map<const Vector<Scalar>> as_const_vector(const Matrix<Scalar>& m) {
  return Eigen::Map<const Vector<Scalar>>(m.data(), m.size());
}

/// The gradient buffer of a parameter of shape rows × cols, zero-initialised when no gradient
/// has arrived yet (the shape is given: a weight whose float view an optimizer released has an
/// empty value).
template <class Scalar>
Matrix<Scalar>& parameter_grad(const Variable<Scalar>& v, Index rows, Index cols) {
  if (!v.has_grad()) v.grad().setZero(rows, cols);
  return v.grad();
}
/// The same for a parameter of its value's shape.
template <class Scalar>
Matrix<Scalar>& parameter_grad(const Variable<Scalar>& v) {
  return parameter_grad(v, v.value().rows(), v.value().cols());
}

/// \brief Records the backward step shared by linear and conv2d: backward(grad_output,
/// grad_input, grad_weight, grad_bias) overwrites grad_input (kept only when the input needs it)
/// and accumulates into the weight's (weight_rows × weight_cols) and the bias's gradients (empty
/// when they need none).
template <class Scalar, class Backward>
void record_weighted_backward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                              const Variable<Scalar>& weight, const Variable<Scalar>& bias,
                              const Variable<Scalar>& output, Index weight_rows, Index weight_cols,
                              Backward backward) {
  tape.record([input, weight, bias, output, weight_rows, weight_cols, backward]() {
    if (!output.has_grad()) return;
    Matrix<Scalar> grad_input, none;
    Vector<Scalar> no_bias_grad;
    if (input.requires_grad()) grad_input.resize(input.batch(), input.value().cols());
    Matrix<Scalar>& grad_weight =
        weight.requires_grad() ? parameter_grad(weight, weight_rows, weight_cols) : none;
    if (bias.requires_grad()) {
      auto grad_bias = as_vector(parameter_grad(bias));
      backward(output.grad(), grad_input, grad_weight, grad_bias);
    } else {
      backward(output.grad(), grad_input, grad_weight, no_bias_grad);
    }
    if (input.requires_grad()) input.accumulate_grad(std::move(grad_input));
  });
}

/// A cache that no live tape closure still uses (reused across steps; fresh when shared).
template <class Cache>
std::shared_ptr<Cache> free_cache(std::shared_ptr<Cache>& owned) {
  if (!owned || owned.use_count() > 1) owned = std::make_shared<Cache>();
  return owned;
}

}  // namespace detail

/// \brief Differentiable linear layer Y = Q_f(X)·Q_f(W)ᵀ + b (see linear_forward/backward).
/// \param bias an undefined Variable for no bias; else out × 1
/// \param streams the layer's gradient streams (Mode::FQT draws from them in backward)
/// \param cache reused if given and not held by another live tape step
template <class Scalar>
Variable<Scalar> linear(Tape<Scalar>& tape, const Variable<Scalar>& input,
                        const Variable<Scalar>& weight, const Variable<Scalar>& bias,
                        const QuantPolicy& policy, const GradientStreams& streams,
                        std::shared_ptr<LinearCache<Scalar>> cache = nullptr) {
  if (!cache) cache = std::make_shared<LinearCache<Scalar>>();
  // The recorded backward holds input and weight, whose values stay as they are until it runs.
  cache->borrow_exact_operands = true;
  const auto [out_features, in_features] =
      weight_shape(policy, weight.value(), cache->stored_weight, "nn::linear");
  Matrix<Scalar> out(input.batch(), out_features);
  const Vector<Scalar> no_bias;
  if (bias.defined()) {
    linear_forward(input.value(), weight.value(), detail::as_const_vector(bias.value()), policy,
                   *cache, out);
  } else {
    linear_forward(input.value(), weight.value(), no_bias, policy, *cache, out);
  }
  const bool needs_grad = input.requires_grad() || weight.requires_grad() || bias.requires_grad();
  Variable<Scalar> output(std::move(out), needs_grad);
  if (needs_grad) {
    detail::record_weighted_backward(tape, input, weight, bias, output, out_features, in_features,
                                     [streams, cache](const auto& grad_output, auto& grad_input,
                                                      auto& grad_weight, auto& grad_bias) {
                                       linear_backward(grad_output, *cache, streams, grad_input,
                                                       grad_weight, grad_bias);
                                     });
  }
  return output;
}

/// \brief Differentiable 2-D convolution (see conv2d_forward/backward). The geometry's input
/// channels and spatial size must match input.shape(); the output has shape (K, Ho, Wo). A pass
/// that records no backward (no operand requires a gradient) runs with ConvColumns::Recompute
/// whatever the cache asks, since there is nothing to keep.
template <class Scalar>
Variable<Scalar> conv2d(Tape<Scalar>& tape, const Variable<Scalar>& input,
                        const Variable<Scalar>& weight, const Variable<Scalar>& bias,
                        const Conv2dGeometry& geometry, const QuantPolicy& policy,
                        const GradientStreams& streams,
                        std::shared_ptr<Conv2dCache<Scalar>> cache = nullptr) {
  const FeatureShape& s = input.shape();
  check(s.channels == geometry.in_channels && s.height == geometry.in_height &&
            s.width == geometry.in_width,
        "nn::conv2d", "input shape ", s.channels, " x ", s.height, " x ", s.width,
        " does not match the geometry's ", geometry.in_channels, " x ", geometry.in_height, " x ",
        geometry.in_width);
  geometry.validate("nn::conv2d");
  if (!cache) cache = std::make_shared<Conv2dCache<Scalar>>();
  cache->borrow_exact_operands = true;  // the recorded backward holds the weight
  Matrix<Scalar> out(input.batch(), geometry.output_size());
  const Vector<Scalar> no_bias;
  const bool needs_grad = input.requires_grad() || weight.requires_grad() || bias.requires_grad();
  // A pass without a backward keeps nothing: its columns are built piece by piece.
  const ConvColumns requested = cache->columns;
  if (!needs_grad) cache->columns = ConvColumns::Recompute;
  try {
    if (bias.defined()) {
      conv2d_forward(input.value(), weight.value(), detail::as_const_vector(bias.value()), geometry,
                     policy, *cache, out);
    } else {
      conv2d_forward(input.value(), weight.value(), no_bias, geometry, policy, *cache, out);
    }
  } catch (...) {
    cache->columns = requested;
    throw;
  }
  cache->columns = requested;
  Variable<Scalar> output(
      std::move(out),
      FeatureShape{geometry.out_channels, geometry.out_height(), geometry.out_width()}, needs_grad);
  if (needs_grad) {
    detail::record_weighted_backward(
        tape, input, weight, bias, output, geometry.out_channels, geometry.patch_size(),
        [streams, cache](const auto& grad_output, auto& grad_input, auto& grad_weight,
                         auto& grad_bias) {
          conv2d_backward(grad_output, *cache, streams, grad_input, grad_weight, grad_bias);
        });
  }
  return output;
}

/// \brief Differentiable max(x, 0) (full precision).
template <class Scalar>
Variable<Scalar> relu(Tape<Scalar>& tape, const Variable<Scalar>& input) {
  Matrix<Scalar> out(input.batch(), input.value().cols());
  relu_forward(input.value(), out);
  Variable<Scalar> output(std::move(out), input.shape(), input.requires_grad());
  if (input.requires_grad()) {
    tape.record([input, output]() {
      if (!output.has_grad()) return;
      Matrix<Scalar> grad_input(output.batch(), output.value().cols());
      relu_backward(output.value(), output.grad(), grad_input);
      input.accumulate_grad(std::move(grad_input));
    });
  }
  return output;
}

/// \brief Differentiable max pooling over the input's (C, H, W) (full precision).
/// \param stride 0 means stride = kernel
template <class Scalar>
Variable<Scalar> max_pool2d(Tape<Scalar>& tape, const Variable<Scalar>& input, Index kernel,
                            Index stride = 0, Index padding = 0) {
  const FeatureShape& s = input.shape();
  const Pool2dGeometry geometry(s.channels, s.height, s.width, kernel, stride, padding);
  auto cache = std::make_shared<MaxPool2dCache<Scalar>>();
  geometry.validate("nn::max_pool2d");
  Matrix<Scalar> out(input.batch(), geometry.output_size());
  max_pool2d_forward(input.value(), geometry, *cache, out);
  Variable<Scalar> output(std::move(out),
                          FeatureShape{s.channels, geometry.out_height(), geometry.out_width()},
                          input.requires_grad());
  if (input.requires_grad()) {
    tape.record([input, output, cache]() {
      if (!output.has_grad()) return;
      Matrix<Scalar> grad_input(input.batch(), input.value().cols());
      max_pool2d_backward(output.grad(), *cache, grad_input);
      input.accumulate_grad(std::move(grad_input));
    });
  }
  return output;
}

/// \brief The same variable seen as a flat feature vector (C·H·W, 1, 1); no copy, no tape step.
template <class Scalar>
Variable<Scalar> flatten(const Variable<Scalar>& input) {
  return input.reshaped(FeatureShape{input.shape().size(), 1, 1});
}

/// \brief Differentiable batch normalisation over the input's channels (full precision).
/// \param gamma, beta C × 1 parameters
/// \param running_mean, running_var the layer's running statistics (updated in place when
///        batch_statistics and update_running)
template <class Scalar>
Variable<Scalar> batch_norm2d(Tape<Scalar>& tape, const Variable<Scalar>& input,
                              const Variable<Scalar>& gamma, const Variable<Scalar>& beta,
                              Vector<Scalar>& running_mean, Vector<Scalar>& running_var,
                              Scalar momentum, Scalar eps, bool batch_statistics,
                              bool update_running,
                              std::shared_ptr<BatchNorm2dCache<Scalar>> cache = nullptr) {
  if (!cache) cache = std::make_shared<BatchNorm2dCache<Scalar>>();
  Matrix<Scalar> out(input.batch(), input.value().cols());
  batch_norm2d_forward(input.value(), input.shape().channels,
                       detail::as_const_vector(gamma.value()),
                       detail::as_const_vector(beta.value()), running_mean, running_var, momentum,
                       eps, batch_statistics, update_running, *cache, out);
  const bool needs_grad = input.requires_grad() || gamma.requires_grad() || beta.requires_grad();
  Variable<Scalar> output(std::move(out), input.shape(), needs_grad);
  if (needs_grad) {
    tape.record([input, gamma, beta, output, cache]() {
      if (!output.has_grad()) return;
      Matrix<Scalar> grad_input, none_matrix;
      if (input.requires_grad()) grad_input.resize(input.batch(), input.value().cols());
      Vector<Scalar> none;
      auto grad_gamma = gamma.requires_grad() ? detail::as_vector(detail::parameter_grad(gamma))
                                              : Eigen::Map<Vector<Scalar>>(none.data(), 0);
      auto grad_beta = beta.requires_grad() ? detail::as_vector(detail::parameter_grad(beta))
                                            : Eigen::Map<Vector<Scalar>>(none.data(), 0);
      batch_norm2d_backward(output.grad(), detail::as_const_vector(gamma.value()), *cache,
                            grad_input, grad_gamma, grad_beta);
      if (input.requires_grad()) input.accumulate_grad(std::move(grad_input));
    });
  }
  return output;
}

}  // namespace nn
}  // namespace fqt
