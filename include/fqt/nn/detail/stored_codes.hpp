#pragma once
/// \file
/// \brief What nn::QuantizedSGD keeps of a parameter — nothing (a parameter kept in Scalar), 8-bit
/// or 16-bit codes — and the operations on it, each visiting the codes whatever their width.

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <variant>

#include "fqt/core/matrix.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/weight_storage.hpp"

namespace fqt {
namespace nn {

/// \brief A parameter's stored form: std::monostate (kept in Scalar), or its codes.
using StoredCodes =
    std::variant<std::monostate, QuantizedTensor<std::int8_t>, QuantizedTensor<std::int16_t>>;

namespace detail {

/// \brief f(codes) for the codes in s, or `none` when s holds none.
template <class S, class F, class R>
R on_codes(S& s, F&& f, R none) {
  return std::visit(
      [&](auto& t) -> R {
        if constexpr (std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
          return none;
        } else {
          return f(t);
        }
      },
      s);
}

/// \brief The codes' shape (0 × 0 for none).
inline std::pair<Index, Index> shape_of(const StoredCodes& s) {
  return on_codes(
      s, [](const auto& t) { return std::pair<Index, Index>(t.rows(), t.cols()); },
      std::pair<Index, Index>(0, 0));
}
/// \brief The codes' bytes (0 for none).
inline std::size_t bytes_of(const StoredCodes& s) {
  return on_codes(
      s, [](const auto& t) { return t.bytes(); }, std::size_t(0));
}
/// \brief QuantizedTensor::write; 0 for none.
template <class Derived>
double write(StoredCodes& s, const Eigen::MatrixBase<Derived>& x, const Philox& rng) {
  return on_codes(
      s, [&](auto& t) { return t.write(x, rng); }, 0.0);
}
/// \brief QuantizedTensor::read; nothing for none.
template <class Out>
void read(const StoredCodes& s, Out& out) {
  on_codes(
      s, [&](const auto& t) { return t.read(out), true; }, false);
}

/// \name The row-by-row write of QuantizedTensor, on stored codes (which must hold codes)
///@{
inline void begin_write(StoredCodes& s) {
  on_codes(
      s, [](auto& t) { return t.begin_write(), true; }, false);
}
inline void end_write(StoredCodes& s) {
  on_codes(
      s, [](auto& t) { return t.end_write(), true; }, false);
}
template <class Scalar>
void read_row(const StoredCodes& s, Index r, Scalar* out) {
  on_codes(
      s, [&](const auto& t) { return t.read_row(r, out), true; }, false);
}
template <class Scalar>
void fit_row(StoredCodes& s, Index r, const Scalar* values) {
  on_codes(
      s, [&](auto& t) { return t.fit_row(r, values), true; }, false);
}
template <class Scalar>
double write_row(StoredCodes& s, Index r, const Scalar* values, const Philox& rng) {
  return on_codes(
      s, [&](auto& t) { return t.write_row(r, values, rng); }, 0.0);
}
///@}

}  // namespace detail
}  // namespace nn
}  // namespace fqt
