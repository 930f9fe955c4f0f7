#pragma once
/// \file
/// \brief fqt::torch::conv2d and fqt::torch::Conv2d: a 2-D convolution for libtorch whose forward
/// quantizes X and W with Q_f and whose backward quantizes the output gradient with Q_b1 / Q_b2
/// (per output channel for a per-channel Q_b2), as fqt::nn::conv2d_forward / conv2d_backward do.

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

#include <array>
#include <memory>
#include <string>
#include <utility>

#include "fqt/core/error.hpp"
#include "fqt/nn/geometry.hpp"
#include "fqt/nn/ops/conv2d.hpp"
#include "fqt/torch/layer_state.hpp"

namespace fqt {
namespace torch {

/// \brief The geometry knobs of a 2-D convolution, as torch::nn::functional::conv2d takes them
/// (explicit, symmetric zero padding).
struct Conv2dParams {
  std::array<std::int64_t, 2> stride{1, 1};
  std::array<std::int64_t, 2> padding{0, 0};
  std::array<std::int64_t, 2> dilation{1, 1};
  std::int64_t groups = 1;
};

namespace detail {

template <class Scalar>
struct Conv2dBackward : PassNode<Scalar> {
  using PassNode<Scalar>::ws, PassNode<Scalar>::policy, PassNode<Scalar>::streams,
      PassNode<Scalar>::engine, PassNode<Scalar>::input_operand, PassNode<Scalar>::weight_operand,
      PassNode<Scalar>::has_bias;
  Conv2dParams params;
  c10::SmallVector<std::int64_t, 4> input_sizes, weight_sizes;

  std::string name() const override { return "fqt::torch::Conv2dBackward"; }

  ::torch::autograd::variable_list apply(::torch::autograd::variable_list&& grads) override {
    constexpr const char* kWhere = "torch::conv2d (backward)";
    this->check_alive(kWhere);
    const bool want_input = this->should_compute_output(0);
    const bool want_weight = this->should_compute_output(1);
    const bool want_bias = has_bias && this->should_compute_output(2);
    ::torch::autograd::variable_list result(3);
    if (!grads[0].defined()) return result;
    const ::torch::Tensor g = grads[0].contiguous();
    const Index n = g.size(0), k = g.size(1), cols = g.numel() / std::max<Index>(n, 1);
    if (engine == Engine::Fqt) {
      const Index in_cols = input_sizes[1] * input_sizes[2] * input_sizes[3];
      const Index patch = weight_sizes[1] * weight_sizes[2] * weight_sizes[3];
      ::torch::Tensor gi, gw, gb;
      if (want_input) gi = ::torch::empty(input_sizes, g.options());
      if (want_weight) gw = ::torch::zeros(weight_sizes, g.options());
      if (want_bias) gb = ::torch::zeros({k}, g.options());
      Matrix<Scalar> none;
      Vector<Scalar> no_bias;
      nn::conv2d_backward<Scalar>(
          const_matrix<Scalar>(g, n, cols), ws->conv, streams,
          want_input ? MatrixRef<Scalar>(matrix<Scalar>(gi, n, in_cols)) : MatrixRef<Scalar>(none),
          want_weight ? MatrixRef<Scalar>(matrix<Scalar>(gw, k, patch)) : MatrixRef<Scalar>(none),
          want_bias ? VectorRef<Scalar>(Eigen::Map<Vector<Scalar>>(gb.data_ptr<Scalar>(), k))
                    : VectorRef<Scalar>(no_bias));
      result[0] = gi;
      result[1] = gw;
      result[2] = gb;
      return result;
    }
    ::torch::NoGradGuard no_grad;
    const auto [g1, g2] = gradient_operands<Scalar>(policy, g, n, cols, k, streams, want_input,
                                                    want_weight, *ws, kWhere);
    const auto backward = [&](const ::torch::Tensor& gq, bool input, bool weight) {
      return at::convolution_backward(gq, input_operand, weight_operand, c10::nullopt,
                                      params.stride, params.padding, params.dilation, false, {0, 0},
                                      params.groups, {input, weight, false});
    };
    if (want_input && want_weight && g1.is_same(g2)) {
      std::tie(result[0], result[1], std::ignore) = backward(g1, true, true);
    } else {
      if (want_input) result[0] = std::get<0>(backward(g1, true, false));
      if (want_weight) result[1] = std::get<1>(backward(g2, false, true));
    }
    if (want_bias) result[2] = g.sum({0, 2, 3});
    return result;
  }
};

inline nn::Conv2dGeometry geometry_of(const ::torch::Tensor& x, const ::torch::Tensor& w,
                                      const Conv2dParams& p) {
  nn::Conv2dGeometry g;
  g.in_channels = x.size(1), g.in_height = x.size(2), g.in_width = x.size(3);
  g.out_channels = w.size(0);
  g.kernel_height = w.size(2), g.kernel_width = w.size(3);
  g.stride_height = p.stride[0], g.stride_width = p.stride[1];
  g.padding_height = p.padding[0], g.padding_width = p.padding[1];
  return g;
}

template <class Scalar>
::torch::Tensor conv2d(const ::torch::Tensor& input, const ::torch::Tensor& weight,
                       const ::torch::Tensor& bias, const Conv2dParams& params, LayerState& state) {
  constexpr const char* kWhere = "torch::conv2d";
  const bool record = ::torch::autograd::compute_requires_grad(input, weight, bias);
  const nn::QuantPolicy& policy = state.quantization().policy;
  const Engine engine = state.engine();
  const ::torch::Tensor x = input.contiguous(), w = weight.contiguous();
  const ::torch::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const Index n = x.size(0), k = w.size(0);

  auto ws = state.pool<Scalar>()->acquire();
  ::torch::Tensor y, x_operand, w_operand;
  if (engine == Engine::Fqt) {
    check(params.groups == 1 && params.dilation[0] == 1 && params.dilation[1] == 1, kWhere,
          "Engine::Fqt runs convolutions without groups or dilation, got groups ", params.groups,
          ", dilation ", params.dilation[0], " x ", params.dilation[1],
          " (Engine::Torch runs them)");
    const nn::Conv2dGeometry g = geometry_of(x, w, params);
    g.validate(kWhere);
    y = ::torch::empty({n, k, g.out_height(), g.out_width()}, x.options());
    Vector<Scalar> no_bias;
    ws->conv.columns = state.quantization().conv_columns;
    nn::conv2d_forward<Scalar>(
        const_matrix<Scalar>(x, n, g.input_size()), const_matrix<Scalar>(w, k, g.patch_size()),
        b.defined() ? VectorCRef<Scalar>(Eigen::Map<const Vector<Scalar>>(b.data_ptr<Scalar>(), k))
                    : VectorCRef<Scalar>(no_bias),
        g, policy, ws->conv, matrix<Scalar>(y, n, g.output_size()));
  } else {
    ::torch::NoGradGuard no_grad;
    x_operand =
        forward_operand<Scalar>(policy, policy.activation_spec(), x, ws->input, kWhere, "input");
    w_operand =
        forward_operand<Scalar>(policy, policy.weight_spec(), w, ws->weight, kWhere, "weight");
    if (b.defined()) {
      fqt::nn::detail::check_finite(Eigen::Map<const Vector<Scalar>>(b.data_ptr<Scalar>(), k),
                                    kWhere, "bias");
    }
    y = at::convolution(x_operand, w_operand, b, params.stride, params.padding, params.dilation,
                        false, {0, 0}, params.groups);
  }
  if (!record) return y;

  auto node = std::shared_ptr<Conv2dBackward<Scalar>>(new Conv2dBackward<Scalar>(),
                                                      ::torch::autograd::deleteNode);
  node->params = params;
  node->input_sizes.assign(x.sizes().begin(), x.sizes().end());
  node->weight_sizes.assign(w.sizes().begin(), w.sizes().end());
  record_pass<Scalar>(node, std::move(ws), state, std::move(x_operand), std::move(w_operand), input,
                      weight, bias, y);
  return y;
}

}  // namespace detail

/// \brief conv2d(x, W) + b with fqt's quantization (the state's policy and engine),
/// differentiable; x is N × C × H × W, W is K × (C / groups) × kh × kw, b is (K) or undefined.
/// The grad-weight quantizer sees ∂L/∂y as the N × (K·Ho·Wo) matrix of its samples, so per-channel
/// Q_b2 has one scale per output channel.
/// \throws std::invalid_argument on a non-CPU, non-float/double or mismatched tensor, a bad shape
///         or parameter, std::domain_error on NaN/Inf in x, W, b or (in backward) ∂L/∂y.
///         Non-contiguous tensors are copied.
inline ::torch::Tensor conv2d(const ::torch::Tensor& input, const ::torch::Tensor& weight,
                              const ::torch::Tensor& bias, const Conv2dParams& params,
                              LayerState& state) {
  constexpr const char* kWhere = "torch::conv2d";
  detail::check_tensor(input, kWhere, "input", 4);
  detail::check_tensor(weight, kWhere, "weight", 4, &input);
  check(params.groups >= 1 && weight.size(0) % params.groups == 0 &&
            input.size(1) == weight.size(1) * params.groups,
        kWhere, "input has ", input.size(1), " channels, weight expects ",
        weight.size(1) * params.groups, " (", weight.size(1), " per group, groups ", params.groups,
        ", and out_channels ", weight.size(0), " must divide by groups)");
  for (int d = 0; d < 2; ++d) {
    check(params.stride[d] >= 1 && params.dilation[d] >= 1 && params.padding[d] >= 0, kWhere,
          "stride and dilation must be positive and padding non-negative, got stride ",
          params.stride[d], ", dilation ", params.dilation[d], ", padding ", params.padding[d]);
    const std::int64_t span = params.dilation[d] * (weight.size(2 + d) - 1) + 1;
    check(input.size(2 + d) + 2 * params.padding[d] >= span, kWhere, "the kernel (span ", span,
          ") does not fit in the padded input (", input.size(2 + d), " + 2 * ", params.padding[d],
          ")");
  }
  check(input.numel() > 0 && weight.numel() > 0, kWhere, "input and weight must be non-empty, got ",
        input.numel(), " and ", weight.numel(), " elements");
  if (bias.defined()) {
    detail::check_tensor(bias, kWhere, "bias", 1, &input);
    check(bias.size(0) == weight.size(0), kWhere, "bias has size ", bias.size(0), ", expected ",
          weight.size(0));
  }
  return detail::dispatch(input, [&](auto scalar) {
    return detail::conv2d<decltype(scalar)>(input, weight, bias, params, state);
  });
}

/// \brief A drop-in for torch::nn::Conv2d (same options, parameters and initialisation) whose
/// forward is fqt::torch::conv2d with its own LayerState (buffer "fqt_stream"). Zero padding only
/// (explicit, kValid, or kSame with an odd dilated kernel).
class Conv2dImpl : public ::torch::nn::Conv2dImpl {
 public:
  explicit Conv2dImpl(const ::torch::nn::Conv2dOptions& options, Quantization q = {})
      : ::torch::nn::Conv2dImpl(options),
        conv_options_(options),
        params_(params_of(options)),
        state_(std::make_shared<LayerState>(std::move(q))) {
    state_->stream() = register_buffer("fqt_stream", state_->stream());
  }

  /// \brief fqt::torch::conv2d(input, weight, bias, params(), state()).
  ::torch::Tensor forward(const ::torch::Tensor& input) {
    return fqt::torch::conv2d(input, weight, bias, params_, *state_);
  }

  /// \brief The layer's quantization, stream and workspaces.
  LayerState& state() { return *state_; }
  const LayerState& state() const { return *state_; }
  /// \brief Stride, padding, dilation and groups.
  const Conv2dParams& params() const { return params_; }

  std::shared_ptr<::torch::nn::Module> clone(
      const c10::optional<::torch::Device>& device = c10::nullopt) const override {
    return detail::clone_layer<Conv2dImpl>(*this, conv_options_, *state_, device,
                                           "torch::Conv2d::clone");
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "fqt::torch::Conv2d(" << options.in_channels() << ", " << options.out_channels()
           << ", kernel_size=" << options.kernel_size()
           << ", mode=" << nn::to_string(state_->quantization().policy.mode)
           << ", engine=" << to_string(state_->engine()) << ")";
  }

 private:
  static Conv2dParams params_of(const ::torch::nn::Conv2dOptions& o) {
    constexpr const char* kWhere = "torch::Conv2d";
    check(c10::get_if<::torch::enumtype::kZeros>(&o.padding_mode()) != nullptr, kWhere,
          "only zero padding is supported (padding_mode kZeros)");
    Conv2dParams p;
    for (int d = 0; d < 2; ++d) {
      p.stride[d] = (*o.stride())[d];
      p.dilation[d] = (*o.dilation())[d];
    }
    p.groups = o.groups();
    if (const auto* explicit_padding = c10::get_if<::torch::ExpandingArray<2>>(&o.padding())) {
      for (int d = 0; d < 2; ++d) p.padding[d] = (**explicit_padding)[d];
    } else if (c10::get_if<::torch::enumtype::kSame>(&o.padding())) {
      for (int d = 0; d < 2; ++d) {
        const std::int64_t total = p.dilation[d] * ((*o.kernel_size())[d] - 1);
        check(total % 2 == 0, kWhere,
              "padding kSame needs an odd dilated kernel (symmetric padding), got kernel ",
              (*o.kernel_size())[d], " with dilation ", p.dilation[d]);
        p.padding[d] = total / 2;
      }
    }
    return p;
  }

  ::torch::nn::Conv2dOptions conv_options_;
  Conv2dParams params_;
  std::shared_ptr<LayerState> state_;
};
/// \brief The module holder of Conv2dImpl (what TORCH_MODULE declares, spelled out so that it names
/// libtorch's ModuleHolder from inside namespace fqt::torch).
class Conv2d : public ::torch::nn::ModuleHolder<Conv2dImpl> {
 public:
  using ::torch::nn::ModuleHolder<Conv2dImpl>::ModuleHolder;
  using Impl = Conv2dImpl;
};

}  // namespace torch
}  // namespace fqt
