#pragma once
/// \file
/// \brief Tensors stored as integer codes only — weights without a full-precision master copy,
/// and low-precision optimizer state — written by stochastic rounding.
///
/// A `QuantizedTensor<Code>` (Code = std::int8_t or std::int16_t) holds a matrix on a symmetric
/// grid with one step per row (a layer's output channel) or one for the tensor:
/// value(i, j) = step_r · code(i, j), |code| ≤ 2^(b−1) − 1. Every write re-derives the steps from
/// the values written (step_r = max_j |x_rj| / (2^(b−1) − 1), rounded up to the next float, so no
/// value is clamped) and rounds x/step_r stochastically with 32-bit uniforms: code k rounds up
/// when its fraction f exceeds u = (r + ½)/2³², r the k-th 32-bit word of the write's Philox
/// stream. The grid depends only on the values written, never on the noise, so the write is
/// unbiased given those values up to the resolution of the uniforms: P(up) = ⌈f·2³² − ½⌉/2³²
/// differs from f by at most 2⁻³³. `write` returns its exact mean square error,
/// E‖Q(x) − x‖² = Σ step²·(p(1 − p) + (p − f)²).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"

namespace fqt {
namespace nn {

/// \brief A matrix stored as signed integer codes with a step per row or per tensor (see the file
/// comment). Default-constructed: 0 × 0.
/// \tparam Code std::int8_t (8-bit codes) or std::int16_t (16-bit codes)
template <class Code>
class QuantizedTensor {
  static_assert(std::is_same_v<Code, std::int8_t> || std::is_same_v<Code, std::int16_t>,
                "fqt: QuantizedTensor stores std::int8_t or std::int16_t codes");

 public:
  /// Bits per code.
  static constexpr int kBits = 8 * static_cast<int>(sizeof(Code));
  /// The largest code magnitude, 2^(b−1) − 1 (the grid is symmetric).
  static constexpr int kMaxCode = (1 << (kBits - 1)) - 1;

  QuantizedTensor() = default;
  /// \brief A rows × cols tensor of zeros, with one step per row when `per_row`.
  /// \throws std::invalid_argument on a negative size or one whose element count overflows
  QuantizedTensor(Index rows, Index cols, bool per_row)
      : rows_(rows), cols_(cols), per_row_(per_row) {
    constexpr const char* kWhere = "nn::QuantizedTensor";
    check(rows >= 0 && cols >= 0, kWhere, "the shape must be non-negative, got ", rows, " x ",
          cols);
    check(cols == 0 || rows <= std::numeric_limits<Index>::max() / cols, kWhere, "the shape ", rows,
          " x ", cols, " overflows Index");
    codes_.assign(static_cast<std::size_t>(rows * cols), Code(0));
    steps_.assign(static_cast<std::size_t>(per_row ? rows : 1), 0.0f);
  }

  /// \brief A tensor from its parts (e.g. read from a file): rows·cols codes, row-major, each of
  /// magnitude ≤ kMaxCode, and one step per row when `per_row`, else one, each finite and ≥ 0.
  /// \throws std::invalid_argument on a bad shape or a count that does not match it,
  ///         std::domain_error on a code out of range or a bad step
  QuantizedTensor(Index rows, Index cols, bool per_row, std::vector<Code> codes,
                  std::vector<float> steps)
      : QuantizedTensor(rows, cols, per_row) {
    constexpr const char* kWhere = "nn::QuantizedTensor";
    check(codes.size() == codes_.size(), kWhere, "a ", rows, " x ", cols, " tensor has ",
          codes_.size(), " codes, got ", codes.size());
    check(steps.size() == steps_.size(), kWhere, "a ", per_row ? "per-row" : "per-tensor", " ",
          rows, " x ", cols, " tensor has ", steps_.size(), " steps, got ", steps.size());
    for (std::size_t k = 0; k < codes.size(); ++k) {
      check_domain(codes[k] >= -kMaxCode && codes[k] <= kMaxCode, kWhere, "code ", k, " is ",
                   int(codes[k]), ", outside the symmetric range [-", kMaxCode, ", ", kMaxCode,
                   "]");
    }
    for (std::size_t k = 0; k < steps.size(); ++k) {
      check_domain(std::isfinite(steps[k]) && steps[k] >= 0, kWhere, "step ", k, " is ", steps[k],
                   ", expected finite and >= 0");
    }
    codes_ = std::move(codes);
    steps_ = std::move(steps);
  }

  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  /// \brief True when each row has its own step.
  bool per_row() const { return per_row_; }
  /// \brief The codes, row-major.
  const std::vector<Code>& codes() const { return codes_; }
  /// \brief The steps: one per row, or one.
  const std::vector<float>& steps() const { return steps_; }
  /// \brief The step of row r.
  float step(Index r) const { return steps_[per_row_ ? static_cast<std::size_t>(r) : 0]; }
  /// \brief The value of element (r, c): step(r)·code.
  double value(Index r, Index c) const {
    return double(step(r)) * double(codes_[static_cast<std::size_t>(r * cols_ + c)]);
  }
  /// \brief Equal: the same shape, granularity, codes and steps.
  friend bool operator==(const QuantizedTensor& a, const QuantizedTensor& b) {
    return a.rows_ == b.rows_ && a.cols_ == b.cols_ && a.per_row_ == b.per_row_ &&
           a.codes_ == b.codes_ && a.steps_ == b.steps_;
  }
  friend bool operator!=(const QuantizedTensor& a, const QuantizedTensor& b) { return !(a == b); }

  /// \brief The bytes the tensor holds: its codes and steps.
  std::size_t bytes() const {
    return codes_.capacity() * sizeof(Code) +
           (steps_.capacity() + next_steps_.capacity()) * sizeof(float);
  }

  /// \brief Writes the values into `out` (rows × cols; overwritten).
  template <class Derived>
  void read(Eigen::MatrixBase<Derived>& out) const {
    using Scalar = typename Derived::Scalar;
    check(out.rows() == rows_ && out.cols() == cols_, "nn::QuantizedTensor::read", "output is ",
          out.rows(), " x ", out.cols(), ", the tensor ", rows_, " x ", cols_);
    for (Index r = 0; r < rows_; ++r) {
      const double s = step(r);
      const Code* row = codes_.data() + r * cols_;
      for (Index c = 0; c < cols_; ++c) out(r, c) = static_cast<Scalar>(s * double(row[c]));
    }
  }

  /// \brief Stores Q(x), x rows × cols, with fresh steps and stochastic rounding from `rng`
  /// (element k, row-major, takes word k mod 4 of block k/4). All or nothing.
  /// \returns the exact E‖Q(x) − x‖² of this write
  /// \throws std::invalid_argument on a shape mismatch, std::domain_error on NaN/Inf in x or a
  ///         value whose step overflows float; the tensor is then unchanged
  template <class Derived>
  double write(const Eigen::MatrixBase<Derived>& x, const Philox& rng) {
    check(x.rows() == rows_ && x.cols() == cols_, "nn::QuantizedTensor::write", "values are ",
          x.rows(), " x ", x.cols(), ", the tensor ", rows_, " x ", cols_);
    // The steps first (and every check): nothing is written unless all of them pass.
    begin_write();
    for (Index r = 0; r < rows_; ++r) fit_row_impl(r, [&](Index c) { return x(r, c); });
    double mse = 0;
    for (Index r = 0; r < rows_; ++r) {
      mse += write_row_impl(
          r, [&](Index c) { return x(r, c); }, rng);
    }
    end_write();
    return mse;
  }

  /// \name A write row by row
  /// What write() does, for values produced one row at a time (an optimizer's update, without a
  /// buffer of the whole tensor): begin_write(); fit_row(r, ·) for every row (the steps and every
  /// check); write_row(r, ·, rng) for every row with the same values; end_write(). Until
  /// end_write() the steps, and the codes of the rows not yet written, are the old ones, so
  /// read_row(r) still gives row r's old values before write_row(r). A throw from fit_row
  /// leaves the tensor as it was (begin_write() starts again). The codes are those write() would
  /// give: element k takes word k mod 4 of block k/4 of `rng`.
  ///@{
  /// \brief Starts a write: no row fitted yet.
  void begin_write() { next_steps_.assign(static_cast<std::size_t>(per_row_ ? rows_ : 1), 0.0f); }
  /// \brief Fits row r's values (cols() of them) into the new steps.
  /// \throws std::domain_error on a NaN/Inf value or one whose step overflows float
  template <class T>
  void fit_row(Index r, const T* values) {
    fit_row_impl(r, [&](Index c) { return values[c]; });
  }
  /// \brief Rounds row r's values (those fitted) onto the new grid; returns their exact
  /// E‖Q(x) − x‖².
  template <class T>
  double write_row(Index r, const T* values, const Philox& rng) {
    return write_row_impl(
        r, [&](Index c) { return values[c]; }, rng);
  }
  /// \brief Ends the write: the new steps become the tensor's.
  void end_write() { steps_.swap(next_steps_); }
  /// \brief Writes row r's values into out (cols() of them).
  template <class T>
  void read_row(Index r, T* out) const {
    const double s = step(r);
    const Code* row = codes_.data() + r * cols_;
    for (Index c = 0; c < cols_; ++c) out[c] = static_cast<T>(s * double(row[c]));
  }
  ///@}

  /// \brief P(round up) for fraction f with the 32-bit uniforms (r + ½)/2³²: ⌈f·2³² − ½⌉/2³².
  static double round_up_probability(double f) {
    if (!(f > 0)) return 0;
    return std::clamp(std::ceil(f * 0x1.0p32 - 0.5), 0.0, 0x1.0p32) * 0x1.0p-32;
  }

 private:
  std::size_t group(Index r) const { return static_cast<std::size_t>(per_row_ ? r : 0); }

  template <class Value>
  void fit_row_impl(Index r, Value&& value) {
    constexpr const char* kWhere = "nn::QuantizedTensor::write";
    double largest = 0;
    for (Index c = 0; c < cols_; ++c) {
      const double v = static_cast<double>(value(c));
      check_domain(std::isfinite(v), kWhere, "value (", r, ", ", c, ") is ", v);
      largest = std::max(largest, std::abs(v));
    }
    float& s = next_steps_[group(r)];
    s = std::max(s, fitted_step(largest, kWhere));
  }

  template <class Value>
  double write_row_impl(Index r, Value&& value, const Philox& rng) {
    const double s = next_steps_[group(r)];
    Code* row = codes_.data() + r * cols_;
    std::array<std::uint32_t, 4> words{};
    double mse = 0;
    for (Index c = 0; c < cols_; ++c) {
      const auto k = static_cast<std::uint64_t>(r * cols_ + c);
      if (k % 4 == 0 || c == 0) words = rng.block(k / 4);
      if (s == 0) {  // an all-zero group: exact zeros
        row[c] = Code(0);
        continue;
      }
      // |y| ≤ kMaxCode by the choice of the step (up to the rounding of the division, which
      // never rounds a code past it: see the clamp).
      const double y = static_cast<double>(value(c)) / s;
      const double fl = std::floor(y), f = y - fl;
      const double u = (double(words[k % 4]) + 0.5) * 0x1.0p-32;
      const double q = std::clamp(fl + (f > u ? 1.0 : 0.0), double(-kMaxCode), double(kMaxCode));
      row[c] = static_cast<Code>(q);
      const double p = round_up_probability(f);
      mse += s * s * (p * (1 - p) + (p - f) * (p - f));
    }
    return mse;
  }

  // The smallest float step s with largest / s ≤ kMaxCode (0 for an all-zero group).
  static float fitted_step(double largest, const char* where) {
    if (largest == 0) return 0.0f;
    const double exact = largest / kMaxCode;
    check_domain(exact <= double(std::numeric_limits<float>::max()), where, "a value of magnitude ",
                 largest, " needs a step past the largest float");
    float s = static_cast<float>(exact);
    if (double(s) < exact) s = std::nextafter(s, std::numeric_limits<float>::infinity());
    if (s < std::numeric_limits<float>::denorm_min()) s = std::numeric_limits<float>::denorm_min();
    return s;
  }

  Index rows_ = 0, cols_ = 0;
  bool per_row_ = true;
  std::vector<Code> codes_;
  std::vector<float> steps_, next_steps_;
};

/// \brief Where a layer finds its weight's 8-bit codes, when an optimizer that stores them
/// (nn::QuantizedSGD with 8-bit weights) fills it: the forward product then multiplies these codes
/// as Q_f(W) instead of quantizing the float view. Layers with a weight own one (shared with their
/// nn::Parameter); `codes` is null while nothing stores the weight, and is owned by the optimizer,
/// which clears it when it is destroyed.
struct StoredWeight {
  const QuantizedTensor<std::int8_t>* codes = nullptr;
};

}  // namespace nn
}  // namespace fqt
