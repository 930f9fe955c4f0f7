#pragma once
/// \file
/// \brief Softmax cross-entropy (with optional label smoothing), as a function and as an autograd
/// op; and the count of correct predictions. Full precision, as in the paper.

#include <cmath>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/nn/autograd.hpp"
#include "fqt/nn/detail/checks.hpp"

namespace fqt {
namespace nn {

namespace detail {
template <class Derived>
void check_labels(const Eigen::MatrixBase<Derived>& logits, const std::vector<int>& labels,
                  const char* where) {
  check(static_cast<Index>(labels.size()) == logits.rows(), where, "labels has size ",
        labels.size(), " but logits has ", logits.rows(), " rows");
  check(logits.cols() > 0, where, "logits must have at least one column");
  for (std::size_t i = 0; i < labels.size(); ++i) {
    check(labels[i] >= 0 && labels[i] < logits.cols(), where, "labels[", i, "] = ", labels[i],
          " is outside [0, ", logits.cols(), ")");
  }
}
}  // namespace detail

/// \brief Mean softmax cross-entropy of the rows of `logits` against `labels`, and its gradient.
///
/// With p = softmax(z_i) and the smoothed target t = (1 − ε)·onehot(y_i) + ε/K, the loss is
/// (1/N)·Σ_i −Σ_k t_k log p_k and ∂loss/∂z_i = (p − t)/N.
/// \param logits N × K
/// \param labels N class indices in [0, K)
/// \param grad_logits N × K: **overwritten** with ∂loss/∂logits (size 0: not computed)
/// \param label_smoothing ε in [0, 1)
/// \return the mean loss
/// \throws std::invalid_argument on an empty batch (the mean of nothing), a label outside [0, K)
///         or a bad shape; std::domain_error on NaN/Inf in the logits
template <class In, class Out>
typename In::Scalar softmax_cross_entropy(const Eigen::MatrixBase<In>& logits,
                                          const std::vector<int>& labels,
                                          Eigen::MatrixBase<Out>& grad_logits,
                                          double label_smoothing = 0) {
  using Scalar = typename In::Scalar;
  constexpr const char* kWhere = "nn::softmax_cross_entropy";
  detail::check_labels(logits, labels, kWhere);
  check(logits.rows() > 0, kWhere,
        "the batch is empty (logits has 0 rows): its mean loss is undefined");
  check(label_smoothing >= 0 && label_smoothing < 1, kWhere,
        "label_smoothing must be in [0, 1), got ", label_smoothing);
  if (grad_logits.size() > 0) {
    detail::check_shape(grad_logits, logits.rows(), logits.cols(), kWhere, "grad_logits");
  }
  detail::check_finite(logits, kWhere, "logits");
  const Index n = logits.rows(), k = logits.cols();
  const double off = label_smoothing / static_cast<double>(k);
  const double on = 1.0 - label_smoothing + off;
  double total = 0;
  for (Index i = 0; i < n; ++i) {
    const auto z = logits.row(i).template cast<double>();
    const double m = z.maxCoeff();
    const double log_sum = m + std::log((z.array() - m).exp().sum());
    double loss = 0;
    for (Index j = 0; j < k; ++j) {
      const double t = j == labels[static_cast<std::size_t>(i)] ? on : off;
      loss -= t * (z(j) - log_sum);
      if (grad_logits.size() > 0) {
        grad_logits(i, j) = static_cast<Scalar>((std::exp(z(j) - log_sum) - t) / n);
      }
    }
    total += loss;
  }
  return static_cast<Scalar>(total / static_cast<double>(n));
}

/// \brief Differentiable mean softmax cross-entropy; returns a 1 × 1 variable.
template <class Scalar>
Variable<Scalar> softmax_cross_entropy(Tape<Scalar>& tape, const Variable<Scalar>& logits,
                                       const std::vector<int>& labels, double label_smoothing = 0) {
  Matrix<Scalar> grad(logits.batch(), logits.value().cols());
  Matrix<Scalar> loss(1, 1);
  loss(0, 0) = softmax_cross_entropy(logits.value(), labels, grad, label_smoothing);
  Variable<Scalar> output(std::move(loss), logits.requires_grad());
  if (logits.requires_grad()) {
    tape.record([logits, output, grad = std::move(grad)]() {
      if (!output.has_grad()) return;
      logits.accumulate_grad(Matrix<Scalar>(grad * output.grad()(0, 0)));
    });
  }
  return output;
}

/// \brief Number of rows whose largest logit (first on ties) is at the label's index.
/// \throws std::invalid_argument on a label outside [0, K) or a size mismatch, std::domain_error
///         on NaN/Inf in the logits (whose maximum would be meaningless)
template <class In>
Index count_correct(const Eigen::MatrixBase<In>& logits, const std::vector<int>& labels) {
  detail::check_labels(logits, labels, "nn::count_correct");
  detail::check_finite(logits, "nn::count_correct", "logits");
  Index correct = 0;
  for (Index i = 0; i < logits.rows(); ++i) {
    Index arg;
    logits.row(i).maxCoeff(&arg);
    correct += arg == labels[static_cast<std::size_t>(i)];
  }
  return correct;
}

}  // namespace nn
}  // namespace fqt
