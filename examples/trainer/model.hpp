#pragma once
/// \file
/// \brief The trainer's network: a small LeNet-style CNN whose every conv and linear layer is
/// quantized per the model's nn::QuantPolicy.
///
///     conv 5×5 (1 → c1) → ReLU → max-pool 2 → conv 5×5 (c1 → c2) → ReLU → max-pool 2
///       → flatten → linear (c2·h·w → hidden) → ReLU → linear (hidden → classes)
///
/// On 28×28 images the spatial sizes are 28 → 24 → 12 → 8 → 4. ReLU and pooling stay in full
/// precision, as in the paper's reference code (digest §6.10); the first conv and the last linear
/// layer are quantized too (forward and backward).

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn.hpp"
#include "trainer/data.hpp"

namespace fqt_train {

namespace nn = fqt::nn;

/// \brief The shape of the CNN.
struct Architecture {
  Index conv1_channels = 8;   ///< c1, output channels of the first conv
  Index conv2_channels = 16;  ///< c2, output channels of the second conv
  Index hidden = 64;          ///< width of the hidden linear layer
  Index kernel = 5;           ///< square kernel of both convs (no padding, stride 1)
  Index image_height = 28;    ///< input height
  Index image_width = 28;     ///< input width
  int classes = 10;           ///< outputs

  /// \brief Height of the feature map after the second pooling.
  Index features_height() const { return ((image_height - kernel + 1) / 2 - kernel + 1) / 2; }
  /// \brief Width of the feature map after the second pooling.
  Index features_width() const { return ((image_width - kernel + 1) / 2 - kernel + 1) / 2; }

  /// \brief Throws std::invalid_argument unless every size is positive and the images are large
  /// enough for two convs and two poolings.
  void validate() const {
    constexpr const char* kWhere = "fqt_train::Architecture";
    fqt::check(conv1_channels > 0 && conv2_channels > 0 && hidden > 0 && classes > 1, kWhere,
               "channels and hidden width must be positive and classes > 1, got channels ",
               conv1_channels, ",", conv2_channels, ", hidden ", hidden, ", classes ", classes);
    fqt::check(kernel > 0 && features_height() > 0 && features_width() > 0, kWhere, "images of ",
               image_height, " x ", image_width, " are too small for two ", kernel, "x", kernel,
               " convolutions and two 2x2 poolings");
  }

  /// \brief A one-line description, e.g. "conv5x5(1->8) ... linear(64->10)".
  std::string describe() const {
    std::ostringstream s;
    s << "conv" << kernel << "x" << kernel << "(1->" << conv1_channels << ")-relu-maxpool2, conv"
      << kernel << "x" << kernel << "(" << conv1_channels << "->" << conv2_channels
      << ")-relu-maxpool2, linear(" << conv2_channels * features_height() * features_width() << "->"
      << hidden << ")-relu, linear(" << hidden << "->" << classes << ")";
    return s.str();
  }
};

/// \brief The CNN of an Architecture, built on fqt's layers.
class Model {
 public:
  /// \brief Builds the network and draws its initial weights (Kaiming normal, zero biases) from
  /// `init`: layer i from init.substream(i).
  Model(const Architecture& architecture, const fqt::Philox& init) : architecture_(architecture) {
    architecture.validate();
    const Architecture& a = architecture;
    const Index k = a.kernel;
    convs_[0] = &net_.emplace<nn::Conv2d<float>>(1, a.conv1_channels, k, 1, 0, init.substream(0));
    net_.emplace<nn::ReLU<float>>();
    net_.emplace<nn::MaxPool2d<float>>(2);
    convs_[1] = &net_.emplace<nn::Conv2d<float>>(a.conv1_channels, a.conv2_channels, k, 1, 0,
                                                 init.substream(3));
    net_.emplace<nn::ReLU<float>>();
    net_.emplace<nn::MaxPool2d<float>>(2);
    net_.emplace<nn::Flatten<float>>();
    linears_[0] = &net_.emplace<nn::Linear<float>>(
        a.conv2_channels * a.features_height() * a.features_width(), a.hidden, init.substream(7));
    net_.emplace<nn::ReLU<float>>();
    linears_[1] = &net_.emplace<nn::Linear<float>>(a.hidden, a.classes, init.substream(9));
  }

  /// \brief What the convs keep for their backward passes in training (nn::Conv2d::set_columns).
  void set_conv_columns(nn::ConvColumns columns) {
    for (auto* conv : convs_) conv->set_columns(columns);
  }
  /// \brief The bytes the layers' caches hold between steps: X̂, Ŵ, the quantized gradients and
  /// the backends' buffers (for conv, the whole batch's im2col columns unless recomputed).
  std::size_t cache_bytes() const {
    std::size_t bytes = 0;
    for (const auto* conv : convs_) bytes += conv->cache_bytes();
    for (const auto* linear : linears_) bytes += linear->cache_bytes();
    return bytes;
  }

  /// \brief The layers (layer ids 0..9; parameters "0.weight", "0.bias", "3.weight", ...).
  nn::Sequential<float>& net() { return net_; }
  /// \brief The trainable tensors, in layer order (shared handles).
  std::vector<nn::Parameter<float>> parameters() const { return net_.parameters(); }
  /// \brief Number of trainable scalars.
  Index parameter_count() const {
    Index n = 0;
    for (const auto& p : parameters()) n += p.variable.value().size();
    return n;
  }
  /// \brief The per-sample shape of an input batch: one channel of height × width.
  nn::FeatureShape input_shape() const {
    return nn::FeatureShape{1, architecture_.image_height, architecture_.image_width};
  }

  /// \brief Logits of a batch (N × classes) with the given forward policy, without recording a
  /// backward pass (inference: the forward quantizer Q_f of QAT/FQT applies, nothing else).
  Matrix logits(const Eigen::Ref<const Matrix>& images, const nn::QuantPolicy& policy) {
    nn::Context context;
    context.policy = policy;
    context.training = false;
    nn::Tape<float> tape;
    const nn::Variable<float> input(Matrix(images), input_shape());
    Matrix out = net_.forward(tape, input, context).value();
    tape.clear();
    return out;
  }

 private:
  Architecture architecture_;
  nn::Sequential<float> net_;
  nn::Conv2d<float>* convs_[2] = {};    // owned by net_
  nn::Linear<float>* linears_[2] = {};  // owned by net_
};

/// \brief The architecture for images of `data`'s size, with the other sizes of `base`.
inline Architecture architecture_for(const Dataset& data, Architecture base) {
  base.image_height = data.height;
  base.image_width = data.width;
  base.classes = data.classes;
  return base;
}

}  // namespace fqt_train
