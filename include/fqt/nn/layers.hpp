#pragma once
/// \file
/// \brief Layer classes over the autograd ops: Linear, Conv2d (quantized per the policy), ReLU,
/// MaxPool2d, Flatten, BatchNorm2d (full precision, as in the paper) and Sequential.
///
/// A model has one QuantPolicy (in the Context of a forward pass); any layer may override it with
/// set_policy (e.g. keep the first and last layer at 8 bits). Each layer has a layer id (its
/// position, assigned by Sequential) and draws its gradient noise from
/// gradient_streams(context.rng, context.step, layer id): the quantization noise of a training
/// step is a pure function of (seed, step, layer, role).

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/autograd.hpp"
#include "fqt/nn/functional.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/nn/weight_storage.hpp"

namespace fqt {
namespace nn {

/// \brief What one forward pass needs besides its input.
struct Context {
  QuantPolicy policy;      ///< the model's policy (layers may override it)
  Philox rng;              ///< root stream; layer noise is rng.substream(step, layer, role)
  std::uint64_t step = 0;  ///< training step: fresh gradient noise every step
  bool training = true;    ///< BatchNorm2d: batch statistics (true) or running statistics
  bool update_running_statistics = true;  ///< BatchNorm2d: update running statistics in training
  /// When false, layers whose policy says FQT run as QAT: the same forward pass with
  /// full-precision gradients (the reference of Theorem 1; see nn/profile.hpp).
  bool quantize_gradients = true;
  /// Which backward quantizers FQT layers run: GradientPaths::Both, or one alone (overrides the
  /// policies' quantized_paths when not Both; see nn/profile.hpp's split by path).
  GradientPaths gradient_paths = GradientPaths::Both;
};

/// \brief A named trainable tensor of a model.
template <class Scalar = float>
struct Parameter {
  std::string name;           ///< e.g. "0.weight" inside a Sequential
  Variable<Scalar> variable;  ///< value and gradient (shared with the layer)
  bool weight_decay = true;   ///< whether SGD applies weight decay (false: biases, BatchNorm)
  /// The layer's slot for the weight's stored codes (linear and conv weights; null otherwise):
  /// an optimizer that keeps them as 8-bit codes (nn::QuantizedSGD) fills it, and the layer's
  /// forward product then multiplies them (see nn::StoredWeight)
  std::shared_ptr<StoredWeight> stored = nullptr;
};

/// \brief Base class of layers.
template <class Scalar = float>
class Module {
 public:
  virtual ~Module() = default;

  /// \brief Computes the layer on `input`, recording its backward step on `tape`.
  virtual Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                                   const Context& context) = 0;
  /// \brief The layer's kind, e.g. "Linear".
  virtual std::string name() const = 0;
  /// \brief The trainable tensors (shared handles).
  virtual std::vector<Parameter<Scalar>> parameters() const { return {}; }
  /// \brief Re-initialises the parameters from `rng` (Kaiming normal for weights, zero biases).
  virtual void reset_parameters(const Philox& rng) { (void)rng; }

  /// \brief Overrides the model's policy for this layer (and, for Sequential, for its layers
  /// without an override of their own). Throws std::invalid_argument on invalid bit widths.
  void set_policy(const QuantPolicy& policy) {
    policy.validate("nn::Module::set_policy");
    policy_ = policy;
  }
  /// \brief Removes the override.
  void clear_policy() { policy_.reset(); }
  /// \brief The override, if any.
  const std::optional<QuantPolicy>& policy_override() const { return policy_; }
  /// \brief The override if set, else the model's policy.
  const QuantPolicy& effective_policy(const QuantPolicy& model) const {
    return policy_ ? *policy_ : model;
  }
  /// \brief The policy this layer runs with in `context`: the override if set, else the model's
  /// policy; FQT becomes QAT when context.quantize_gradients is false, and runs one backward
  /// quantizer alone when context.gradient_paths says so.
  QuantPolicy resolve_policy(const Context& context) const {
    QuantPolicy p = effective_policy(context.policy);
    if (!context.quantize_gradients && p.mode == Mode::FQT) p.mode = Mode::QAT;
    if (context.gradient_paths != GradientPaths::Both) p.quantized_paths = context.gradient_paths;
    return p;
  }

  /// \brief The id that keys this layer's random streams.
  std::uint64_t layer_id() const { return layer_id_; }
  /// \brief Assigns ids from `first` on; returns the next free id.
  virtual std::uint64_t assign_layer_ids(std::uint64_t first) {
    layer_id_ = first;
    return first + 1;
  }

 protected:
  /// \brief The gradient streams of this layer for the context's step.
  GradientStreams streams(const Context& context) const {
    return gradient_streams(context.rng, context.step, layer_id_);
  }

 private:
  std::optional<QuantPolicy> policy_;
  std::uint64_t layer_id_ = 0;
};

namespace detail {
/// Kaiming (He) normal initialisation: N(0, 2/fan_in), element k from rng.normal(k).
template <class Scalar>
void kaiming_normal(Matrix<Scalar>& w, Index fan_in, const Philox& rng) {
  const double std_dev = std::sqrt(2.0 / static_cast<double>(fan_in));
  for (Index k = 0; k < w.size(); ++k) {
    w.data()[k] = static_cast<Scalar>(std_dev * rng.normal(static_cast<std::uint64_t>(k)));
  }
}
}  // namespace detail

/// \brief Fully connected layer Y = Q_f(X)·Q_f(W)ᵀ + b with W out × in (Kaiming-normal) and
/// b out × 1 (zeros). Its backward follows the policy (FQT: two independent gradient draws).
template <class Scalar = float>
class Linear : public Module<Scalar> {
 public:
  /// \param init the stream of the initial weights
  Linear(Index in_features, Index out_features, const Philox& init, bool bias = true)
      : in_(in_features), out_(out_features) {
    check(in_features > 0 && out_features > 0, "nn::Linear",
          "in_features and out_features must be positive, got ", in_features, " and ",
          out_features);
    detail::checked_product("nn::Linear", "out_features * in_features",
                            {out_features, in_features});
    weight_ = Variable<Scalar>(Matrix<Scalar>(out_, in_), true);
    if (bias) bias_ = Variable<Scalar>(Matrix<Scalar>(out_, 1), true);
    reset_parameters(init);
  }

  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context& context) override {
    check(input.value().cols() == in_, "nn::Linear::forward", "input has ", input.value().cols(),
          " features, expected in_features = ", in_);
    std::shared_ptr<LinearCache<Scalar>> cache = detail::free_cache(cache_);
    cache->stored_weight = stored_->codes;
    return linear(tape, input, weight_, bias_, this->resolve_policy(context),
                  this->streams(context), std::move(cache));
  }
  std::string name() const override { return "Linear"; }
  /// \brief The bytes the layer's cache holds between steps (operands, the backend's state).
  std::size_t cache_bytes() const { return cache_ ? cache_->bytes() : 0; }
  std::vector<Parameter<Scalar>> parameters() const override {
    std::vector<Parameter<Scalar>> p{{"weight", weight_, true, stored_}};
    if (bias_.defined()) p.push_back({"bias", bias_, false});
    return p;
  }
  void reset_parameters(const Philox& rng) override {
    detail::kaiming_normal(weight_.value(), in_, rng);
    if (bias_.defined()) bias_.value().setZero();
  }
  /// \brief W, out × in.
  const Variable<Scalar>& weight() const { return weight_; }
  /// \brief b, out × 1 (undefined without bias).
  const Variable<Scalar>& bias() const { return bias_; }

 private:
  Index in_, out_;
  Variable<Scalar> weight_, bias_;
  std::shared_ptr<StoredWeight> stored_ = std::make_shared<StoredWeight>();
  std::shared_ptr<LinearCache<Scalar>> cache_;
};

/// \brief 2-D convolution with a square kernel, W of shape K × (C·k·k) (Kaiming-normal, fan-in
/// C·k·k) and b K × 1 (zeros); the spatial size is taken from the input's shape.
template <class Scalar = float>
class Conv2d : public Module<Scalar> {
 public:
  Conv2d(Index in_channels, Index out_channels, Index kernel, Index stride, Index padding,
         const Philox& init, bool bias = true)
      : in_channels_(in_channels),
        out_channels_(out_channels),
        kernel_(kernel),
        stride_(stride),
        padding_(padding) {
    check(in_channels > 0 && out_channels > 0 && kernel > 0 && stride > 0 && padding >= 0,
          "nn::Conv2d", "need positive channels, kernel and stride and padding >= 0, got ",
          in_channels, ", ", out_channels, ", ", kernel, ", ", stride, ", ", padding);
    const Index patch = detail::checked_product("nn::Conv2d", "in_channels * kernel * kernel",
                                                {in_channels, kernel, kernel});
    detail::checked_product("nn::Conv2d", "out_channels * in_channels * kernel * kernel",
                            {out_channels, patch});
    weight_ = Variable<Scalar>(Matrix<Scalar>(out_channels, patch), true);
    if (bias) bias_ = Variable<Scalar>(Matrix<Scalar>(out_channels, 1), true);
    reset_parameters(init);
  }

  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context& context) override {
    const FeatureShape& s = input.shape();
    check(s.channels == in_channels_, "nn::Conv2d::forward", "input has ", s.channels,
          " channels, expected in_channels = ", in_channels_);
    const Conv2dGeometry g(in_channels_, s.height, s.width, out_channels_, kernel_, stride_,
                           padding_);
    std::shared_ptr<Conv2dCache<Scalar>> cache = detail::free_cache(cache_);
    // Outside training nothing needs the columns later (a backward pass still gets the same bits).
    cache->columns = context.training ? columns_ : ConvColumns::Recompute;
    cache->stored_weight = stored_->codes;
    return conv2d(tape, input, weight_, bias_, g, this->resolve_policy(context),
                  this->streams(context), std::move(cache));
  }
  std::string name() const override { return "Conv2d"; }
  /// \brief What the layer keeps of its input for the backward pass in training (see
  /// Conv2dCache::columns): the whole batch's im2col columns (Keep, the default) or only X̂
  /// (Recompute). Passes with Context::training false always recompute.
  void set_columns(ConvColumns columns) { columns_ = columns; }
  ConvColumns columns() const { return columns_; }
  /// \brief The bytes the layer's cache holds between steps (operands, the backend's state).
  std::size_t cache_bytes() const { return cache_ ? cache_->bytes() : 0; }
  std::vector<Parameter<Scalar>> parameters() const override {
    std::vector<Parameter<Scalar>> p{{"weight", weight_, true, stored_}};
    if (bias_.defined()) p.push_back({"bias", bias_, false});
    return p;
  }
  void reset_parameters(const Philox& rng) override {
    detail::kaiming_normal(weight_.value(), in_channels_ * kernel_ * kernel_, rng);
    if (bias_.defined()) bias_.value().setZero();
  }
  /// \brief W, K × (C·k·k).
  const Variable<Scalar>& weight() const { return weight_; }
  /// \brief b, K × 1 (undefined without bias).
  const Variable<Scalar>& bias() const { return bias_; }

 private:
  Index in_channels_, out_channels_, kernel_, stride_, padding_;
  Variable<Scalar> weight_, bias_;
  ConvColumns columns_ = ConvColumns::Keep;
  std::shared_ptr<StoredWeight> stored_ = std::make_shared<StoredWeight>();
  std::shared_ptr<Conv2dCache<Scalar>> cache_;
};

/// \brief max(x, 0).
template <class Scalar = float>
class ReLU : public Module<Scalar> {
 public:
  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context&) override {
    return relu(tape, input);
  }
  std::string name() const override { return "ReLU"; }
};

/// \brief Max pooling with a square window.
template <class Scalar = float>
class MaxPool2d : public Module<Scalar> {
 public:
  /// \param stride 0 means stride = kernel
  /// \throws std::invalid_argument unless kernel > 0, stride ≥ 0 and 0 ≤ padding ≤ kernel/2
  explicit MaxPool2d(Index kernel, Index stride = 0, Index padding = 0)
      : kernel_(kernel), stride_(stride), padding_(padding) {
    check(kernel > 0 && stride >= 0 && padding >= 0 && padding <= kernel / 2, "nn::MaxPool2d",
          "need kernel > 0, stride >= 0 (0: the kernel) and padding in [0, kernel/2], got kernel ",
          kernel, ", stride ", stride, ", padding ", padding);
  }
  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context&) override {
    return max_pool2d(tape, input, kernel_, stride_, padding_);
  }
  std::string name() const override { return "MaxPool2d"; }

 private:
  Index kernel_, stride_, padding_;
};

/// \brief Views (C, H, W) features as a flat vector (no copy).
template <class Scalar = float>
class Flatten : public Module<Scalar> {
 public:
  Variable<Scalar> forward(Tape<Scalar>&, const Variable<Scalar>& input, const Context&) override {
    return flatten(input);
  }
  std::string name() const override { return "Flatten"; }
};

/// \brief Batch normalisation per channel (full precision): γ = 1, β = 0 initially, running
/// mean 0 and variance 1; batch statistics when context.training, running statistics otherwise.
template <class Scalar = float>
class BatchNorm2d : public Module<Scalar> {
 public:
  /// \throws std::invalid_argument unless channels > 0, momentum ∈ [0, 1] and eps is finite and
  /// > 0
  explicit BatchNorm2d(Index channels, Scalar momentum = Scalar(0.1), Scalar eps = Scalar(1e-5))
      : channels_(channels), momentum_(momentum), eps_(eps) {
    check(channels > 0, "nn::BatchNorm2d", "channels must be positive, got ", channels);
    check(momentum >= 0 && momentum <= 1 && std::isfinite(eps) && eps > 0, "nn::BatchNorm2d",
          "need momentum in [0, 1] and a finite eps > 0, got momentum ", momentum, ", eps ", eps);
    gamma_ = Variable<Scalar>(Matrix<Scalar>::Ones(channels, 1), true);
    beta_ = Variable<Scalar>(Matrix<Scalar>::Zero(channels, 1), true);
    running_mean_ = Vector<Scalar>::Zero(channels);
    running_var_ = Vector<Scalar>::Ones(channels);
  }
  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context& context) override {
    check(input.shape().channels == channels_, "nn::BatchNorm2d::forward", "input has ",
          input.shape().channels, " channels, expected ", channels_);
    return batch_norm2d(tape, input, gamma_, beta_, running_mean_, running_var_, momentum_, eps_,
                        context.training, context.training && context.update_running_statistics,
                        detail::free_cache(cache_));
  }
  std::string name() const override { return "BatchNorm2d"; }
  std::vector<Parameter<Scalar>> parameters() const override {
    return {{"weight", gamma_, false}, {"bias", beta_, false}};
  }
  void reset_parameters(const Philox&) override {
    gamma_.value().setOnes();
    beta_.value().setZero();
    running_mean_.setZero();
    running_var_.setOnes();
  }
  /// \brief Running mean per channel.
  const Vector<Scalar>& running_mean() const { return running_mean_; }
  /// \brief Running (unbiased) variance per channel.
  const Vector<Scalar>& running_var() const { return running_var_; }

 private:
  Index channels_;
  Scalar momentum_, eps_;
  Variable<Scalar> gamma_, beta_;
  Vector<Scalar> running_mean_, running_var_;
  std::shared_ptr<BatchNorm2dCache<Scalar>> cache_;
};

/// \brief Layers applied in order. Layer ids are positions (nested Sequentials continue the
/// count; build an inner Sequential completely before adding it to an outer one, whose add()
/// renumbers everything); parameter names are "<position>.<name>".
template <class Scalar = float>
class Sequential : public Module<Scalar> {
 public:
  Sequential() = default;

  /// \brief Appends a layer constructed in place; returns it.
  template <class Layer, class... Args>
  Layer& emplace(Args&&... args) {
    auto layer = std::make_unique<Layer>(std::forward<Args>(args)...);
    Layer& ref = *layer;
    add(std::move(layer));
    return ref;
  }
  /// \brief Appends a layer; returns it.
  Module<Scalar>& add(std::unique_ptr<Module<Scalar>> layer) {
    check(layer != nullptr, "nn::Sequential::add", "layer is null");
    layers_.push_back(std::move(layer));
    this->assign_layer_ids(this->layer_id());
    return *layers_.back();
  }
  /// \brief Number of layers.
  Index size() const { return static_cast<Index>(layers_.size()); }
  /// \brief Layer i.
  Module<Scalar>& operator[](Index i) {
    check(i >= 0 && i < size(), "nn::Sequential", "index ", i, " out of range [0, ", size(), ")");
    return *layers_[static_cast<std::size_t>(i)];
  }

  Variable<Scalar> forward(Tape<Scalar>& tape, const Variable<Scalar>& input,
                           const Context& context) override {
    Context local = context;
    local.policy = this->effective_policy(context.policy);
    Variable<Scalar> x = input;
    for (auto& layer : layers_) x = layer->forward(tape, x, local);
    return x;
  }
  std::string name() const override { return "Sequential"; }
  std::vector<Parameter<Scalar>> parameters() const override {
    std::vector<Parameter<Scalar>> all;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      for (auto& p : layers_[i]->parameters()) {
        p.name = std::to_string(i) + "." + p.name;
        all.push_back(std::move(p));
      }
    }
    return all;
  }
  /// \brief Re-initialises layer i from rng.substream(i).
  void reset_parameters(const Philox& rng) override {
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->reset_parameters(rng.substream(i));
  }
  std::uint64_t assign_layer_ids(std::uint64_t first) override {
    Module<Scalar>::assign_layer_ids(first);
    std::uint64_t next = first;
    for (auto& layer : layers_) next = layer->assign_layer_ids(next);
    return next;
  }

 private:
  std::vector<std::unique_ptr<Module<Scalar>>> layers_;
};

}  // namespace nn
}  // namespace fqt
