#pragma once
/// \file
/// \brief SGD without full-precision master weights: each weight is kept only as integer codes
/// (8 or 16 bits, fqt/nn/weight_storage.hpp), the update is computed in floating point on the
/// fly and written back onto the grid by stochastic rounding, and the momentum may be kept as
/// codes too.
///
/// The update rule is nn::SGD's (PyTorch's): g = ∇ + λ·w, v = μ·v + g, d = g + μ·v (Nesterov) or
/// v, w′ = w − η·d. Parameters with `weight_decay` set (the weights of linear and conv layers) are
/// stored as codes; the others (biases, BatchNorm's affine parameters: a few hundred scalars) stay
/// in Scalar with a Scalar momentum. The rounding of step t uses rng.substream(t, i, 0) for
/// parameter i's weight and (t, i, 1) for its momentum, so a run is reproducible. Because each
/// write's grid is derived from the values written, E[w_{t+1} | w_t, ∇] = w′ (to within 2⁻³³ of a
/// step): the rounding adds variance, not bias, and `last_rounding()` gives it exactly.
///
/// With 8-bit weights the optimizer fills each layer's nn::StoredWeight slot with its codes, and
/// the forward product multiplies those (at 8 forward bits) instead of quantizing a float copy;
/// the slots are cleared when the optimizer is destroyed. The model's Variable of a stored
/// parameter holds the dequantized codes: a **view** for whoever reads the weights as floats
/// (Mode::Exact, forward bits below 8, 16-bit codes, a checkpoint), rewritten after every step.
/// It is output only: every update starts from the codes, so writing the view changes nothing
/// the optimizer keeps. `memory()` counts it apart from the weights.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/layers.hpp"
#include "fqt/nn/optim.hpp"
#include "fqt/nn/weight_storage.hpp"

namespace fqt {
namespace nn {

/// \brief How QuantizedSGD stores the weights and the momentum.
struct WeightStorageOptions {
  int weight_bits = 16;   ///< 8 or 16: the codes of each weight
  int momentum_bits = 0;  ///< 0: momentum in Scalar; 8 or 16: as codes
  bool per_row = true;    ///< one step per row (output channel), else one per tensor
  Philox rng;             ///< root of the rounding noise (see the file comment)

  /// \throws std::invalid_argument naming the field unless the bit widths are 8/16 and 0/8/16
  void validate(const char* where) const {
    check(weight_bits == 8 || weight_bits == 16, where, "weight_bits must be 8 or 16, got ",
          weight_bits);
    check(momentum_bits == 0 || momentum_bits == 8 || momentum_bits == 16, where,
          "momentum_bits must be 0 (Scalar), 8 or 16, got ", momentum_bits);
  }
};

/// \brief The exact mean square error the last step's stochastic rounding added, summed over the
/// elements (E‖Q(x) − x‖²): of the weights, and of the stored momentum.
struct RoundingVariance {
  double weights = 0;
  double momentum = 0;
};

/// \brief SGD whose weights are stored as codes only (see the file comment).
template <class Scalar = float>
class QuantizedSGD {
 public:
  using Codes8 = QuantizedTensor<std::int8_t>;
  using Codes16 = QuantizedTensor<std::int16_t>;
  using Stored = std::variant<std::monostate, Codes8, Codes16>;

  /// \brief Stores every weight as codes, rounding its current value stochastically (with
  /// rng.substream(~0, i, 0)), and replaces the Variable's value by the codes' values.
  /// \throws std::invalid_argument on bad options, std::domain_error on a non-finite weight;
  ///         nothing is changed then
  QuantizedSGD(std::vector<Parameter<Scalar>> parameters, const SgdOptions& options,
               const WeightStorageOptions& storage)
      : parameters_(std::move(parameters)), options_(options), storage_(storage) {
    constexpr const char* kWhere = "nn::QuantizedSGD";
    storage.validate(kWhere);
    options.validate(kWhere);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Matrix<Scalar>& w = parameters_[i].variable.value();
      const std::string what = "parameter '" + parameters_[i].name + "'";
      detail::check_finite(w, kWhere, what.c_str());
      check_domain(!stored(i) || w.size() == 0 || double(w.cwiseAbs().maxCoeff()) <= kLargest,
                   kWhere, what, " exceeds what its codes can hold");
    }
    const std::size_t n = parameters_.size();
    weights_.resize(n);
    momentum_.resize(n);
    scalar_momentum_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!stored(i)) continue;
      Matrix<Scalar>& w = parameters_[i].variable.value();
      weights_[i] = make(storage_.weight_bits, w.rows(), w.cols());
      initial_.weights += write(weights_[i], w, storage_.rng.substream(~std::uint64_t(0), i, 0));
      read(weights_[i], w);
      attach(i);
    }
  }

  QuantizedSGD(const QuantizedSGD&) = delete;
  QuantizedSGD& operator=(const QuantizedSGD&) = delete;
  /// \brief Moves the optimizer; the layers' slots keep pointing at the same codes.
  QuantizedSGD(QuantizedSGD&&) = default;
  QuantizedSGD& operator=(QuantizedSGD&&) = delete;
  /// \brief Clears the layers' slots that still point at this optimizer's codes.
  ~QuantizedSGD() {
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& slot = parameters_[i].stored;
      if (slot && slot->codes != nullptr && slot->codes == std::get_if<Codes8>(&weights_[i])) {
        slot->codes = nullptr;
      }
    }
  }

  /// \brief Zeros every parameter's gradient (allocating it on first use).
  void zero_grad() {
    for (auto& p : parameters_) p.variable.zero_grad();
  }

  /// \brief One update from the accumulated gradients (parameters without a gradient are
  /// skipped). All or nothing, as nn::SGD::step: on a NaN/Inf gradient or update,
  /// std::domain_error naming the parameter; on a gradient whose shape no longer matches,
  /// std::invalid_argument; no parameter or state is changed then.
  void step() {
    constexpr const char* kWhere = "nn::QuantizedSGD::step";
    for (const auto& p : parameters_) {
      if (!p.variable.has_grad()) continue;
      detail::check_shape(p.variable.grad(), p.variable.value().rows(), p.variable.value().cols(),
                          kWhere, "a gradient");
      const std::string what = "gradient of parameter '" + p.name + "'";
      detail::check_finite(p.variable.grad(), kWhere, what.c_str());
    }
    // Pass 1 computes every update and checks it; pass 2 computes it again and commits, so that
    // the only buffers are one parameter's (no staged copy of the model).
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (!parameters_[i].variable.has_grad()) continue;
      update(i);
      const std::string what = "parameter '" + parameters_[i].name + "' after the update,";
      detail::check_finite(next(), kWhere, what.c_str());
      const std::string momentum = "momentum of parameter '" + parameters_[i].name + "',";
      if (has_velocity_) detail::check_finite(velocity(), kWhere, momentum.c_str());
      if (stored(i)) {
        check_domain(rows_ * cols_ == 0 || double(next().cwiseAbs().maxCoeff()) <= kLargest, kWhere,
                     what, " exceeds what its codes can hold");
        check_domain(!has_velocity_ || rows_ * cols_ == 0 ||
                         double(velocity().cwiseAbs().maxCoeff()) <= kLargest,
                     kWhere, momentum, " exceeds what its codes can hold");
      }
    }
    RoundingVariance rounding;
    by_parameter_.assign(parameters_.size(), RoundingVariance{});
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      auto& p = parameters_[i];
      if (!p.variable.has_grad()) continue;
      update(i);
      RoundingVariance& mine = by_parameter_[i];
      if (options_.momentum != 0) {
        if (stored(i) && storage_.momentum_bits != 0) {
          if (std::holds_alternative<std::monostate>(momentum_[i])) {
            momentum_[i] = make(storage_.momentum_bits, rows_, cols_);
          }
          mine.momentum = write(momentum_[i], velocity(), storage_.rng.substream(step_, i, 1));
          rounding.momentum += mine.momentum;
        } else {
          scalar_momentum_[i] = velocity();
        }
      }
      if (stored(i)) {
        mine.weights = write(weights_[i], next(), storage_.rng.substream(step_, i, 0));
        rounding.weights += mine.weights;
        read(weights_[i], p.variable.value());
      } else {
        p.variable.value() = next();
      }
    }
    last_ = rounding;
    ++step_;
  }

  /// \brief The current learning rate.
  double learning_rate() const { return options_.learning_rate; }
  /// \brief Sets the learning rate (e.g. from a schedule); must be finite and ≥ 0.
  void set_learning_rate(double lr) {
    check(std::isfinite(lr) && lr >= 0, "nn::QuantizedSGD::set_learning_rate",
          "learning rate must be finite and >= 0, got ", lr);
    options_.learning_rate = lr;
  }
  /// \brief The parameters being optimised.
  const std::vector<Parameter<Scalar>>& parameters() const { return parameters_; }
  /// \brief Steps taken.
  std::uint64_t steps() const { return step_; }
  /// \brief The exact rounding error of the last step (zeros before the first).
  RoundingVariance last_rounding() const { return last_; }
  /// \brief The exact rounding error of the last step, parameter by parameter (in the order of
  /// parameters(); zeros for parameters kept in Scalar, and before the first step: empty).
  const std::vector<RoundingVariance>& last_rounding_by_parameter() const { return by_parameter_; }
  /// \brief The exact rounding error of the constructor's first write of the weights.
  RoundingVariance initial_rounding() const { return initial_; }
  /// \brief The stored weight of parameter i (monostate for a parameter kept in Scalar).
  const Stored& stored_weight(std::size_t i) const { return weights_.at(i); }

  /// \brief Replaces the stored weight of parameter i by `codes` (e.g. read from a checkpoint)
  /// and rewrites its view; the momentum is kept.
  /// \throws std::invalid_argument unless parameter i is stored and `codes` has its shape, the
  ///         optimizer's bit width and its steps' granularity; nothing is changed then
  template <class Code>
  void load_weight(std::size_t i, QuantizedTensor<Code> codes) {
    constexpr const char* kWhere = "nn::QuantizedSGD::load_weight";
    check(i < parameters_.size(), kWhere, "parameter ", i, " of ", parameters_.size());
    const auto& p = parameters_[i];
    check(stored(i), kWhere, "parameter '", p.name, "' is not stored as codes");
    check(QuantizedTensor<Code>::kBits == storage_.weight_bits, kWhere, "parameter '", p.name,
          "' is stored in ", storage_.weight_bits, " bits, got ", QuantizedTensor<Code>::kBits,
          "-bit codes");
    check(codes.rows() == p.variable.value().rows() && codes.cols() == p.variable.value().cols(),
          kWhere, "parameter '", p.name, "' is ", p.variable.value().rows(), " x ",
          p.variable.value().cols(), ", the codes ", codes.rows(), " x ", codes.cols());
    check(codes.per_row() == storage_.per_row, kWhere, "parameter '", p.name, "' has ",
          storage_.per_row ? "a step per row" : "one step", ", the codes ",
          codes.per_row() ? "a step per row" : "one step");
    std::get<QuantizedTensor<Code>>(weights_[i]) = std::move(codes);
    read(weights_[i], parameters_[i].variable.value());
    attach(i);
  }

  /// \brief The bytes of the weights, the optimizer state, the views and the workspaces.
  OptimizerMemory memory() const {
    OptimizerMemory m;
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Matrix<Scalar>& w = parameters_[i].variable.value();
      m.parameters += w.size();
      const auto value_bytes = static_cast<std::size_t>(w.size()) * sizeof(Scalar);
      if (stored(i)) {
        m.weights += bytes(weights_[i]);
        m.views += value_bytes;
      } else {
        m.weights += value_bytes;
      }
      m.state += bytes(momentum_[i]) +
                 static_cast<std::size_t>(scalar_momentum_[i].size()) * sizeof(Scalar);
    }
    m.workspace = (next_.capacity() + velocity_.capacity() + current_.capacity()) * sizeof(Scalar);
    return m;
  }

 private:
  // A coded tensor's step is a float: its values stay below 127·FLT_MAX (a bound for double).
  static constexpr double kLargest = 127.0 * double(std::numeric_limits<float>::max());

  bool stored(std::size_t i) const { return parameters_[i].weight_decay; }

  // Points parameter i's layer slot at its 8-bit codes (16-bit ones are read through the view).
  void attach(std::size_t i) {
    if (parameters_[i].stored) parameters_[i].stored->codes = std::get_if<Codes8>(&weights_[i]);
  }

  Stored make(int bits, Index rows, Index cols) const {
    if (bits == 8) return Codes8(rows, cols, storage_.per_row);
    return Codes16(rows, cols, storage_.per_row);
  }

  using Map = Eigen::Map<Matrix<Scalar>>;
  // One parameter's update w′ and momentum v, in buffers as large as the largest parameter.
  Map next() { return Map(next_.data(), rows_, cols_); }
  Map velocity() { return Map(velocity_.data(), rows_, cols_); }

  // next() = w′ and velocity() = v of parameter i, from its gradient, weight and momentum. A
  // stored weight is read from its codes (into current_), never from the view.
  void update(std::size_t i) {
    const auto& p = parameters_[i];
    rows_ = p.variable.value().rows();
    cols_ = p.variable.value().cols();
    const auto size = static_cast<std::size_t>(rows_ * cols_);
    if (next_.size() < size) next_.resize(size);
    if (velocity_.size() < size) velocity_.resize(size);
    if (stored(i) && current_.size() < size) current_.resize(size);
    Map decoded(current_.data(), stored(i) ? rows_ : 0, stored(i) ? cols_ : 0);
    if (stored(i)) read(weights_[i], decoded);
    const MatrixCRef<Scalar> w =
        stored(i) ? MatrixCRef<Scalar>(decoded) : MatrixCRef<Scalar>(p.variable.value());
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar decay = static_cast<Scalar>(options_.weight_decay);
    Map d = next(), v = velocity();
    d = p.variable.grad();
    if (p.weight_decay && decay != 0) d += decay * w;
    has_velocity_ = mu != 0;
    if (has_velocity_) {
      const bool coded = stored(i) && storage_.momentum_bits != 0;
      const bool first = coded ? std::holds_alternative<std::monostate>(momentum_[i])
                               : scalar_momentum_[i].size() == 0;
      if (first) {
        v = d;  // PyTorch: the first step initialises the buffer with the gradient
      } else if (coded) {
        read(momentum_[i], v);
        v = mu * v + d;
      } else {
        v = mu * scalar_momentum_[i] + d;
      }
      if (options_.nesterov) {
        d += mu * v;
      } else {
        d = v;
      }
    }
    d = w - lr * d;
  }

  template <class Derived>
  static double write(Stored& s, const Eigen::MatrixBase<Derived>& x, const Philox& rng) {
    return std::visit(
        [&](auto& t) -> double {
          if constexpr (std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
            return 0.0;
          } else {
            return t.write(x, rng);
          }
        },
        s);
  }
  template <class Out>
  static void read(const Stored& s, Out& out) {
    std::visit(
        [&](const auto& t) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) t.read(out);
        },
        s);
  }
  static std::size_t bytes(const Stored& s) {
    return std::visit(
        [](const auto& t) -> std::size_t {
          if constexpr (std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
            return 0;
          } else {
            return t.bytes();
          }
        },
        s);
  }

  std::vector<Parameter<Scalar>> parameters_;
  SgdOptions options_;
  WeightStorageOptions storage_;
  std::vector<Stored> weights_, momentum_;
  std::vector<Matrix<Scalar>> scalar_momentum_;
  // One parameter's update, momentum and decoded weight (reused).
  std::vector<Scalar> next_, velocity_, current_;
  Index rows_ = 0, cols_ = 0;  // the shape of the parameter in them
  bool has_velocity_ = false;
  std::uint64_t step_ = 0;
  RoundingVariance last_, initial_;
  std::vector<RoundingVariance> by_parameter_;
};

}  // namespace nn
}  // namespace fqt
