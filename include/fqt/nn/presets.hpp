#pragma once
/// \file
/// \brief Named quantization policies: the paper's pairings of grad-input and grad-weight
/// quantizers, and "gradients only" (full-precision forward, quantized output gradient). The
/// trainer and the libtorch adapter build their policies from these.
///
/// The default policy, QuantPolicy{}, is Mode::FQT with 8-bit Q_f (activations per tensor on the
/// free grid, weights per tensor with zero on the grid), BHQ grad-input at 8 bits and per-channel
/// grad-weight at 8 bits (per column of G on a linear layer, per output channel on a conv), both
/// on Grid::Auto: the paper's BHQ pairing in the form every backend runs.

#include <memory>

#include "fqt/nn/backend.hpp"
#include "fqt/nn/backends/simulated.hpp"
#include "fqt/nn/policy.hpp"
#include "fqt/quant/catalogue.hpp"

namespace fqt {
namespace nn {
namespace presets {

/// \brief The paper's grad-weight quantizer for a grad-input quantizer on `backend`: the same
/// kind when its scales also factor out of the weight gradient Q_b2(G)ᵀ·X (PTQ with PTQ), else
/// per column (PSQ, BHQ, Hadamard and adaptive, whose per-sample scales do not). On a backend
/// that multiplies codes, per column becomes per channel, which an integer conv GEMM can apply
/// (one scale per output channel; on a linear layer it is the same quantizer as per column).
inline QuantizerKind paired_grad_weight(QuantizerKind grad_input,
                                        const Backend& backend = simulated_backend()) {
  const QuantizerKind paired =
      can_feed(grad_input, Contraction::Rows) ? grad_input : QuantizerKind::PerColumn;
  return backend.multiplies_codes() && !can_feed(paired, Contraction::RowsAndChannels)
             ? QuantizerKind::PerChannel
             : paired;
}

/// \brief Mode::FQT with grad-input quantizer `grad_input` at `bits` bits, its paper pairing for
/// grad-weight (paired_grad_weight) at the same width, both gradient quantizers on `grid`, 8-bit
/// Q_f, the products on `backend` (null: simulated).
/// \throws std::invalid_argument (via QuantPolicy::validate) on bits outside [1, 8] or a kind that
///         cannot quantize the grad-input product
inline QuantPolicy paper(QuantizerKind grad_input, int bits, Grid grid = Grid::Paper,
                         std::shared_ptr<const Backend> backend = nullptr) {
  QuantPolicy p;
  p.backend = std::move(backend);
  p.grad_input = QuantizerSpec{grad_input, bits, grid};
  p.grad_weight = QuantizerSpec{paired_grad_weight(grad_input, p.product_backend()), bits, grid};
  p.validate("nn::presets::paper");
  return p;
}

/// \brief `policy` with its forward pass in full precision: Mode::FQT quantizes only the output
/// gradient (Q_b1, Q_b2), the forward operands are X and W themselves.
inline QuantPolicy gradients_only(QuantPolicy policy = QuantPolicy{}) {
  policy.forward_quantized = false;
  return policy;
}

}  // namespace presets
}  // namespace nn
}  // namespace fqt
