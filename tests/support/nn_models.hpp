#pragma once
// A small model shared by the nn tests.

#include "fqt/nn/layers.hpp"

namespace nn_test {

// Conv → BatchNorm → ReLU → MaxPool → Conv (stride 2) → ReLU → Flatten → Linear → ReLU → Linear.
inline fqt::nn::Sequential<double> small_model() {
  fqt::nn::Sequential<double> m;
  const fqt::Philox init(17);
  m.emplace<fqt::nn::Conv2d<double>>(2, 3, 3, 1, 1, init.substream(0));
  m.emplace<fqt::nn::BatchNorm2d<double>>(3);
  m.emplace<fqt::nn::ReLU<double>>();
  m.emplace<fqt::nn::MaxPool2d<double>>(2);
  m.emplace<fqt::nn::Conv2d<double>>(3, 4, 3, 2, 1, init.substream(1));
  m.emplace<fqt::nn::ReLU<double>>();
  m.emplace<fqt::nn::Flatten<double>>();
  m.emplace<fqt::nn::Linear<double>>(4 * 2 * 2, 6, init.substream(2));
  m.emplace<fqt::nn::ReLU<double>>();
  m.emplace<fqt::nn::Linear<double>>(6, 3, init.substream(3));
  return m;
}

}  // namespace nn_test
