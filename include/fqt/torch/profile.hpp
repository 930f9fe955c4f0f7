#pragma once
/// \file
/// \brief fqt::torch::profile_gradients: the per-parameter variance decomposition of
/// fqt::nn::profile_gradients (quantization vs sampling variance, Theorem 1 z-scores) for a
/// libtorch model built with fqt::torch layers.

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/nn/profile.hpp"
#include "fqt/torch/conv2d.hpp"
#include "fqt/torch/linear.hpp"

namespace fqt {
namespace torch {

/// \brief The LayerState of every fqt::torch::Linear and Conv2d in `model`, in module order.
inline std::vector<LayerState*> layer_states(::torch::nn::Module& model) {
  std::vector<LayerState*> states;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* linear = dynamic_cast<LinearImpl*>(m.get())) states.push_back(&linear->state());
    if (auto* conv = dynamic_cast<Conv2dImpl*>(m.get())) states.push_back(&conv->state());
  }
  return states;
}

/// \brief Sets the mode of every fqt layer of `model` (their other knobs unchanged).
inline void set_mode(::torch::nn::Module& model, nn::Mode mode) {
  for (LayerState* s : layer_states(model)) {
    Quantization q = s->quantization();
    q.policy.mode = mode;
    s->set_quantization(q);
  }
}

/// \brief Profiles the gradient of `model` the way fqt::nn::profile_gradients does: `loss(0)` is
/// the profiled batch's loss (QAT gradient g, then `fqt_passes` FQT gradients with fresh noise),
/// `loss(1)` … `loss(sampling_batches)` the losses of further batches (the QAT sampling variance).
/// The fqt layers run in QAT for g and the sampling batches, in FQT for the K passes, and are left
/// in the mode they had. `loss` must be deterministic but for fqt's noise (no dropout).
/// \throws std::invalid_argument when the model has no fqt layer or fqt_passes < 2, and what
///         `loss` or a backward pass throws (the layers' modes are then restored)
inline nn::GradientProfile profile_gradients(::torch::nn::Module& model,
                                             const std::function<::torch::Tensor(int)>& loss,
                                             int fqt_passes = 32, int sampling_batches = 0) {
  constexpr const char* kWhere = "torch::profile_gradients";
  const auto states = layer_states(model);
  check(!states.empty(), kWhere, "the model has no fqt::torch layer");
  check(fqt_passes >= 2, kWhere, "fqt_passes must be at least 2, got ", fqt_passes);
  check(sampling_batches >= 0, kWhere, "sampling_batches must be non-negative, got ",
        sampling_batches);
  std::vector<Quantization> saved;
  for (LayerState* s : states) saved.push_back(s->quantization());
  const auto restore = [&] {
    for (std::size_t i = 0; i < states.size(); ++i) states[i]->set_quantization(saved[i]);
  };

  const auto params = model.named_parameters();
  const auto gradients = [&](int batch) {
    for (auto& p : params) p.value().mutable_grad() = ::torch::Tensor();
    loss(batch).backward();
    std::vector<Matrix<double>> g;
    for (auto& p : params) {
      const ::torch::Tensor grad = p.value().grad();
      const ::torch::Tensor d = grad.defined() ? grad.to(::torch::kDouble).contiguous()
                                               : ::torch::zeros_like(p.value(), ::torch::kDouble);
      const Index rows = d.dim() > 0 ? d.size(0) : 1;
      g.push_back(detail::const_matrix<double>(d, rows, d.numel() / rows));
    }
    return g;
  };

  nn::GradientProfile profile;
  try {
    set_mode(model, nn::Mode::QAT);
    const auto qat = gradients(0);
    profile.tensors.resize(qat.size());
    for (std::size_t i = 0; i < qat.size(); ++i) {
      auto& t = profile.tensors[i];
      t.name = params[i].key();
      t.qat_gradient = qat[i];
      t.fqt_mean = Matrix<double>::Zero(qat[i].rows(), qat[i].cols());
      t.fqt_variance = Matrix<double>::Zero(qat[i].rows(), qat[i].cols());
    }
    std::vector<std::vector<Matrix<double>>> sampling;
    for (int m = 1; m <= sampling_batches; ++m) sampling.push_back(gradients(m));

    set_mode(model, nn::Mode::FQT);
    for (int k = 0; k < fqt_passes; ++k) {
      const auto g = gradients(0);
      for (std::size_t i = 0; i < g.size(); ++i) {
        auto& t = profile.tensors[i];
        t.squared_errors.push_back((g[i] - t.qat_gradient).squaredNorm());
        const Matrix<double> delta = g[i] - t.fqt_mean;
        t.fqt_mean += delta / static_cast<double>(k + 1);
        t.fqt_variance += delta.cwiseProduct(g[i] - t.fqt_mean);
      }
    }
    for (std::size_t i = 0; i < profile.tensors.size(); ++i) {
      auto& t = profile.tensors[i];
      nn::detail::finish_tensor_profile(t, static_cast<double>(fqt_passes));
      if (sampling.size() >= 2) {
        Matrix<double> mean = Matrix<double>::Zero(t.qat_gradient.rows(), t.qat_gradient.cols());
        for (const auto& s : sampling) mean += s[i];
        mean /= static_cast<double>(sampling.size());
        double v = 0;
        for (const auto& s : sampling) v += (s[i] - mean).squaredNorm();
        t.sampling_variance = v / static_cast<double>(sampling.size() - 1);
      }
    }
  } catch (...) {
    restore();
    throw;
  }
  restore();
  profile.fqt_passes = fqt_passes;
  profile.sampling_batches = sampling_batches;
  return profile;
}

}  // namespace torch
}  // namespace fqt
