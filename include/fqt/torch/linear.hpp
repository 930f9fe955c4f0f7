#pragma once
/// \file
/// \brief fqt::torch::linear and fqt::torch::Linear: a linear layer for libtorch whose forward
/// quantizes X and W with Q_f and whose backward quantizes the output gradient with Q_b1 / Q_b2,
/// as fqt::nn::linear_forward / linear_backward do.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/nn/ops/linear.hpp"
#include "fqt/torch/layer_state.hpp"

namespace fqt {
namespace torch {
namespace detail {

/// The autograd node of one linear pass: it owns the pass's workspace (returned to the layer's
/// pool when the node releases its variables) and the operands the backward products need.
template <class Scalar>
struct LinearBackward : PassNode<Scalar> {
  using PassNode<Scalar>::ws, PassNode<Scalar>::policy, PassNode<Scalar>::streams,
      PassNode<Scalar>::engine, PassNode<Scalar>::input_operand, PassNode<Scalar>::weight_operand,
      PassNode<Scalar>::has_bias;
  c10::SmallVector<std::int64_t, 6> input_sizes;
  Index batch = 0, in = 0, out = 0;

  std::string name() const override { return "fqt::torch::LinearBackward"; }

  ::torch::autograd::variable_list apply(::torch::autograd::variable_list&& grads) override {
    constexpr const char* kWhere = "torch::linear (backward)";
    this->check_alive(kWhere);
    const bool want_input = this->should_compute_output(0);
    const bool want_weight = this->should_compute_output(1);
    const bool want_bias = has_bias && this->should_compute_output(2);
    ::torch::autograd::variable_list result(3);
    if (!grads[0].defined()) return result;
    const ::torch::Tensor g = grads[0].contiguous().view({batch, out});
    if (engine == Engine::Fqt) {
      ::torch::Tensor gi, gw, gb;
      const auto options = g.options();
      if (want_input) gi = ::torch::empty({batch, in}, options);
      if (want_weight) gw = ::torch::zeros({out, in}, options);
      if (want_bias) gb = ::torch::zeros({out}, options);
      Matrix<Scalar> none;
      Vector<Scalar> no_bias;
      nn::linear_backward<Scalar>(
          const_matrix<Scalar>(g, batch, out), ws->linear, streams,
          want_input ? MatrixRef<Scalar>(matrix<Scalar>(gi, batch, in)) : MatrixRef<Scalar>(none),
          want_weight ? MatrixRef<Scalar>(matrix<Scalar>(gw, out, in)) : MatrixRef<Scalar>(none),
          want_bias ? VectorRef<Scalar>(Eigen::Map<Vector<Scalar>>(gb.data_ptr<Scalar>(), out))
                    : VectorRef<Scalar>(no_bias));
      if (want_input) result[0] = gi.view(input_sizes);
      result[1] = gw;
      result[2] = gb;
      return result;
    }
    ::torch::NoGradGuard no_grad;
    const auto [g1, g2] = gradient_operands<Scalar>(policy, g, batch, out, out, streams, want_input,
                                                    want_weight, *ws, kWhere);
    if (want_input) result[0] = ::torch::mm(g1, weight_operand).view(input_sizes);
    if (want_weight) result[1] = ::torch::mm(g2.t(), input_operand);
    if (want_bias) result[2] = g.sum(0);
    return result;
  }
};

template <class Scalar>
::torch::Tensor linear(const ::torch::Tensor& input, const ::torch::Tensor& weight,
                       const ::torch::Tensor& bias, LayerState& state) {
  constexpr const char* kWhere = "torch::linear";
  const bool record = ::torch::autograd::compute_requires_grad(input, weight, bias);
  const nn::QuantPolicy& policy = state.quantization().policy;
  const Engine engine = state.engine();
  const Index in = weight.size(1), out = weight.size(0);
  const ::torch::Tensor x = input.contiguous(), w = weight.contiguous();
  const ::torch::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const Index batch = x.numel() / in;
  c10::SmallVector<std::int64_t, 6> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = out;

  auto ws = state.pool<Scalar>()->acquire();
  ::torch::Tensor y, x_operand, w_operand;
  if (engine == Engine::Fqt) {
    y = ::torch::empty({batch, out}, x.options());
    Vector<Scalar> no_bias;
    nn::linear_forward<Scalar>(const_matrix<Scalar>(x, batch, in), const_matrix<Scalar>(w, out, in),
                               b.defined() ? VectorCRef<Scalar>(Eigen::Map<const Vector<Scalar>>(
                                                 b.data_ptr<Scalar>(), out))
                                           : VectorCRef<Scalar>(no_bias),
                               policy, ws->linear, matrix<Scalar>(y, batch, out));
  } else {
    ::torch::NoGradGuard no_grad;
    const ::torch::Tensor x2 = x.view({batch, in});
    x_operand =
        forward_operand<Scalar>(policy, policy.activation_spec(), x2, ws->input, kWhere, "input");
    w_operand =
        forward_operand<Scalar>(policy, policy.weight_spec(), w, ws->weight, kWhere, "weight");
    if (b.defined()) {
      fqt::nn::detail::check_finite(Eigen::Map<const Vector<Scalar>>(b.data_ptr<Scalar>(), out),
                                    kWhere, "bias");
      y = ::torch::addmm(b, x_operand, w_operand.t());
    } else {
      y = ::torch::mm(x_operand, w_operand.t());
    }
  }
  y = y.view(out_sizes);
  if (!record) return y;

  auto node = std::shared_ptr<LinearBackward<Scalar>>(new LinearBackward<Scalar>(),
                                                      ::torch::autograd::deleteNode);
  node->input_sizes.assign(x.sizes().begin(), x.sizes().end());
  node->batch = batch, node->in = in, node->out = out;
  record_pass<Scalar>(node, std::move(ws), state, std::move(x_operand), std::move(w_operand), input,
                      weight, bias, y);
  return y;
}

}  // namespace detail

/// \brief y = x·Wᵀ + b with fqt's quantization (the state's policy and engine), differentiable:
/// the backward pass quantizes ∂L/∂y with the policy's Q_b1 (grad-input) and Q_b2 (grad-weight)
/// from the state's next streams. Like torch::nn::functional::linear, x is (…, in) and W is
/// (out, in); b is (out) or undefined.
/// \throws std::invalid_argument on a non-CPU, non-float/double or mismatched tensor or shape,
///         std::domain_error on NaN/Inf in x, W, b or (in backward) ∂L/∂y. Non-contiguous tensors
///         are copied (as libtorch's own ops accept them).
inline ::torch::Tensor linear(const ::torch::Tensor& input, const ::torch::Tensor& weight,
                              const ::torch::Tensor& bias, LayerState& state) {
  constexpr const char* kWhere = "torch::linear";
  detail::check_tensor(input, kWhere, "input", -1);
  detail::check_tensor(weight, kWhere, "weight", 2, &input);
  check(input.dim() >= 1 && input.size(-1) == weight.size(1), kWhere, "input has ",
        input.dim() >= 1 ? input.size(-1) : 0, " features but weight (", weight.size(0), " x ",
        weight.size(1), ") expects ", weight.size(1));
  check(weight.size(0) > 0 && weight.size(1) > 0, kWhere, "weight must be non-empty, got ",
        weight.size(0), " x ", weight.size(1));
  check(input.numel() > 0, kWhere, "input is empty (", input.numel(), " elements)");
  if (bias.defined()) {
    detail::check_tensor(bias, kWhere, "bias", 1, &input);
    check(bias.size(0) == weight.size(0), kWhere, "bias has size ", bias.size(0), ", expected ",
          weight.size(0));
  }
  return detail::dispatch(input, [&](auto scalar) {
    return detail::linear<decltype(scalar)>(input, weight, bias, state);
  });
}

/// \brief A drop-in for torch::nn::Linear (same options, parameters "weight" and "bias", same
/// initialisation) whose forward is fqt::torch::linear with its own LayerState. The state's
/// stream is the buffer "fqt_stream".
class LinearImpl : public ::torch::nn::LinearImpl {
 public:
  LinearImpl(std::int64_t in_features, std::int64_t out_features, Quantization q = {})
      : LinearImpl(::torch::nn::LinearOptions(in_features, out_features), std::move(q)) {}
  explicit LinearImpl(const ::torch::nn::LinearOptions& options, Quantization q = {})
      : ::torch::nn::LinearImpl(options), state_(std::make_shared<LayerState>(std::move(q))) {
    state_->stream() = register_buffer("fqt_stream", state_->stream());
  }

  /// \brief fqt::torch::linear(input, weight, bias, state()).
  ::torch::Tensor forward(const ::torch::Tensor& input) {
    return fqt::torch::linear(input, weight, bias, *state_);
  }

  /// \brief The layer's quantization, stream and workspaces.
  LayerState& state() { return *state_; }
  const LayerState& state() const { return *state_; }

  /// \brief A deep copy of parameters and buffers with the same quantization and stream.
  std::shared_ptr<::torch::nn::Module> clone(
      const c10::optional<::torch::Device>& device = c10::nullopt) const override {
    return detail::clone_layer<LinearImpl>(*this, options, *state_, device, "torch::Linear::clone");
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "fqt::torch::Linear(in_features=" << options.in_features()
           << ", out_features=" << options.out_features() << ", bias=" << options.bias()
           << ", mode=" << nn::to_string(state_->quantization().policy.mode)
           << ", engine=" << to_string(state_->engine()) << ")";
  }

 private:
  std::shared_ptr<LayerState> state_;
};
/// \brief The module holder of LinearImpl (what TORCH_MODULE declares, spelled out so that it names
/// libtorch's ModuleHolder from inside namespace fqt::torch).
class Linear : public ::torch::nn::ModuleHolder<LinearImpl> {
 public:
  using ::torch::nn::ModuleHolder<LinearImpl>::ModuleHolder;
  using Impl = LinearImpl;
};

}  // namespace torch
}  // namespace fqt
