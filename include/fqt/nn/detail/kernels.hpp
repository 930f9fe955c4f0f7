#pragma once
/// \file
/// \brief Internals of the nn layer: argument checks, the quantizer dispatch of a QuantPolicy, a
/// thread-count-independent GEMM, and im2col / col2im.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/quant.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fqt {
namespace nn {
namespace detail {

/// Blocks deduction, so the Scalar of a functional op is taken from its cache argument and any
/// compatible matrix, block or map binds to the Eigen::Ref parameters.
template <class T>
struct Identity {
  using type = T;
};
template <class T>
using NonDeduced = typename Identity<T>::type;

template <class Scalar>
using ConstMatrix = Eigen::Ref<const Matrix<NonDeduced<Scalar>>>;
template <class Scalar>
using OutMatrix = Eigen::Ref<Matrix<NonDeduced<Scalar>>>;
template <class Scalar>
using ConstVector = Eigen::Ref<const Vector<NonDeduced<Scalar>>>;
template <class Scalar>
using OutVector = Eigen::Ref<Vector<NonDeduced<Scalar>>>;

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

/// \brief Runs body(b) for b in [0, blocks). The partition into blocks is the caller's and never
/// depends on the thread count, and every Eigen product inside body runs single-threaded: when
/// threads are available the blocks run in an OpenMP team of at least two threads (Eigen does not
/// parallelise a product inside a team). Why: Eigen's own parallel GEMM re-blocks the depth with
/// the thread count, which changes the rounding; fqt promises bit-identical results for any
/// thread count. `flops` is the total work; below Eigen's threshold for threading (1e5 multiply-
/// adds) the blocks simply run in order.
template <class Body>
void run_blocks(Index blocks, double flops, Body&& body) {
#ifdef _OPENMP
  if (flops >= 1e5 && !omp_in_parallel() && omp_get_max_threads() > 1) {
    const int team = static_cast<int>(
        std::max<Index>(2, std::min<Index>(omp_get_max_threads(), std::max<Index>(blocks, 1))));
    fqt::detail::FirstException error(blocks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (Index b = 0; b < blocks; ++b) error.run(b, body);
    error.rethrow();
    return;
  }
#else
  (void)flops;
#endif
  for (Index b = 0; b < blocks; ++b) body(b);
}

/// Output panel width of gemm(): large enough for Eigen's kernels to run at full speed.
inline constexpr Index kGemmPanel = 128;

/// \brief dst = lhs · rhs (or dst += lhs · rhs when accumulate), split into fixed panels of
/// kGemmPanel columns (or rows, whichever dimension of dst is larger) computed in parallel; the
/// result does not depend on the number of threads. dst must not alias lhs or rhs.
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  const Index m = dst.rows(), n = dst.cols(), k = lhs.cols();
  FQT_ASSERT(lhs.rows() == m && rhs.rows() == k && rhs.cols() == n);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) dst.setZero();
    return;
  }
  const bool split_columns = n >= m;
  const Index length = split_columns ? n : m;
  const Index panels = (length + kGemmPanel - 1) / kGemmPanel;
  run_blocks(panels, static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k),
             [&](Index p) {
               const Index start = p * kGemmPanel;
               const Index width = std::min(kGemmPanel, length - start);
               if (split_columns) {
                 auto out = dst.middleCols(start, width);
                 if (accumulate) {
                   out.noalias() += lhs * rhs.middleCols(start, width);
                 } else {
                   out.noalias() = lhs * rhs.middleCols(start, width);
                 }
               } else {
                 auto out = dst.middleRows(start, width);
                 if (accumulate) {
                   out.noalias() += lhs.middleRows(start, width) * rhs;
                 } else {
                   out.noalias() = lhs.middleRows(start, width) * rhs;
                 }
               }
             });
}

/// \brief Column sums of g added to out (full precision; a fixed summation order).
template <class Scalar>
void accumulate_column_sums(const MatrixCRef<Scalar>& g, Eigen::Ref<Vector<Scalar>> out) {
  for (Index i = 0; i < g.rows(); ++i) out += g.row(i).transpose();
}

// ---- quantizer dispatch ---------------------------------------------------------------------

/// \brief out = Q_f(x) for an activation: per tensor, round to nearest, free grid.
template <class Scalar>
void quantize_activation(const QuantPolicy& policy, const MatrixCRef<Scalar>& x,
                         MatrixRef<Scalar> out) {
  PerTensorQuantizer<Scalar, Nearest>(policy.activation_bits, Grid::Free)
      .fake_quantize(x, Philox(), out);
}

/// \brief out = Q_f(w) for a weight: per tensor, round to nearest, zero on the grid.
template <class Scalar>
void quantize_weight(const QuantPolicy& policy, const MatrixCRef<Scalar>& w,
                     MatrixRef<Scalar> out) {
  PerTensorQuantizer<Scalar, Nearest>(policy.weight_bits, Grid::ZeroAligned)
      .fake_quantize(w, Philox(), out);
}

/// \brief out = Q_b1(g) (rows of g are samples) with the policy's quantizer, bits, grid and
/// rounding. Every element of out is written, or it throws (std::invalid_argument for a spec the
/// catalogue rejects, which QuantPolicy::validate rejects first).
template <class Scalar>
void quantize_grad_input(const QuantPolicy& policy, const MatrixCRef<Scalar>& g, const Philox& rng,
                         MatrixRef<Scalar> out) {
  AnyQuantizer<Scalar>(policy.grad_input_spec()).fake_quantize(g, rng, out);
}

/// \brief out = Q_b2(g) with the policy's grad-weight quantizer for a layer whose gradient g has
/// `channels` output channels (blocks of columns), as quantize_grad_input.
template <class Scalar>
void quantize_grad_weight(const QuantPolicy& policy, const MatrixCRef<Scalar>& g, Index channels,
                          const Philox& rng, MatrixRef<Scalar> out) {
  AnyQuantizer<Scalar>(policy.grad_weight_spec(channels)).fake_quantize(g, rng, out);
}

/// Resizes m only when its shape changes (a steady-state call does not allocate).
template <class Scalar>
void ensure_shape(Matrix<Scalar>& m, Index rows, Index cols) {
  if (m.rows() != rows || m.cols() != cols) m.resize(rows, cols);
}

}  // namespace detail
}  // namespace nn
}  // namespace fqt
