#pragma once
/// \file
/// \brief Internals of the nn layer: argument checks (shapes, finiteness, overflow-checked sizes,
/// completed forward passes), the non-deduced Eigen::Ref aliases of the functional ops, and
/// workspace sizing. No quantizer is needed here.

#include <cmath>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"

namespace fqt {
namespace nn {
namespace detail {

template <class T>
struct Identity {
  using type = T;
};
template <class T>
using NonDeduced = typename Identity<T>::type;

template <class Scalar>
using ConstMatrix = MatrixCRef<NonDeduced<Scalar>>;
template <class Scalar>
using OutMatrix = MatrixRef<NonDeduced<Scalar>>;
template <class Scalar>
using ConstVector = VectorCRef<NonDeduced<Scalar>>;
template <class Scalar>
using OutVector = VectorRef<NonDeduced<Scalar>>;

template <class Scalar>
void static_check_scalar() {
  static_assert(std::is_floating_point_v<Scalar>, "fqt::nn needs a floating-point Scalar");
}

/// \brief Throws std::domain_error naming `where`, `what`, the first non-finite element and its
/// value, unless every element of m is finite.
template <class Derived>
void check_finite(const Eigen::MatrixBase<Derived>& m, const char* where, const char* what) {
  // x − x is 0 for finite x and NaN otherwise: one vectorised sum per row checks the row (Eigen's
  // allFinite() is several times slower).
  bool finite = true;
  for (Index i = 0; i < m.rows() && finite; ++i) {
    finite = std::isfinite((m.row(i).array() - m.row(i).array()).sum());
  }
  if (finite) return;
  for (Index i = 0; i < m.rows(); ++i) {
    for (Index j = 0; j < m.cols(); ++j) {
      if (!std::isfinite(m(i, j))) {
        check_domain(false, where, what, " element (", i, ", ", j, ") is ", m(i, j),
                     "; it must be finite");
      }
    }
  }
}

/// \brief The product of `factors`, all ≥ 0, as an Index; throws std::invalid_argument
/// "<where>: <what> = f1 * f2 * ... overflows Index" when it does not fit (or "... has a negative
/// factor"). Every size derived from user input (C·H·W, K·Ho·Wo, N·C·kh·kw·Ho·Wo, ...)
/// goes through it before it sizes a buffer or bounds a loop.
/// \param what the product in words, e.g. "in_channels * in_height * in_width"
inline Index checked_product(const char* where, const char* what,
                             std::initializer_list<Index> factors) {
  Index product = 1;
  bool negative = false, overflow = false;
  for (const Index f : factors) {
    if (f < 0) {
      negative = true;
    } else if (!overflow && f != 0 && product > std::numeric_limits<Index>::max() / f) {
      overflow = true;
    } else if (!overflow) {
      product *= f;
    }
  }
  if (!negative && !overflow) return product;
  std::ostringstream values;
  const char* separator = "";
  for (const Index f : factors) {
    values << separator << f;
    separator = " * ";
  }
  check(false, where, what, " = ", values.str(),
        negative ? " has a negative factor" : " overflows Index");
  return 0;
}

/// \brief The sum of `terms`, all ≥ 0, as an Index; throws std::invalid_argument
/// "<where>: <what> = t1 + t2 + ... overflows Index" when it does not fit (or has a negative term).
inline Index checked_sum(const char* where, const char* what, std::initializer_list<Index> terms) {
  Index sum = 0;
  bool negative = false, overflow = false;
  for (const Index t : terms) {
    if (t < 0) {
      negative = true;
    } else if (!overflow && sum > std::numeric_limits<Index>::max() - t) {
      overflow = true;
    } else if (!overflow) {
      sum += t;
    }
  }
  if (!negative && !overflow) return sum;
  std::ostringstream values;
  const char* separator = "";
  for (const Index t : terms) {
    values << separator << t;
    separator = " + ";
  }
  check(false, where, what, " = ", values.str(),
        negative ? " has a negative term" : " overflows Index");
  return 0;
}

/// \brief Throws std::logic_error "<where>: the cache holds no completed forward pass (...)"
/// unless `complete`: a backward function given a default-constructed cache, or the cache of a
/// forward call that threw, stops here instead of reading stale or uninitialised workspaces.
/// \param forward the forward function that fills the cache, e.g. "nn::conv2d_forward"
inline void require_complete_forward(bool complete, const char* where, const char* forward) {
  if (!complete) {
    throw std::logic_error(fqt::detail::concat(
        where, ": the cache holds no completed forward pass (no ", forward,
        " has filled it, or the last one threw); run ", forward, " again first"));
  }
}

/// \brief Throws std::invalid_argument unless m is rows × cols, naming the argument and shapes.
template <class Derived>
void check_shape(const Eigen::MatrixBase<Derived>& m, Index rows, Index cols, const char* where,
                 const char* what) {
  check(m.rows() == rows && m.cols() == cols, where, what, " must be ", rows, " x ", cols, ", got ",
        m.rows(), " x ", m.cols());
}

/// Resizes m only when its shape changes (a steady-state call does not allocate).
template <class Scalar>
void ensure_shape(Matrix<Scalar>& m, Index rows, Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

}  // namespace detail
}  // namespace nn
}  // namespace fqt
