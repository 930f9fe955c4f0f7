#pragma once
/// \file
/// \brief SGD with momentum, Nesterov momentum and weight decay; step and cosine learning-rate
/// schedules with linear warm-up.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/layers.hpp"

namespace fqt {
namespace nn {

/// \brief Hyper-parameters of SGD.
struct SgdOptions {
  double learning_rate = 0.1;  ///< η
  double momentum = 0.0;       ///< μ in [0, 1)
  bool nesterov = false;       ///< Nesterov momentum (needs μ > 0)
  double weight_decay = 0.0;   ///< λ ≥ 0, applied to parameters with weight_decay set

  /// \brief Throws std::invalid_argument naming `where` and the field unless the options are
  /// usable: μ in [0, 1), λ finite and ≥ 0, Nesterov only with μ > 0, η finite and ≥ 0.
  void validate(const char* where) const {
    check(momentum >= 0 && momentum < 1, where, "momentum must be in [0, 1), got ", momentum);
    check(std::isfinite(weight_decay) && weight_decay >= 0, where,
          "weight_decay must be finite and >= 0, got ", weight_decay);
    check(!nesterov || momentum > 0, where, "nesterov needs momentum > 0");
    check(std::isfinite(learning_rate) && learning_rate >= 0, where,
          "learning rate must be finite and >= 0, got ", learning_rate);
  }
};

/// \brief What an optimizer's parameters occupy, in bytes.
struct OptimizerMemory {
  std::size_t weights = 0;    ///< the stored parameters: Scalar values, or codes and steps
  std::size_t state = 0;      ///< the optimizer's state (momentum)
  std::size_t views = 0;      ///< dequantized views of coded weights, which the forward reads
  std::size_t workspace = 0;  ///< buffers of the update kept between steps
  Index parameters = 0;       ///< scalars optimised

  /// \brief Weights and optimizer state per parameter, in bytes.
  double per_parameter() const {
    return parameters > 0 ? double(weights + state) / double(parameters) : 0.0;
  }
};

/// \brief Stochastic gradient descent, PyTorch's update rule:
/// g ← ∇ + λ·w (decayed parameters only); v ← μ·v + g; d = g + μ·v (Nesterov) or v; w ← w − η·d.
template <class Scalar = float>
class SGD {
 public:
  /// \param parameters e.g. model.parameters() (shared handles)
  SGD(std::vector<Parameter<Scalar>> parameters, const SgdOptions& options)
      : parameters_(std::move(parameters)), options_(options) {
    options.validate("nn::SGD");
    velocity_.resize(parameters_.size());
  }

  /// \brief Zeros every parameter's gradient (allocating it on first use).
  void zero_grad() {
    for (auto& p : parameters_) p.variable.zero_grad();
  }

  /// \brief One update from the accumulated gradients (parameters without a gradient are skipped).
  /// All or nothing: on a NaN or ±Inf gradient, or an update that would overflow a weight or a
  /// momentum buffer, it throws std::domain_error naming the parameter and the element; on a
  /// gradient or momentum buffer whose shape no longer matches its parameter (the value was
  /// resized), std::invalid_argument. In every case no parameter or buffer is changed.
  void step() {
    constexpr const char* kWhere = "nn::SGD::step";
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& p = parameters_[i];
      if (p.variable.has_grad()) {
        detail::check_shape(p.variable.grad(), p.variable.value().rows(), p.variable.value().cols(),
                            kWhere, "a gradient");
        if (options_.momentum != 0 && velocity_[i].size() > 0) {
          const std::string what = "the momentum buffer of parameter '" + p.name + "'";
          detail::check_shape(velocity_[i], p.variable.value().rows(), p.variable.value().cols(),
                              kWhere, what.c_str());
        }
        const std::string what = "gradient of parameter '" + p.name + "'";
        detail::check_finite(p.variable.grad(), kWhere, what.c_str());
      }
    }
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar decay = static_cast<Scalar>(options_.weight_decay);
    next_weight_.resize(parameters_.size());
    next_velocity_.resize(parameters_.size());
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& p = parameters_[i];
      if (!p.variable.has_grad()) continue;
      const Matrix<Scalar>& w = p.variable.value();
      Matrix<Scalar>& g = next_weight_[i];
      g = p.variable.grad();
      if (p.weight_decay && decay != 0) g += decay * w;
      if (mu != 0) {
        Matrix<Scalar>& v = next_velocity_[i];
        if (velocity_[i].size() == 0) {
          v = g;  // PyTorch: the first step initialises the buffer with the gradient
        } else {
          v = mu * velocity_[i] + g;
        }
        if (options_.nesterov) {
          g += mu * v;
        } else {
          g = v;
        }
        const std::string what = "momentum buffer of parameter '" + p.name + "' after the update,";
        detail::check_finite(v, kWhere, what.c_str());
      }
      g = w - lr * g;
      const std::string what = "parameter '" + p.name + "' after the update,";
      detail::check_finite(g, kWhere, what.c_str());
    }
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (!parameters_[i].variable.has_grad()) continue;
      parameters_[i].variable.value().swap(next_weight_[i]);
      if (mu != 0) velocity_[i].swap(next_velocity_[i]);
    }
  }

  /// \brief The current learning rate.
  double learning_rate() const { return options_.learning_rate; }
  /// \brief Sets the learning rate (e.g. from a schedule); must be finite and ≥ 0.
  void set_learning_rate(double lr) {
    check(std::isfinite(lr) && lr >= 0, "nn::SGD::set_learning_rate",
          "learning rate must be finite and >= 0, got ", lr);
    options_.learning_rate = lr;
  }
  /// \brief The parameters being optimised.
  const std::vector<Parameter<Scalar>>& parameters() const { return parameters_; }
  /// \brief The bytes of the (master) weights, the momentum and the staged updates.
  OptimizerMemory memory() const {
    OptimizerMemory m;
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Index n = parameters_[i].variable.value().size();
      m.parameters += n;
      m.weights += static_cast<std::size_t>(n) * sizeof(Scalar);
      m.state += static_cast<std::size_t>(velocity_[i].size()) * sizeof(Scalar);
    }
    for (const auto* staged : {&next_weight_, &next_velocity_}) {
      for (const auto& b : *staged)
        m.workspace += static_cast<std::size_t>(b.size()) * sizeof(Scalar);
    }
    return m;
  }

 private:
  std::vector<Parameter<Scalar>> parameters_;
  std::vector<Matrix<Scalar>> velocity_;
  std::vector<Matrix<Scalar>> next_weight_, next_velocity_;  // staged updates (reused)
  SgdOptions options_;
};

namespace detail {
/// Linear warm-up factor (step + 1)/warmup for step < warmup, else 1.
inline double warmup_factor(std::uint64_t step, std::uint64_t warmup) {
  if (step >= warmup) return 1.0;
  return static_cast<double>(step + 1) / static_cast<double>(warmup);
}
}  // namespace detail

/// \brief Step decay: base·γ^(number of milestones ≤ step), after a linear warm-up from
/// base/warmup to base over the first `warmup` steps.
class StepSchedule {
 public:
  /// \param milestones steps at which the rate is multiplied by gamma
  StepSchedule(double base_lr, std::vector<std::uint64_t> milestones, double gamma = 0.1,
               std::uint64_t warmup_steps = 0)
      : base_(base_lr), milestones_(std::move(milestones)), gamma_(gamma), warmup_(warmup_steps) {
    check(std::isfinite(base_lr) && base_lr >= 0 && std::isfinite(gamma) && gamma > 0,
          "nn::StepSchedule", "need a finite base_lr >= 0 and a finite gamma > 0, got ", base_lr,
          " and ", gamma);
    std::sort(milestones_.begin(), milestones_.end());
  }
  /// \brief The learning rate of `step` (0-based).
  double operator()(std::uint64_t step) const {
    const auto passed =
        std::upper_bound(milestones_.begin(), milestones_.end(), step) - milestones_.begin();
    return base_ * std::pow(gamma_, static_cast<double>(passed)) *
           detail::warmup_factor(step, warmup_);
  }

 private:
  double base_;
  std::vector<std::uint64_t> milestones_;
  double gamma_;
  std::uint64_t warmup_;
};

/// \brief Cosine annealing from base to final over [warmup, total), after a linear warm-up:
/// lr = final + (base − final)·(1 + cos(π·t))/2 with t = (step − warmup)/(total − warmup) ∈ [0, 1].
class CosineSchedule {
 public:
  CosineSchedule(double base_lr, std::uint64_t total_steps, std::uint64_t warmup_steps = 0,
                 double final_lr = 0)
      : base_(base_lr), final_(final_lr), total_(total_steps), warmup_(warmup_steps) {
    check(std::isfinite(base_lr) && base_lr >= 0 && std::isfinite(final_lr) && final_lr >= 0,
          "nn::CosineSchedule", "learning rates must be finite and >= 0, got ", base_lr, " and ",
          final_lr);
    check(total_steps > warmup_steps, "nn::CosineSchedule", "total_steps (", total_steps,
          ") must exceed warmup_steps (", warmup_steps, ")");
  }
  /// \brief The learning rate of `step` (0-based).
  double operator()(std::uint64_t step) const {
    if (step < warmup_) return base_ * detail::warmup_factor(step, warmup_);
    const double t =
        std::min(1.0, static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_));
    constexpr double kPi = 3.14159265358979323846;
    return final_ + (base_ - final_) * 0.5 * (1.0 + std::cos(kPi * t));
  }

 private:
  double base_, final_;
  std::uint64_t total_, warmup_;
};

}  // namespace nn
}  // namespace fqt
