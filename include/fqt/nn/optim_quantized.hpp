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
/// the optimizer keeps. `memory()` counts it apart from the weights. With 8-bit weights that only
/// 8-bit forward passes read, WeightStorageOptions::keep_views = false frees the views while the
/// optimizer lives (the weights then take their codes' bytes and nothing more); the destructor
/// writes them back, so the model holds the trained values afterwards.

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
#include "fqt/nn/detail/stored_codes.hpp"
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
  /// Keep each stored weight's dequantized values (the float view) in its Variable. False, with
  /// 8-bit weights only: the views are freed while the optimizer lives — the layers' 8-bit
  /// forward products multiply the codes, and a pass that reads float weights (Mode::Exact,
  /// fewer forward bits) is refused with a message — and written back when it is destroyed.
  bool keep_views = true;

  /// \throws std::invalid_argument naming the field unless the bit widths are 8/16 and 0/8/16
  void validate(const char* where) const {
    check(weight_bits == 8 || weight_bits == 16, where, "weight_bits must be 8 or 16, got ",
          weight_bits);
    check(momentum_bits == 0 || momentum_bits == 8 || momentum_bits == 16, where,
          "momentum_bits must be 0 (Scalar), 8 or 16, got ", momentum_bits);
    check(keep_views || weight_bits == 8, where,
          "keep_views = false needs weight_bits 8 (the layers multiply 8-bit codes only), got ",
          weight_bits);
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
  using Stored = StoredCodes;

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
      check(storage.keep_views || !stored(i) || parameters_[i].stored != nullptr, kWhere, what,
            " has no slot for its codes (Parameter::stored), so its float view cannot be freed "
            "(keep_views = false)");
    }
    const std::size_t n = parameters_.size();
    weights_.resize(n);
    momentum_.resize(n);
    scalar_momentum_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (!stored(i)) continue;
      Matrix<Scalar>& w = parameters_[i].variable.value();
      weights_[i] = make(storage_.weight_bits, w.rows(), w.cols());
      initial_.weights +=
          detail::write(weights_[i], w, storage_.rng.substream(~std::uint64_t(0), i, 0));
      detail::read(weights_[i], w);
      if (!storage_.keep_views) Matrix<Scalar>().swap(w);  // the layers multiply the codes
      attach(i);
    }
  }

  QuantizedSGD(const QuantizedSGD&) = delete;
  QuantizedSGD& operator=(const QuantizedSGD&) = delete;
  /// \brief Moves the optimizer; the layers' slots keep pointing at the same codes.
  QuantizedSGD(QuantizedSGD&&) = default;
  QuantizedSGD& operator=(QuantizedSGD&&) = delete;
  /// \brief Writes freed views back (keep_views = false) and clears the layers' slots that
  /// still point at this optimizer's codes.
  ~QuantizedSGD() {
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (!storage_.keep_views && stored(i)) {
        Matrix<Scalar>& view = parameters_[i].variable.value();
        view.resize(rows_of(i), cols_of(i));
        detail::read(weights_[i], view);
      }
      const auto& slot = parameters_[i].stored;
      if (slot && slot->codes != nullptr && slot->codes == std::get_if<Codes8>(&weights_[i])) {
        slot->codes = nullptr;
      }
    }
  }

  /// \brief Zeros every parameter's gradient (allocating it on first use).
  void zero_grad() {
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      parameters_[i].variable.grad().setZero(rows_of(i), cols_of(i));
  }

  /// \brief One update from the accumulated gradients (parameters without a gradient are
  /// skipped). All or nothing, as nn::SGD::step: on a NaN/Inf gradient or update,
  /// std::domain_error naming the parameter; on a gradient whose shape no longer matches,
  /// std::invalid_argument; no parameter or state is changed then.
  void step() {
    constexpr const char* kWhere = "nn::QuantizedSGD::step";
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const auto& p = parameters_[i];
      if (!p.variable.has_grad()) continue;
      detail::check_shape(p.variable.grad(), rows_of(i), cols_of(i), kWhere, "a gradient");
      const std::string what = "gradient of parameter '" + p.name + "'";
      detail::check_finite(p.variable.grad(), kWhere, what.c_str());
    }
    // Pass 1 computes every update and checks it (and fits the new grids of the codes); pass 2
    // computes it again and commits. A stored parameter's update is computed one row at a time,
    // so the only buffers are a few rows (and the largest parameter kept in Scalar): no staged
    // copy of the model, and no float copy of a stored weight.
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      if (!parameters_[i].variable.has_grad()) continue;
      if (stored(i)) {
        stored_pass(i, false);
        continue;
      }
      update(i);
      const std::string what = "parameter '" + parameters_[i].name + "' after the update,";
      detail::check_finite(next(), kWhere, what.c_str());
      const std::string momentum = "momentum of parameter '" + parameters_[i].name + "',";
      if (has_velocity_) detail::check_finite(velocity(), kWhere, momentum.c_str());
    }
    RoundingVariance rounding;
    by_parameter_.assign(parameters_.size(), RoundingVariance{});
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      auto& p = parameters_[i];
      if (!p.variable.has_grad()) continue;
      if (stored(i)) {
        by_parameter_[i] = stored_pass(i, true);
        rounding.weights += by_parameter_[i].weights;
        rounding.momentum += by_parameter_[i].momentum;
        if (storage_.keep_views) detail::read(weights_[i], p.variable.value());
        continue;
      }
      update(i);
      if (options_.momentum != 0) scalar_momentum_[i] = velocity();
      p.variable.value() = next();
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
    check(codes.rows() == rows_of(i) && codes.cols() == cols_of(i), kWhere, "parameter '", p.name,
          "' is ", rows_of(i), " x ", cols_of(i), ", the codes ", codes.rows(), " x ",
          codes.cols());
    check(codes.per_row() == storage_.per_row, kWhere, "parameter '", p.name, "' has ",
          storage_.per_row ? "a step per row" : "one step", ", the codes ",
          codes.per_row() ? "a step per row" : "one step");
    std::get<QuantizedTensor<Code>>(weights_[i]) = std::move(codes);
    if (storage_.keep_views) detail::read(weights_[i], parameters_[i].variable.value());
    attach(i);
  }

  /// \brief The bytes of the weights, the optimizer state, the views and the workspaces.
  OptimizerMemory memory() const {
    OptimizerMemory m;
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const Matrix<Scalar>& w = parameters_[i].variable.value();
      m.parameters += rows_of(i) * cols_of(i);
      const auto value_bytes = static_cast<std::size_t>(w.size()) * sizeof(Scalar);
      if (stored(i)) {
        m.weights += detail::bytes_of(weights_[i]);
        m.views += value_bytes;
      } else {
        m.weights += value_bytes;
      }
      m.state += detail::bytes_of(momentum_[i]) +
                 static_cast<std::size_t>(scalar_momentum_[i].size()) * sizeof(Scalar);
    }
    m.workspace = (next_.capacity() + velocity_.capacity() + row_.capacity() +
                   next_row_.capacity() + velocity_row_.capacity() + old_velocity_row_.capacity()) *
                  sizeof(Scalar);
    return m;
  }

 private:
  // A coded tensor's step is a float: its values stay below 127·FLT_MAX (a bound for double).
  static constexpr double kLargest = 127.0 * double(std::numeric_limits<float>::max());

  bool stored(std::size_t i) const { return parameters_[i].weight_decay; }

  // The shape of parameter i: its codes' for a stored one (its view may be freed).
  Index rows_of(std::size_t i) const {
    return stored(i) ? detail::shape_of(weights_[i]).first : parameters_[i].variable.value().rows();
  }
  Index cols_of(std::size_t i) const {
    return stored(i) ? detail::shape_of(weights_[i]).second
                     : parameters_[i].variable.value().cols();
  }

  // Points parameter i's layer slot at its 8-bit codes (16-bit ones are read through the view).
  void attach(std::size_t i) {
    if (parameters_[i].stored) parameters_[i].stored->codes = std::get_if<Codes8>(&weights_[i]);
  }

  Stored make(int bits, Index rows, Index cols) const {
    if (bits == 8) return Codes8(rows, cols, storage_.per_row);
    return Codes16(rows, cols, storage_.per_row);
  }

  using Map = Eigen::Map<Matrix<Scalar>>;
  // The update w′ and momentum v of a parameter kept in Scalar, in buffers as large as the
  // largest such parameter (a bias).
  Map next() { return Map(next_.data(), rows_, cols_); }
  Map velocity() { return Map(velocity_.data(), rows_, cols_); }

  // next() = w′ and velocity() = v of parameter i (kept in Scalar), from its gradient, value and
  // momentum.
  void update(std::size_t i) {
    const auto& p = parameters_[i];
    const Matrix<Scalar>& w = p.variable.value();
    rows_ = w.rows();
    cols_ = w.cols();
    const auto size = static_cast<std::size_t>(w.size());
    if (next_.size() < size) next_.resize(size);
    if (velocity_.size() < size) velocity_.resize(size);
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar decay = static_cast<Scalar>(options_.weight_decay);
    Map d = next(), v = velocity();
    d = p.variable.grad();
    if (p.weight_decay && decay != 0) d += decay * w;
    has_velocity_ = mu != 0;
    if (has_velocity_) {
      if (scalar_momentum_[i].size() == 0) {
        v = d;  // PyTorch: the first step initialises the buffer with the gradient
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

  // One pass over the rows of stored parameter i: row r's update w′ (into next_row_) and
  // momentum v (into velocity_row_) from its gradient, its codes and its momentum, the same
  // rule as update(). Pass 1 (`commit` false) checks them and fits the new grids; pass 2
  // computes them again and writes them, returning the rounding error of the writes. Row r's
  // old codes and momentum are read before row r is written, so both passes see the old ones.
  RoundingVariance stored_pass(std::size_t i, bool commit) {
    const auto& p = parameters_[i];
    const Matrix<Scalar>& g = p.variable.grad();
    const Index rows = g.rows(), cols = g.cols();
    const auto width = static_cast<std::size_t>(cols);
    for (auto* b : {&row_, &next_row_, &velocity_row_, &old_velocity_row_}) {
      if (b->size() < width) {  // grown to the widest row seen, without a growth margin
        b->resize(width);
        b->shrink_to_fit();
      }
    }
    const bool velocity = options_.momentum != 0;
    const bool coded = velocity && storage_.momentum_bits != 0;
    // A first step (no momentum yet) starts the momentum with the gradient. A coded momentum
    // created here by pass 1 holds zeros, which gives the same v = 0·μ + g.
    if (coded && std::holds_alternative<std::monostate>(momentum_[i])) {
      momentum_[i] = make(storage_.momentum_bits, rows, cols);
    }
    const bool first = velocity && !coded && scalar_momentum_[i].size() == 0;
    if (commit && velocity && !coded && first) scalar_momentum_[i].resize(rows, cols);
    Stored& w = weights_[i];
    Stored* m = coded ? &momentum_[i] : nullptr;
    if (!commit) {
      detail::begin_write(w);
      if (m) detail::begin_write(*m);
    }
    const Philox weight_rng = storage_.rng.substream(step_, i, 0);
    const Philox momentum_rng = storage_.rng.substream(step_, i, 1);
    RoundingVariance error;
    for (Index r = 0; r < rows; ++r) {
      const Scalar *next = next_row_.data(), *v = velocity_row_.data();
      detail::read_row(w, r, row_.data());
      if (m) detail::read_row(*m, r, old_velocity_row_.data());
      update_row(i, r, m != nullptr, first);
      if (!commit) {
        check_row(next, cols, r, "parameter '", p.name, "' after the update,");
        detail::fit_row(w, r, next);
        if (velocity) check_row(v, cols, r, "momentum of parameter '", p.name, "',");
        if (m) detail::fit_row(*m, r, v);
        continue;
      }
      if (m) {
        error.momentum += detail::write_row(*m, r, v, momentum_rng);
      } else if (velocity) {
        for (Index c = 0; c < cols; ++c) scalar_momentum_[i](r, c) = v[c];
      }
      error.weights += detail::write_row(w, r, next, weight_rng);
    }
    if (commit) {
      detail::end_write(w);
      if (m) detail::end_write(*m);
    }
    return error;
  }

  // Row r of stored parameter i's update, update()'s rule: w′ into next_row_ and v into
  // velocity_row_, from its gradient, its decoded weight (row_) and its old momentum
  // (old_velocity_row_ when `coded`, else the Scalar momentum; none on a `first` step).
  void update_row(std::size_t i, Index r, bool coded, bool first) {
    const Matrix<Scalar>& g = parameters_[i].variable.grad();
    const Scalar lr = static_cast<Scalar>(options_.learning_rate);
    const Scalar mu = static_cast<Scalar>(options_.momentum);
    const Scalar decay = static_cast<Scalar>(options_.weight_decay);
    const Scalar* x = row_.data();
    Scalar *next = next_row_.data(), *v = velocity_row_.data();
    for (Index c = 0; c < g.cols(); ++c) {
      Scalar d = g(r, c);
      if (decay != 0) d += decay * x[c];
      if (mu != 0) {
        const Scalar old = coded ? old_velocity_row_[static_cast<std::size_t>(c)]
                                 : (first ? Scalar(0) : scalar_momentum_[i](r, c));
        v[c] = first ? d : mu * old + d;
        d = options_.nesterov ? d + mu * v[c] : v[c];
      }
      next[c] = x[c] - lr * d;
    }
  }

  // Throws std::domain_error naming the value (what: "<prefix>'<name>'<suffix>") unless the
  // row's values are finite and within what codes with a float step can hold. The message is
  // formed only on failure: this runs for every row of every step.
  static void check_row(const Scalar* values, Index cols, Index r, const char* prefix,
                        const std::string& name, const char* suffix) {
    constexpr const char* kWhere = "nn::QuantizedSGD::step";
    for (Index c = 0; c < cols; ++c) {
      const double v = static_cast<double>(values[c]);
      check_domain(std::isfinite(v), kWhere, prefix, name, suffix, " element (", r, ", ", c,
                   ") is ", v);
      check_domain(std::abs(v) <= kLargest, kWhere, prefix, name, suffix,
                   " exceeds what its codes can hold");
    }
  }

  std::vector<Parameter<Scalar>> parameters_;
  SgdOptions options_;
  WeightStorageOptions storage_;
  std::vector<Stored> weights_, momentum_;
  std::vector<Matrix<Scalar>> scalar_momentum_;
  // A parameter kept in Scalar: its update and momentum; a stored one: one row of its decoded
  // weight, update, momentum and old momentum (all reused).
  std::vector<Scalar> next_, velocity_;
  std::vector<Scalar> row_, next_row_, velocity_row_, old_velocity_row_;
  Index rows_ = 0, cols_ = 0;  // the shape of the parameter in them
  bool has_velocity_ = false;
  std::uint64_t step_ = 0;
  RoundingVariance last_, initial_;
  std::vector<RoundingVariance> by_parameter_;
};

}  // namespace nn
}  // namespace fqt
