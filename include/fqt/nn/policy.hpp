#pragma once
/// \file
/// \brief The quantization policy of a layer or a model: the training mode (Exact, QAT, FQT), the
/// deterministic forward quantizer Q_f of activations and weights, and the two stochastic backward
/// quantizers of the output gradient (grad-input Q_b1, grad-weight Q_b2), plus the Philox streams
/// one backward pass draws from.

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "fqt/core/error.hpp"
#include "fqt/core/random.hpp"
#include "fqt/nn/backend.hpp"
#include "fqt/nn/backends/simulated.hpp"
#include "fqt/quant.hpp"

namespace fqt {
namespace nn {

/// \brief What a layer quantizes.
enum class Mode {
  Exact,  ///< full precision forward and backward
  QAT,    ///< Q_f on activations and weights in the forward pass, straight-through, FP gradients
  FQT     ///< QAT plus stochastic quantization of the output gradient in the backward pass
};

namespace detail {
// True for the enumerators of Mode. A switch without a default, so that -Wswitch flags a new
// enumerator that validate() would otherwise reject.
inline bool is_enumerator(Mode m) {
  switch (m) {
    case Mode::Exact:
    case Mode::QAT:
    case Mode::FQT:
      return true;
  }
  return false;
}
}  // namespace detail

/// \brief Which of the two backward quantizers run in Mode::FQT.
enum class GradientPaths {
  Both,       ///< Q_b1 on the grad-input path and Q_b2 on the grad-weight path (FQT)
  GradInput,  ///< Q_b1 only; the grad-weight product takes G itself
  GradWeight  ///< Q_b2 only; the grad-input product takes G itself
};

/// \brief The quantization recipe of a layer or a whole model.
///
/// Defaults: activations 8 bits (per tensor, round to nearest, free grid), weights 8 bits (per
/// tensor, nearest, zero on the grid), grad-input BHQ at 8 bits, grad-weight per channel at 8 bits
/// (per column of G on a linear layer, per output channel on a conv: the paper's pairing for BHQ
/// in the form every backend runs), stochastic rounding, both gradient quantizers on Grid::Auto.
/// nn::presets (presets.hpp) names the paper's other pairings and "gradients only". Every bit
/// width is in [1, 8]. A model has one policy; a layer may override it (see Module::set_policy).
struct QuantPolicy {
  Mode mode = Mode::FQT;    ///< Exact, QAT or FQT
  int activation_bits = 8;  ///< bits of Q_f on a layer's input (per tensor, nearest, free grid)
  int weight_bits = 8;      ///< bits of Q_f on a layer's weight (per tensor, nearest, zero aligned)
  /// Q_b1, the grad-input quantizer: a kind whose scales are constant along the columns of G
  /// (ptq, psq, bhq or hadamard), 1–8 bits
  QuantizerSpec grad_input{QuantizerKind::BlockHouseholder, 8};
  /// Q_b2, the grad-weight quantizer: a kind whose scales are constant along the samples (ptq,
  /// column or channel), 1–8 bits. For channel the layer supplies the number of channels (see
  /// grad_weight_spec); the `channels` field here must stay 1.
  QuantizerSpec grad_weight{QuantizerKind::PerChannel, 8};
  /// Who computes the products (see fqt/nn/backend.hpp); null means the simulated backend.
  std::shared_ptr<const Backend> backend;
  /// Which backward quantizers run in Mode::FQT: both, or one alone, which isolates its share of
  /// the gradient variance (nn::profile_gradients' split by path)
  GradientPaths quantized_paths = GradientPaths::Both;
  /// Whether QAT and FQT quantize the forward operands with Q_f; false is "gradients only": the
  /// forward pass in full precision and, in Mode::FQT, only the output gradient quantized
  /// (presets::gradients_only)
  bool forward_quantized = true;

  /// \brief A policy with the given mode and default knobs.
  static QuantPolicy with_mode(Mode m) {
    QuantPolicy p;
    p.mode = m;
    return p;
  }

  /// \brief Q_f of a layer's input: per tensor, round to nearest, free grid.
  QuantizerSpec activation_spec() const {
    return {QuantizerKind::PerTensor, activation_bits, Grid::Free, RoundingMode::Nearest};
  }
  /// \brief Q_f of a layer's weight: per tensor, round to nearest, zero on the grid.
  QuantizerSpec weight_spec() const {
    return {QuantizerKind::PerTensor, weight_bits, Grid::ZeroAligned, RoundingMode::Nearest};
  }
  /// \brief Q_b2 for a layer with `channels` output channels (conv: K; linear: its output
  /// features).
  QuantizerSpec grad_weight_spec(Index channels) const {
    QuantizerSpec spec = grad_weight;
    if (spec.kind == QuantizerKind::PerChannel) spec.channels = channels;
    return spec;
  }
  /// \brief The backend that computes this policy's products.
  const Backend& product_backend() const { return backend ? *backend : simulated_backend(); }

  /// \brief True when the forward pass quantizes (QAT and FQT, unless forward_quantized is off).
  bool quantizes_forward() const { return mode != Mode::Exact && forward_quantized; }
  /// \brief True when the backward pass quantizes the output gradient (FQT).
  bool quantizes_backward() const { return mode == Mode::FQT; }
  /// \brief True when Q_b1 runs (FQT, and the grad-input path is quantized).
  bool quantizes_grad_input() const {
    return quantizes_backward() && quantized_paths != GradientPaths::GradWeight;
  }
  /// \brief True when Q_b2 runs (FQT, and the grad-weight path is quantized).
  bool quantizes_grad_weight() const {
    return quantizes_backward() && quantized_paths != GradientPaths::GradInput;
  }

  /// \brief Throws std::invalid_argument naming `where`, the offending knob and its value unless
  /// the mode is one of its enumerators (a value cast from an integer may not be), every bit
  /// width is in [1, 8], both gradient specs are valid and each gradient quantizer's scales are
  /// constant along the contraction of the GEMM it feeds: the columns of G for grad-input, the
  /// samples for grad-weight.
  void validate(const char* where) const {
    check(detail::is_enumerator(mode), where, "mode must be Exact, QAT or FQT, got ",
          static_cast<long long>(mode));
    check(quantized_paths == GradientPaths::Both || quantized_paths == GradientPaths::GradInput ||
              quantized_paths == GradientPaths::GradWeight,
          where, "quantized_paths must be Both, GradInput or GradWeight, got ",
          static_cast<long long>(quantized_paths));
    auto in_range = [](int b) { return b >= 1 && b <= 8; };
    check(in_range(activation_bits), where, "activation_bits must be in [1, 8], got ",
          activation_bits);
    check(in_range(weight_bits), where, "weight_bits must be in [1, 8], got ", weight_bits);
    grad_input.validate(where);
    grad_weight.validate(where);
    check(in_range(grad_input.bits), where, "grad_input.bits must be in [1, 8], got ",
          grad_input.bits);
    check(in_range(grad_weight.bits), where, "grad_weight.bits must be in [1, 8], got ",
          grad_weight.bits);
    check(can_feed(grad_input.kind, Contraction::Columns), where, "grad_input quantizer '",
          kind_info(grad_input.kind).name,
          "' has scales that vary along the columns of G, which Q_b1(G)·W contracts (expected ",
          quantizer_kind_names(Contraction::Columns), ")");
    check(can_feed(grad_weight.kind, Contraction::Rows), where, "grad_weight quantizer '",
          kind_info(grad_weight.kind).name,
          "' has scales that vary along the samples, which Q_b2(G)ᵀ·X contracts (expected ",
          quantizer_kind_names(Contraction::Rows), ")");
    check(grad_weight.channels == 1, where,
          "grad_weight.channels must be 1 (the layer supplies its channel count), got ",
          grad_weight.channels);
  }

  /// \brief validate(where), and for a backend that multiplies codes also that the grad-weight
  /// quantizer's scales are constant along `contraction`, the one of the calling layer (linear:
  /// Rows; conv: RowsAndChannels, where a per-column quantizer's scales vary over (oy, ox)).
  void validate(const char* where, Contraction grad_weight_contraction) const {
    validate(where);
    if (!product_backend().multiplies_codes()) return;
    check(can_feed(grad_weight.kind, grad_weight_contraction), where, "the ",
          product_backend().name(), " backend multiplies codes, and grad_weight quantizer '",
          kind_info(grad_weight.kind).name,
          "' has scales that vary along this layer's grad-weight contraction (expected ",
          quantizer_kind_names(grad_weight_contraction),
          "; the simulated backend runs any of them)");
  }
};

namespace detail {
inline std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}
}  // namespace detail

/// \brief Parses "exact", "qat" or "fqt" (any case); throws std::invalid_argument naming the text.
inline Mode parse_mode(std::string_view name) {
  const std::string s = detail::lower(name);
  if (s == "exact") return Mode::Exact;
  if (s == "qat") return Mode::QAT;
  if (s == "fqt") return Mode::FQT;
  check(false, "nn::parse_mode", "unknown mode '", name, "' (expected exact, qat or fqt)");
  return Mode::Exact;
}

/// \brief fqt::parse_grid, for the command-line parsers beside parse_mode.
using fqt::parse_grid;

/// \brief "exact", "qat" or "fqt".
inline const char* to_string(Mode m) {
  switch (m) {
    case Mode::Exact:
      return "exact";
    case Mode::QAT:
      return "qat";
    case Mode::FQT:
      return "fqt";
  }
  return "?";
}

/// \brief The role of a random stream within one layer's backward pass.
enum class StreamRole : std::uint64_t { GradInput = 1, GradWeight = 2 };

/// \brief The two independent Philox streams of one layer's backward pass: the output gradient G
/// is quantized once for grad-input and once, with fresh noise, for grad-weight.
struct GradientStreams {
  Philox grad_input;   ///< noise of Q_b1(G)
  Philox grad_weight;  ///< noise of Q_b2(G)
};

/// \brief The streams of layer `layer` at training step `step`: rng.substream(step, layer, role).
/// Distinct (step, layer, role) give independent streams, so each backward pass draws fresh noise.
inline GradientStreams gradient_streams(const Philox& rng, std::uint64_t step,
                                        std::uint64_t layer) {
  return {rng.substream(step, layer, static_cast<std::uint64_t>(StreamRole::GradInput)),
          rng.substream(step, layer, static_cast<std::uint64_t>(StreamRole::GradWeight))};
}

}  // namespace nn
}  // namespace fqt
