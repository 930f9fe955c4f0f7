#pragma once
/// \file
/// \brief Batch normalisation over N·H·W per channel, in full precision, as plain functions.

#include <cmath>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/nn/detail/checks.hpp"

namespace fqt {
namespace nn {

/// \brief What batch_norm2d_backward needs: per-channel statistics and the normalised input.
template <class Scalar = float>
struct BatchNorm2dCache {
  /// True once batch_norm2d_forward has completed into this cache; false when default-constructed
  /// or when the last forward threw after it started filling the cache (batch_norm2d_backward
  /// then throws std::logic_error).
  bool complete = false;
  Index channels = 0;            ///< C
  Index spatial = 0;             ///< H·W
  bool batch_statistics = true;  ///< normalised with batch (true) or running (false) statistics
  Vector<Scalar> mean;           ///< per channel: the mean used
  Vector<Scalar> inv_std;        ///< per channel: 1/√(var + eps)
  Matrix<Scalar> normalized;     ///< x̂ = (x − mean)·inv_std, N × (C·H·W)
  Vector<double> squared_deviations;  ///< workspace: per channel Σ(x − mean)² of the batch
};

namespace detail {

/// Every argument check of batch_norm2d_forward, in order, before anything is written.
template <class Scalar>
void check_batch_norm2d_forward(const ConstMatrix<Scalar>& input, Index channels,
                                const ConstVector<Scalar>& gamma, const ConstVector<Scalar>& beta,
                                const OutVector<Scalar>& running_mean,
                                const OutVector<Scalar>& running_var, NonDeduced<Scalar> momentum,
                                NonDeduced<Scalar> eps, bool batch_statistics, bool update_running,
                                const OutMatrix<Scalar>& output, const char* where) {
  check(channels > 0 && input.cols() % channels == 0, where, "input has ", input.cols(),
        " columns, not a multiple of channels = ", channels);
  check(gamma.size() == channels && beta.size() == channels && running_mean.size() == channels &&
            running_var.size() == channels,
        where, "gamma, beta, running_mean and running_var must have size channels = ", channels,
        ", got ", gamma.size(), ", ", beta.size(), ", ", running_mean.size(), ", ",
        running_var.size());
  check(std::isfinite(eps) && eps > 0 && momentum >= 0 && momentum <= 1, where,
        "need a finite eps > 0 and momentum in [0, 1], got eps ", eps, ", momentum ", momentum);
  const Index n = input.rows(), spatial = input.cols() / channels, count = n * spatial;
  check(!batch_statistics || count > 1, where,
        "batch statistics need more than one value per channel, got N * H * W = ", count);
  check_shape(output, n, input.cols(), where, "output");
  check_finite(input, where, "input");
  check_finite(gamma, where, "gamma");
  check_finite(beta, where, "beta");
  const bool reads_running = !batch_statistics || update_running;
  if (reads_running) {
    check_finite(running_mean, where, "running_mean");
    check_finite(running_var, where, "running_var");
    for (Index c = 0; c < channels; ++c) {
      check(running_var(c) >= 0, where, "running_var element ", c, " is ", running_var(c),
            "; a variance must be >= 0");
    }
  }
}

/// Marks the cache incomplete and sizes it for an N × (C·H·W) input.
template <class Scalar>
void start_batch_norm2d_cache(BatchNorm2dCache<Scalar>& cache, Index n, Index channels,
                              Index spatial, bool batch_statistics) {
  cache.complete = false;
  cache.channels = channels;
  cache.spatial = spatial;
  cache.batch_statistics = batch_statistics;
  cache.mean.resize(channels);
  cache.inv_std.resize(channels);
  cache.squared_deviations.resize(channels);
  ensure_shape(cache.normalized, n, channels * spatial);
}

/// Pass 1: the batch mean (into cache.mean) and Σ(x − mean)² per channel, checked for overflow.
template <class Scalar>
void batch_norm2d_batch_statistics(const ConstMatrix<Scalar>& input,
                                   BatchNorm2dCache<Scalar>& cache, const char* where) {
  const Index n = input.rows(), channels = cache.channels, spatial = cache.spatial;
  const Index count = n * spatial;
  parallel_for(channels, count, [&](Index c) {
    double sum = 0;
    for (Index s = 0; s < n; ++s)
      sum += input.row(s).segment(c * spatial, spatial).template cast<double>().sum();
    const double m = sum / static_cast<double>(count);
    double sq = 0;
    for (Index s = 0; s < n; ++s) {
      sq += (input.row(s).segment(c * spatial, spatial).template cast<double>().array() - m)
                .square()
                .sum();
    }
    cache.mean(c) = static_cast<Scalar>(m);
    cache.squared_deviations(c) = sq;
  });
  // Finite inputs near the largest Scalar can still give an infinite mean or variance, which
  // would turn the output into NaN: refuse them before anything (running statistics) changes.
  for (Index c = 0; c < channels; ++c) {
    const double sq = cache.squared_deviations(c);
    check_domain(std::isfinite(cache.mean(c)) &&
                     std::isfinite(static_cast<Scalar>(sq / static_cast<double>(count - 1))),
                 where, "the batch statistics of channel ", c, " overflow (mean ", cache.mean(c),
                 ", sum of squared deviations ", sq, ")");
  }
}

/// Pass 2: updates the running statistics (if asked), normalises into the cache and writes output.
template <class Scalar>
void batch_norm2d_normalize(const ConstMatrix<Scalar>& input, const ConstVector<Scalar>& gamma,
                            const ConstVector<Scalar>& beta, OutVector<Scalar> running_mean,
                            OutVector<Scalar> running_var, NonDeduced<Scalar> momentum,
                            NonDeduced<Scalar> eps, bool update_running,
                            BatchNorm2dCache<Scalar>& cache, OutMatrix<Scalar> output) {
  const Index n = input.rows(), channels = cache.channels, spatial = cache.spatial;
  const Index count = n * spatial;
  const bool batch_statistics = cache.batch_statistics;
  parallel_for(channels, count, [&](Index c) {
    Scalar mean, var;
    if (batch_statistics) {
      const double sq = cache.squared_deviations(c);
      mean = cache.mean(c);
      var = static_cast<Scalar>(sq / static_cast<double>(count));
      if (update_running) {
        running_mean(c) = (1 - momentum) * running_mean(c) + momentum * mean;
        running_var(c) = (1 - momentum) * running_var(c) +
                         momentum * static_cast<Scalar>(sq / static_cast<double>(count - 1));
      }
    } else {
      mean = running_mean(c);
      var = running_var(c);
    }
    const Scalar inv_std = Scalar(1) / std::sqrt(var + eps);
    cache.mean(c) = mean;
    cache.inv_std(c) = inv_std;
    for (Index s = 0; s < n; ++s) {
      auto xhat = cache.normalized.row(s).segment(c * spatial, spatial);
      xhat = (input.row(s).segment(c * spatial, spatial).array() - mean) * inv_std;
      output.row(s).segment(c * spatial, spatial) = (xhat.array() * gamma(c) + beta(c)).matrix();
    }
  });
}

}  // namespace detail

/// \brief Batch normalisation over N·H·W per channel (full precision, as in the paper):
/// y = γ·(x − μ)/√(σ² + ε) + β. With batch_statistics, μ and σ² (biased) come from the batch and,
/// if update_running, running_mean/running_var (unbiased variance) move by `momentum` toward them;
/// otherwise the running statistics are used. **Overwrites** output.
///
/// Every check runs before anything is written: on a throw the running statistics are unchanged,
/// and the cache is unchanged (a bad argument) or marked incomplete (batch statistics that
/// overflow the Scalar), so that batch_norm2d_backward throws std::logic_error.
/// \param input N × (C·H·W)
/// \param channels C (the number of columns must be a multiple of it)
/// \param gamma, beta per-channel scale and shift, size C, finite
/// \param running_mean, running_var size C, finite, running_var ≥ 0 (read when normalising with
///        them or updating them)
/// \param momentum in [0, 1]
/// \param eps finite and > 0
/// \throws std::invalid_argument on a bad size or hyper-parameter, std::domain_error on NaN/Inf in
///         the input, gamma, beta or the running statistics, or batch statistics that overflow
template <class Scalar>
void batch_norm2d_forward(const detail::ConstMatrix<Scalar>& input, Index channels,
                          const detail::ConstVector<Scalar>& gamma,
                          const detail::ConstVector<Scalar>& beta,
                          detail::OutVector<Scalar> running_mean,
                          detail::OutVector<Scalar> running_var,
                          detail::NonDeduced<Scalar> momentum, detail::NonDeduced<Scalar> eps,
                          bool batch_statistics, bool update_running,
                          BatchNorm2dCache<Scalar>& cache, detail::OutMatrix<Scalar> output) {
  constexpr const char* kWhere = "nn::batch_norm2d_forward";
  detail::check_batch_norm2d_forward<Scalar>(input, channels, gamma, beta, running_mean,
                                             running_var, momentum, eps, batch_statistics,
                                             update_running, output, kWhere);
  const Index n = input.rows(), spatial = input.cols() / channels;
  // Every argument check has passed: from here on the cache is incomplete until the pass ends.
  detail::start_batch_norm2d_cache(cache, n, channels, spatial, batch_statistics);
  if (batch_statistics) detail::batch_norm2d_batch_statistics<Scalar>(input, cache, kWhere);
  detail::batch_norm2d_normalize<Scalar>(input, gamma, beta, running_mean, running_var, momentum,
                                         eps, update_running, cache, output);
  cache.complete = true;
}

/// \brief Backward of batch_norm2d_forward. **Overwrites** grad_input; **accumulates**
/// grad_gamma and grad_beta (each may have size 0: not computed). With batch statistics:
/// ∂x = γ·inv_std/M·(M·∂y − Σ∂y − x̂·Σ(∂y·x̂)), M = N·H·W; with running statistics ∂x = γ·inv_std·∂y.
/// \throws std::logic_error when the cache holds no completed forward pass; std::invalid_argument
///         / std::domain_error on a bad size or NaN/Inf in grad_output or gamma, before anything
///         is written
template <class Scalar>
void batch_norm2d_backward(const detail::ConstMatrix<Scalar>& grad_output,
                           const detail::ConstVector<Scalar>& gamma,
                           const BatchNorm2dCache<Scalar>& cache,
                           detail::OutMatrix<Scalar> grad_input,
                           detail::OutVector<Scalar> grad_gamma,
                           detail::OutVector<Scalar> grad_beta) {
  constexpr const char* kWhere = "nn::batch_norm2d_backward";
  detail::require_complete_forward(cache.complete, kWhere, "nn::batch_norm2d_forward");
  const Index n = cache.normalized.rows(), c_count = cache.channels, spatial = cache.spatial;
  detail::check_shape(grad_output, n, cache.normalized.cols(), kWhere, "grad_output");
  if (grad_input.size() > 0)
    detail::check_shape(grad_input, n, cache.normalized.cols(), kWhere, "grad_input");
  check(gamma.size() == c_count, kWhere, "gamma has size ", gamma.size(), ", expected ", c_count);
  check(grad_gamma.size() == 0 || grad_gamma.size() == c_count, kWhere, "grad_gamma has size ",
        grad_gamma.size(), ", expected ", c_count, " (or 0)");
  check(grad_beta.size() == 0 || grad_beta.size() == c_count, kWhere, "grad_beta has size ",
        grad_beta.size(), ", expected ", c_count, " (or 0)");
  detail::check_finite(grad_output, kWhere, "grad_output");
  detail::check_finite(gamma, kWhere, "gamma");
  const double count = static_cast<double>(n * spatial);
  parallel_for(c_count, n * spatial, [&](Index c) {
    double sum_dy = 0, sum_dy_xhat = 0;
    for (Index s = 0; s < n; ++s) {
      const auto dy = grad_output.row(s).segment(c * spatial, spatial).template cast<double>();
      const auto xhat =
          cache.normalized.row(s).segment(c * spatial, spatial).template cast<double>();
      sum_dy += dy.sum();
      sum_dy_xhat += dy.dot(xhat);
    }
    if (grad_gamma.size() > 0) grad_gamma(c) += static_cast<Scalar>(sum_dy_xhat);
    if (grad_beta.size() > 0) grad_beta(c) += static_cast<Scalar>(sum_dy);
    if (grad_input.size() == 0) return;
    const Scalar scale = gamma(c) * cache.inv_std(c);
    for (Index s = 0; s < n; ++s) {
      auto dx = grad_input.row(s).segment(c * spatial, spatial);
      const auto dy = grad_output.row(s).segment(c * spatial, spatial);
      if (cache.batch_statistics) {
        const auto xhat = cache.normalized.row(s).segment(c * spatial, spatial);
        dx = (scale * (dy.array() - static_cast<Scalar>(sum_dy / count) -
                       xhat.array() * static_cast<Scalar>(sum_dy_xhat / count)))
                 .matrix();
      } else {
        dx = scale * dy;
      }
    }
  });
}

}  // namespace nn
}  // namespace fqt
