#pragma once
/// \file
/// \brief Internals of the nn layer: the quantizers of a QuantPolicy, the GEMM, column sums.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "fqt/core/error.hpp"
#include "fqt/core/gemm.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/detail/checks.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/quant.hpp"

namespace fqt {
namespace nn {
namespace detail {

/// Blocks deduction, so the Scalar of a functional op is taken from its cache argument and any
/// compatible matrix, block or map binds to the Eigen::Ref parameters.
// The thread-count-independent GEMM lives in core (core/gemm.hpp).
using fqt::detail::gemm;
using fqt::detail::run_blocks;

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

}  // namespace detail
}  // namespace nn
}  // namespace fqt
