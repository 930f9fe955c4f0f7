#pragma once
/// \file
/// \brief The quantization policy of a layer or a model: the training mode (Exact, QAT, FQT), the
/// deterministic forward quantizer Q_f of activations and weights, and the two stochastic backward
/// quantizers of the output gradient (grad-input Q_b1, grad-weight Q_b2), plus the Philox streams
/// one backward pass draws from.

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>

#include "fqt/core/error.hpp"
#include "fqt/core/random.hpp"
#include "fqt/quant.hpp"

namespace fqt {
namespace nn {

/// \brief What a layer quantizes.
enum class Mode {
  Exact,  ///< full precision forward and backward
  QAT,    ///< Q_f on activations and weights in the forward pass, straight-through, FP gradients
  FQT     ///< QAT plus stochastic quantization of the output gradient in the backward pass
};

/// \brief The quantizer of the grad-input path, ∇X = Q_b1(G)·Ŵ (rows of G are samples).
enum class GradInputQuantizer {
  PerTensor,        ///< PTQ: one range for the whole gradient ("ptq")
  PerSample,        ///< PSQ: one range per sample row ("psq")
  BlockHouseholder  ///< BHQ: block Householder mixing of the sample rows, then PSQ ("bhq")
};

/// \brief The quantizer of the grad-weight path, ∇W = Q_b2(G)ᵀ·X̂ (the batch is contracted).
///
/// For a conv layer G is N × (K·Ho·Wo) and the product Σ_n G_n·columns(X̂_n)ᵀ contracts over the
/// samples and each channel's Ho·Wo positions: only PerTensor and PerChannel scales factor out of
/// it, so only they could run on integer codes. PerColumn there (one range per (k, oy, ox), the
/// paper's released code) is a simulation: fake-quantized operands in a float GEMM. For a linear
/// layer PerColumn and PerChannel are the same quantizer (one channel per output feature).
enum class GradWeightQuantizer {
  PerTensor,  ///< PTQ: one range for the whole gradient ("ptq")
  PerColumn,  ///< one range per column of G, over the batch ("column"; the paper's PSQ runs)
  PerChannel  ///< one range per output channel (conv) or output feature (linear) ("channel")
};

/// \brief Rounding of the backward quantizers. Only Stochastic keeps the FQT gradient unbiased
/// (Theorem 1); Nearest exists to demonstrate the bias of deterministic gradient rounding.
enum class GradientRounding { Stochastic, Nearest };

namespace detail {
// True for the enumerators of each enum. Switches without a default, so that -Wswitch flags a new
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
inline bool is_enumerator(GradInputQuantizer q) {
  switch (q) {
    case GradInputQuantizer::PerTensor:
    case GradInputQuantizer::PerSample:
    case GradInputQuantizer::BlockHouseholder:
      return true;
  }
  return false;
}
inline bool is_enumerator(GradWeightQuantizer q) {
  switch (q) {
    case GradWeightQuantizer::PerTensor:
    case GradWeightQuantizer::PerColumn:
    case GradWeightQuantizer::PerChannel:
      return true;
  }
  return false;
}
inline bool is_enumerator(GradientRounding r) {
  switch (r) {
    case GradientRounding::Stochastic:
    case GradientRounding::Nearest:
      return true;
  }
  return false;
}
inline bool is_enumerator(Grid g) {
  switch (g) {
    case Grid::Free:
    case Grid::ZeroAligned:
      return true;
  }
  return false;
}
template <class Enum>
long long enum_value(Enum e) {
  return static_cast<long long>(e);
}
}  // namespace detail

/// \brief The quantization recipe of a layer or a whole model.
///
/// Defaults are the paper's released recipe with fqt's zero-aligned gradient grid: activations 8
/// bits (per tensor, round to nearest, free grid), weights 8 bits (per tensor, nearest, zero on
/// the grid), grad-input BHQ at 8 bits, grad-weight PTQ at 8 bits, stochastic rounding.
/// `gradient_grid = Grid::Free` reproduces the paper's PSQ/BHQ rows exactly. Every bit width is
/// in [1, 8]. A model has one policy; a layer may override it (see Module::set_policy).
struct QuantPolicy {
  Mode mode = Mode::FQT;    ///< Exact, QAT or FQT
  int activation_bits = 8;  ///< bits of Q_f on a layer's input (per tensor, nearest, free grid)
  int weight_bits = 8;      ///< bits of Q_f on a layer's weight (per tensor, nearest, zero aligned)
  GradInputQuantizer grad_input_quantizer = GradInputQuantizer::BlockHouseholder;  ///< Q_b1
  int grad_input_bits = 8;                                                         ///< bits of Q_b1
  GradWeightQuantizer grad_weight_quantizer = GradWeightQuantizer::PerTensor;      ///< Q_b2
  int grad_weight_bits = 8;                                                        ///< bits of Q_b2
  Grid gradient_grid = Grid::ZeroAligned;                             ///< grid of Q_b1 and Q_b2
  GradientRounding gradient_rounding = GradientRounding::Stochastic;  ///< rounding of Q_b1, Q_b2

  /// \brief A policy with the given mode and default knobs.
  static QuantPolicy with_mode(Mode m) {
    QuantPolicy p;
    p.mode = m;
    return p;
  }

  /// \brief The catalogue spec of the grad-input quantizer Q_b1.
  QuantizerSpec grad_input_spec() const {
    return {grad_input_kind(), grad_input_bits, gradient_grid, rounding_mode()};
  }
  /// \brief The catalogue spec of the grad-weight quantizer Q_b2 for a layer with `channels`
  /// output channels (conv: K; linear: its output features).
  QuantizerSpec grad_weight_spec(Index channels) const {
    const QuantizerKind kind = grad_weight_kind();
    return {kind, grad_weight_bits, gradient_grid, rounding_mode(),
            kind == QuantizerKind::PerChannel ? channels : 1};
  }

  /// \brief True when the forward pass quantizes (QAT and FQT).
  bool quantizes_forward() const { return mode != Mode::Exact; }
  /// \brief True when the backward pass quantizes the output gradient (FQT).
  bool quantizes_backward() const { return mode == Mode::FQT; }

  /// \brief Throws std::invalid_argument naming `where`, the offending knob and its value unless
  /// every enum field holds one of its enumerators (a value cast from an integer may not) and
  /// every bit width is in [1, 8].
  void validate(const char* where) const {
    check(detail::is_enumerator(mode), where, "mode must be Exact, QAT or FQT, got ",
          detail::enum_value(mode));
    check(detail::is_enumerator(grad_input_quantizer), where,
          "grad_input_quantizer must be PerTensor, PerSample or BlockHouseholder, got ",
          detail::enum_value(grad_input_quantizer));
    check(detail::is_enumerator(grad_weight_quantizer), where,
          "grad_weight_quantizer must be PerTensor, PerColumn or PerChannel, got ",
          detail::enum_value(grad_weight_quantizer));
    check(detail::is_enumerator(gradient_grid), where,
          "gradient_grid must be Free or ZeroAligned, got ", detail::enum_value(gradient_grid));
    check(detail::is_enumerator(gradient_rounding), where,
          "gradient_rounding must be Stochastic or Nearest, got ",
          detail::enum_value(gradient_rounding));
    auto in_range = [](int b) { return b >= 1 && b <= 8; };
    check(in_range(activation_bits), where, "activation_bits must be in [1, 8], got ",
          activation_bits);
    check(in_range(weight_bits), where, "weight_bits must be in [1, 8], got ", weight_bits);
    check(in_range(grad_input_bits), where, "grad_input_bits must be in [1, 8], got ",
          grad_input_bits);
    check(in_range(grad_weight_bits), where, "grad_weight_bits must be in [1, 8], got ",
          grad_weight_bits);
  }

 private:
  // The policy's names for the gradient quantizers, mapped onto the catalogue's kinds; an
  // enumerator outside its enum maps to a value the catalogue rejects (validate rejects it first).
  QuantizerKind grad_input_kind() const {
    switch (grad_input_quantizer) {
      case GradInputQuantizer::PerTensor:
        return QuantizerKind::PerTensor;
      case GradInputQuantizer::PerSample:
        return QuantizerKind::PerSample;
      case GradInputQuantizer::BlockHouseholder:
        return QuantizerKind::BlockHouseholder;
    }
    return static_cast<QuantizerKind>(-1);
  }
  QuantizerKind grad_weight_kind() const {
    switch (grad_weight_quantizer) {
      case GradWeightQuantizer::PerTensor:
        return QuantizerKind::PerTensor;
      case GradWeightQuantizer::PerColumn:
        return QuantizerKind::PerColumn;
      case GradWeightQuantizer::PerChannel:
        return QuantizerKind::PerChannel;
    }
    return static_cast<QuantizerKind>(-1);
  }
  RoundingMode rounding_mode() const {
    switch (gradient_rounding) {
      case GradientRounding::Stochastic:
        return RoundingMode::Stochastic;
      case GradientRounding::Nearest:
        return RoundingMode::Nearest;
    }
    return static_cast<RoundingMode>(-1);
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

/// \brief Parses "ptq", "psq" or "bhq" (any case); throws std::invalid_argument naming the text.
inline GradInputQuantizer parse_grad_input_quantizer(std::string_view name) {
  const std::string s = detail::lower(name);
  if (s == "ptq") return GradInputQuantizer::PerTensor;
  if (s == "psq") return GradInputQuantizer::PerSample;
  if (s == "bhq") return GradInputQuantizer::BlockHouseholder;
  check(false, "nn::parse_grad_input_quantizer", "unknown grad-input quantizer '", name,
        "' (expected ptq, psq or bhq)");
  return GradInputQuantizer::PerTensor;
}

/// \brief Parses "ptq", "column" or "channel" (any case); throws std::invalid_argument naming the
/// text.
/// BHQ and PSQ are not grad-weight quantizers: their per-sample scales do not factor out of
/// Gᵀ·X̂, whose contraction runs over the samples.
inline GradWeightQuantizer parse_grad_weight_quantizer(std::string_view name) {
  const std::string s = detail::lower(name);
  if (s == "ptq") return GradWeightQuantizer::PerTensor;
  if (s == "column") return GradWeightQuantizer::PerColumn;
  if (s == "channel") return GradWeightQuantizer::PerChannel;
  check(false, "nn::parse_grad_weight_quantizer", "unknown grad-weight quantizer '", name,
        "' (expected ptq, column or channel)");
  return GradWeightQuantizer::PerTensor;
}

/// \brief Parses "zero" (zero aligned) or "free" (any case); throws std::invalid_argument.
inline Grid parse_grid(std::string_view name) {
  const std::string s = detail::lower(name);
  if (s == "zero" || s == "zeroaligned") return Grid::ZeroAligned;
  if (s == "free") return Grid::Free;
  check(false, "nn::parse_grid", "unknown grid '", name, "' (expected zero or free)");
  return Grid::ZeroAligned;
}

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

/// \brief "ptq", "psq" or "bhq" — the names parse_grad_input_quantizer accepts.
inline const char* to_string(GradInputQuantizer q) {
  switch (q) {
    case GradInputQuantizer::PerTensor:
      return "ptq";
    case GradInputQuantizer::PerSample:
      return "psq";
    case GradInputQuantizer::BlockHouseholder:
      return "bhq";
  }
  return "?";
}

/// \brief "ptq", "column" or "channel" — the names parse_grad_weight_quantizer accepts.
inline const char* to_string(GradWeightQuantizer q) {
  switch (q) {
    case GradWeightQuantizer::PerTensor:
      return "ptq";
    case GradWeightQuantizer::PerColumn:
      return "column";
    case GradWeightQuantizer::PerChannel:
      return "channel";
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
