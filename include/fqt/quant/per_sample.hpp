#pragma once
/// \file
/// \brief PSQ, one grid per row (sample), and the per-column and per-channel quantizers of the
/// grad-weight path.

#include "fqt/quant/affine.hpp"

namespace fqt {

/// \brief Per-sample quantizer (PSQ): one grid per row. Unbiased with Stochastic rounding;
/// variance ≤ (D/(4B²))·Σ_i λ_i² with λ_i the range of row i (Free grid). Per-row scales factor
/// out of ∇X = G·W, so an integer GEMM applies them in its epilogue.
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
using PerSampleQuantizer = AffineQuantizer<Granularity::PerRow, Scalar, Rounding, Code>;

/// \brief Per-column quantizer: one grid per column, ranges taken over the batch — the reference's
/// grad-weight quantizer. Per-column scales factor out of ∇W = Gᵀ·X (for a conv weight gradient
/// only per-output-channel scales would; per-(c,h,w) columns are then a simulation).
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
using PerColumnQuantizer = AffineQuantizer<Granularity::PerColumn, Scalar, Rounding, Code>;

/// \brief Per-channel quantizer: one grid per block of consecutive columns, over the batch —
/// for a conv output gradient N × (K·Ho·Wo), one grid per output channel k, constant over
/// (n, oy, ox). These are the scales that factor out of the conv weight gradient
/// ∇W = Σ_n G_n·columns(X̂_n)ᵀ (G_n as K × Ho·Wo), so an integer conv GEMM can run on its codes.
/// Construct with the number of channels: PerChannelQuantizer<float>(bits, grid, K).
template <class Scalar = float, class Rounding = Stochastic, class Code = std::uint8_t>
using PerChannelQuantizer = AffineQuantizer<Granularity::PerChannel, Scalar, Rounding, Code>;

}  // namespace fqt
