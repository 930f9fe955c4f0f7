#pragma once
/// \file
/// \brief PTQ, the per-tensor quantizer: one grid for the whole matrix. With Stochastic rounding
/// it is the paper's PTQ gradient quantizer; with Nearest it is the forward quantizer Q_f
/// (weights: Grid::ZeroAligned; activations: Grid::Free, as in the reference).

#include "fqt/quant/affine.hpp"

namespace fqt {

/// \brief Per-tensor quantizer (PTQ). Unbiased with Stochastic rounding; variance
/// Σ Δ²·f(1 − f) ≤ N·D·R(x)²/(4B²) on the Free grid.
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
using PerTensorQuantizer = AffineQuantizer<Granularity::PerTensor, Scalar, Rounding, Code>;

}  // namespace fqt
