#pragma once
/// \file
/// \brief Per-parameter-tensor variance decomposition of a network's FQT gradient (the paper's
/// Theorem 2, measured as the reference code's `get_var` does) and a check of Theorem 1.
///
/// For a model, a batch and a policy, profile_gradients computes per parameter tensor:
/// - the QAT gradient g at the batch (same forward pass, full-precision gradients);
/// - K FQT gradients ĝ_1..ĝ_K at the same batch with independent noise, their mean and the
///   quantization variance Var[ĝ | batch] = E‖ĝ − E ĝ‖² (unbiased estimate, divisor K − 1);
/// - the sampling variance of the QAT gradient over M further batches, Σ_m ‖g_m − ḡ‖²/(M − 1);
/// - Theorem 1 z-scores: z_j = (mean_j − g_j)/(s_j/√K) per element with sample deviation s_j > 0,
///   and the tensor's bias in standard errors ‖mean − g‖/√(Σ_j s_j²/K), about 1 for an unbiased
///   estimator and infinite for a deterministic (round-to-nearest) one that misses g;
/// - the Monte-Carlo standard error of the quantization variance, from the per-pass squared
///   errors e_k = ‖ĝ_k − g‖² (see quantization_variance_standard_error), so that a test can derive
///   its band from the statistics instead of tuning it.
/// By Theorem 2 the FQT gradient's total variance is the sampling variance plus the quantization
/// variance; FQT trains like QAT while the second is small next to the first.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/autograd.hpp"
#include "fqt/nn/layers.hpp"
#include "fqt/nn/loss.hpp"
#include "fqt/nn/policy.hpp"

namespace fqt {
namespace nn {

/// \brief A labelled batch: inputs N × (C·H·W) with their per-sample shape, and N labels.
template <class Scalar = float>
struct Batch {
  Matrix<Scalar> inputs;    ///< one sample per row
  nn::FeatureShape shape;   ///< per-sample shape (channels 0: a flat vector of inputs.cols())
  std::vector<int> labels;  ///< class of each row
};

/// \brief Knobs of profile_gradients.
struct ProfileOptions {
  int fqt_passes = 32;         ///< K ≥ 2 independent FQT backward passes on the profiled batch
  double label_smoothing = 0;  ///< of the softmax cross-entropy loss
  Philox rng{0};               ///< pass k draws its noise from rng.substream(k)
  std::uint64_t step = 0;      ///< the step index given to the layers' streams
  /// Also split the quantization variance by path: K more passes with only the grad-input
  /// quantizer Q_b1, and K with only the grad-weight quantizer Q_b2 (3·K FQT passes in all)
  bool split_by_path = false;
};

namespace detail {

/// \brief Standard error of the unbiased variance estimate V̂ = Σ_k ‖y_k − ȳ‖²/(K − 1) of K
/// independent vector draws y_k, given e_k = ‖y_k − μ‖² (μ the true mean; here the QAT gradient,
/// which Theorem 1 makes the mean). For independent draws
/// Var[V̂] = Var[e]/K + 2·tr(Σ²)/(K(K − 1)), Σ the covariance of y; with tr(Σ²) ≤ (tr Σ)² = V²
/// this returns √(s_e²/K + 2·V̂²/(K(K − 1))), s_e² the sample variance of the e_k — an
/// estimate that errs on the large side. 0 for K < 2.
inline double variance_standard_error(const std::vector<double>& squared_errors, double variance) {
  const std::size_t k_count = squared_errors.size();
  if (k_count < 2) return 0;
  const double k = static_cast<double>(k_count);
  double mean = 0, m2 = 0;
  for (std::size_t i = 0; i < k_count; ++i) {
    const double delta = squared_errors[i] - mean;
    mean += delta / static_cast<double>(i + 1);
    m2 += delta * (squared_errors[i] - mean);
  }
  const double sample_variance = m2 / (k - 1);
  return std::sqrt(sample_variance / k + 2 * variance * variance / (k * (k - 1)));
}

}  // namespace detail

/// \brief The profile of one parameter tensor (all statistics in double).
struct TensorProfile {
  std::string name;                  ///< parameter name, e.g. "0.weight"
  Matrix<double> qat_gradient;       ///< g at the profiled batch
  Matrix<double> fqt_mean;           ///< mean of the K FQT gradients
  Matrix<double> fqt_variance;       ///< per-element sample variance of the K FQT gradients
  double quantization_variance = 0;  ///< Σ_j fqt_variance_j ≈ E‖ĝ − E ĝ‖²
  double sampling_variance = 0;      ///< Σ_j Var_m[g_m]_j over the sampling batches (0 if M < 2)
  double bias_norm = 0;              ///< ‖fqt_mean − g‖
  double bias_standard_error = 0;  ///< √(quantization_variance/K): the expected noise of the mean
  double bias_in_standard_errors = 0;  ///< bias_norm / bias_standard_error (∞ if 0 < bias, se = 0)
  double max_abs_z = 0;       ///< max_j |mean_j − g_j|/(s_j/√K) over elements with s_j > 0
  double mean_z_squared = 0;  ///< mean of z_j² over those elements (≈ 1 if unbiased)
  Index noisy_elements = 0;   ///< elements with s_j > 0
  /// Per FQT pass k: e_k = ‖ĝ_k − g‖², g the QAT gradient. For an unbiased estimator (Theorem 1)
  /// the e_k are independent draws whose mean is the quantization variance.
  std::vector<double> squared_errors;
  /// Monte-Carlo standard error of quantization_variance: √(s_e²/K + 2·V²/(K(K − 1))), s_e² the
  /// sample variance of the e_k and V the quantization variance (see
  /// detail::variance_standard_error).
  double quantization_variance_standard_error = 0;
  /// With ProfileOptions::split_by_path: the quantization variance with only Q_b1 (grad-input
  /// path) quantized, and with only Q_b2 (grad-weight path). The two noises are independent and
  /// the backward pass is linear in them, so they add up to quantization_variance up to Monte
  /// Carlo error. NaN without the split.
  double grad_input_variance = std::numeric_limits<double>::quiet_NaN();
  double grad_weight_variance = std::numeric_limits<double>::quiet_NaN();  ///< see above
  double grad_input_variance_standard_error = 0;   ///< Monte-Carlo standard error of the above
  double grad_weight_variance_standard_error = 0;  ///< Monte-Carlo standard error of the above

  /// \brief quantization_variance / sampling_variance (∞ when the latter is 0).
  double variance_ratio() const {
    return sampling_variance > 0 ? quantization_variance / sampling_variance
                                 : std::numeric_limits<double>::infinity();
  }
  /// \brief Theorem 1 holds at this level: max_abs_z and bias_in_standard_errors below `limit`.
  bool consistent_with_unbiased(double limit = 6) const {
    return max_abs_z < limit && bias_in_standard_errors < limit;
  }
};

/// \brief The profile of a model: one entry per parameter tensor, in model order.
struct GradientProfile {
  std::vector<TensorProfile> tensors;  ///< per parameter tensor
  int fqt_passes = 0;                  ///< K
  int sampling_batches = 0;            ///< M

  /// \brief Σ over tensors of the quantization variance.
  double quantization_variance() const {
    double v = 0;
    for (const auto& t : tensors) v += t.quantization_variance;
    return v;
  }
  /// \brief Monte-Carlo standard error of quantization_variance(), from the per-pass sums of the
  /// tensors' squared errors (so the covariance between tensors is accounted for).
  double quantization_variance_standard_error() const {
    if (tensors.empty()) return 0;
    std::vector<double> total(tensors.front().squared_errors.size(), 0.0);
    for (const auto& t : tensors) {
      for (std::size_t k = 0; k < total.size() && k < t.squared_errors.size(); ++k)
        total[k] += t.squared_errors[k];
    }
    return detail::variance_standard_error(total, quantization_variance());
  }
  /// \brief Σ over tensors of the grad-input path's quantization variance (NaN without the
  /// split).
  double grad_input_variance() const {
    double v = 0;
    for (const auto& t : tensors) v += t.grad_input_variance;
    return v;
  }
  /// \brief Σ over tensors of the grad-weight path's quantization variance (NaN without it).
  double grad_weight_variance() const {
    double v = 0;
    for (const auto& t : tensors) v += t.grad_weight_variance;
    return v;
  }
  /// \brief Σ over tensors of the sampling variance.
  double sampling_variance() const {
    double v = 0;
    for (const auto& t : tensors) v += t.sampling_variance;
    return v;
  }
  /// \brief Theorem 2's total: sampling plus quantization variance.
  double total_variance() const { return sampling_variance() + quantization_variance(); }
  /// \brief The largest element z-score over all tensors.
  double max_abs_z() const {
    double z = 0;
    for (const auto& t : tensors) z = std::max(z, t.max_abs_z);
    return z;
  }
  /// \brief Theorem 1 check over every tensor.
  bool consistent_with_unbiased(double limit = 6) const {
    for (const auto& t : tensors) {
      if (!t.consistent_with_unbiased(limit)) return false;
    }
    return true;
  }
  /// \brief The tensor of that name; throws std::invalid_argument if there is none.
  const TensorProfile& operator[](const std::string& name) const {
    for (const auto& t : tensors) {
      if (t.name == name) return t;
    }
    check(false, "nn::GradientProfile", "no parameter named '", name, "'");
    return tensors.front();
  }
};

namespace detail {

/// One backward pass: the gradients of every parameter (in double), for the given context.
template <class Scalar>
std::vector<Matrix<double>> parameter_gradients(Module<Scalar>& model,
                                                const std::vector<nn::Parameter<Scalar>>& params,
                                                const Batch<Scalar>& batch, const Context& context,
                                                double label_smoothing) {
  for (const auto& p : params) p.variable.zero_grad();
  Tape<Scalar> tape;
  const Variable<Scalar> input(batch.inputs, batch.shape);
  const auto logits = model.forward(tape, input, context);
  const auto loss = nn::softmax_cross_entropy(tape, logits, batch.labels, label_smoothing);
  tape.backward(loss);
  std::vector<Matrix<double>> grads;
  grads.reserve(params.size());
  for (const auto& p : params) grads.push_back(p.variable.grad().template cast<double>());
  return grads;
}

/// The context of every profiling pass: training mode, running statistics left untouched.
inline Context profile_context(const QuantPolicy& policy, const ProfileOptions& options) {
  Context context;
  context.policy = policy;
  context.step = options.step;
  context.training = true;
  context.update_running_statistics = false;
  return context;
}

/// Names each tensor profile, stores its QAT gradient and zeroes its FQT accumulators.
template <class Scalar>
void start_tensor_profiles(std::vector<TensorProfile>& tensors,
                           const std::vector<nn::Parameter<Scalar>>& params,
                           const std::vector<Matrix<double>>& qat, int fqt_passes) {
  for (std::size_t i = 0; i < params.size(); ++i) {
    tensors[i].name = params[i].name;
    tensors[i].qat_gradient = qat[i];
    tensors[i].fqt_mean = Matrix<double>::Zero(qat[i].rows(), qat[i].cols());
    tensors[i].fqt_variance = Matrix<double>::Zero(qat[i].rows(), qat[i].cols());
    tensors[i].squared_errors.reserve(static_cast<std::size_t>(fqt_passes));
  }
}

/// Runs the K FQT passes (Welford's running mean and squared deviations, per-pass errors).
template <class Scalar>
void accumulate_fqt_passes(Module<Scalar>& model, const std::vector<nn::Parameter<Scalar>>& params,
                           const Batch<Scalar>& batch, const ProfileOptions& options,
                           Context& context, std::vector<TensorProfile>& tensors) {
  const int k_passes = options.fqt_passes;
  for (int k = 0; k < k_passes; ++k) {
    context.rng = options.rng.substream(static_cast<std::uint64_t>(k));
    const auto g =
        detail::parameter_gradients(model, params, batch, context, options.label_smoothing);
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto& t = tensors[i];
      t.squared_errors.push_back((g[i] - t.qat_gradient).squaredNorm());
      const Matrix<double> delta = g[i] - t.fqt_mean;
      t.fqt_mean += delta / static_cast<double>(k + 1);
      t.fqt_variance += delta.cwiseProduct(g[i] - t.fqt_mean);
    }
  }
}

/// Turns a tensor's accumulated K passes into its variance, bias and Theorem 1 z-score statistics.
inline void finish_tensor_profile(TensorProfile& t, double k_count) {
  t.fqt_variance /= k_count - 1;
  t.quantization_variance = t.fqt_variance.sum();
  t.quantization_variance_standard_error =
      detail::variance_standard_error(t.squared_errors, t.quantization_variance);
  const Matrix<double> bias = t.fqt_mean - t.qat_gradient;
  t.bias_norm = bias.norm();
  t.bias_standard_error = std::sqrt(t.quantization_variance / k_count);
  t.bias_in_standard_errors = t.bias_standard_error > 0
                                  ? t.bias_norm / t.bias_standard_error
                                  : (t.bias_norm > 0 ? std::numeric_limits<double>::infinity() : 0);
  double z2 = 0;
  for (Index j = 0; j < bias.size(); ++j) {
    const double var = t.fqt_variance.data()[j];
    if (!(var > 0)) continue;
    const double z = bias.data()[j] / std::sqrt(var / k_count);
    t.max_abs_z = std::max(t.max_abs_z, std::abs(z));
    z2 += z * z;
    ++t.noisy_elements;
  }
  t.mean_z_squared = t.noisy_elements > 0 ? z2 / static_cast<double>(t.noisy_elements) : 0;
}

/// Sets each tensor's sampling variance from the QAT gradients of the M ≥ 2 sampling batches.
template <class Scalar>
void add_sampling_variances(Module<Scalar>& model, const std::vector<nn::Parameter<Scalar>>& params,
                            const std::vector<Batch<Scalar>>& sampling_batches,
                            const Context& context, double label_smoothing,
                            std::vector<TensorProfile>& tensors) {
  std::vector<Matrix<double>> mean(params.size()), m2(params.size());
  for (std::size_t b = 0; b < sampling_batches.size(); ++b) {
    const auto g =
        detail::parameter_gradients(model, params, sampling_batches[b], context, label_smoothing);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (b == 0) {
        mean[i] = Matrix<double>::Zero(g[i].rows(), g[i].cols());
        m2[i] = Matrix<double>::Zero(g[i].rows(), g[i].cols());
      }
      const Matrix<double> delta = g[i] - mean[i];
      mean[i] += delta / static_cast<double>(b + 1);
      m2[i] += delta.cwiseProduct(g[i] - mean[i]);
    }
  }
  for (std::size_t i = 0; i < params.size(); ++i) {
    tensors[i].sampling_variance = m2[i].sum() / static_cast<double>(sampling_batches.size() - 1);
  }
}

}  // namespace detail

/// \brief Profiles the gradient of `model` under `policy` (see the file comment).
///
/// The model runs in training mode (batch statistics) without touching BatchNorm running
/// statistics; parameter gradients are restored on return. Layers' own policy overrides apply;
/// the QAT reference runs every FQT layer as QAT (Context::quantize_gradients = false).
/// \param batch the profiled batch (quantization statistics)
/// \param sampling_batches further batches for the sampling variance (M ≥ 2, or empty)
/// \param policy the model's policy (normally Mode::FQT)
template <class Scalar>
GradientProfile profile_gradients(Module<Scalar>& model, const Batch<Scalar>& batch,
                                  const std::vector<Batch<Scalar>>& sampling_batches,
                                  const QuantPolicy& policy, const ProfileOptions& options) {
  constexpr const char* kWhere = "nn::profile_gradients";
  check(options.fqt_passes >= 2, kWhere, "fqt_passes must be >= 2, got ", options.fqt_passes);
  check(sampling_batches.size() != 1, kWhere,
        "the sampling variance needs at least 2 batches (or none), got 1");
  policy.validate(kWhere);
  const auto params = model.parameters();
  std::vector<Matrix<Scalar>> saved;
  for (const auto& p : params) saved.push_back(p.variable.grad());
  struct Restore {
    const std::vector<nn::Parameter<Scalar>>& params;
    std::vector<Matrix<Scalar>>& saved;
    ~Restore() {
      for (std::size_t i = 0; i < params.size(); ++i)
        params[i].variable.grad() = std::move(saved[i]);
    }
  } restore{params, saved};

  Context context = detail::profile_context(policy, options);

  GradientProfile profile;
  profile.fqt_passes = options.fqt_passes;
  profile.sampling_batches = static_cast<int>(sampling_batches.size());
  profile.tensors.resize(params.size());

  context.quantize_gradients = false;
  const auto qat =
      detail::parameter_gradients(model, params, batch, context, options.label_smoothing);
  detail::start_tensor_profiles(profile.tensors, params, qat, options.fqt_passes);

  context.quantize_gradients = true;
  detail::accumulate_fqt_passes(model, params, batch, options, context, profile.tensors);
  const double k_count = static_cast<double>(options.fqt_passes);
  for (auto& t : profile.tensors) detail::finish_tensor_profile(t, k_count);
  if (options.split_by_path) {
    for (const GradientPaths path : {GradientPaths::GradInput, GradientPaths::GradWeight}) {
      std::vector<TensorProfile> part(params.size());
      detail::start_tensor_profiles(part, params, qat, options.fqt_passes);
      ProfileOptions part_options = options;
      part_options.rng = options.rng.substream(static_cast<std::uint64_t>(path) + 1, 0x70617468);
      context.gradient_paths = path;
      detail::accumulate_fqt_passes(model, params, batch, part_options, context, part);
      for (std::size_t i = 0; i < part.size(); ++i) {
        detail::finish_tensor_profile(part[i], k_count);
        TensorProfile& t = profile.tensors[i];
        const bool input = path == GradientPaths::GradInput;
        (input ? t.grad_input_variance : t.grad_weight_variance) = part[i].quantization_variance;
        (input ? t.grad_input_variance_standard_error : t.grad_weight_variance_standard_error) =
            part[i].quantization_variance_standard_error;
      }
    }
    context.gradient_paths = GradientPaths::Both;
  }

  if (sampling_batches.size() >= 2) {
    context.quantize_gradients = false;
    detail::add_sampling_variances(model, params, sampling_batches, context,
                                   options.label_smoothing, profile.tensors);
  }
  return profile;
}

}  // namespace nn
}  // namespace fqt
