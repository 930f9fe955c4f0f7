#pragma once
/// \file
/// \brief Shared by the examples: the paper's gradient quantizers and grids as data — their lists
/// (the quantizer lists come from the catalogue's table, fqt::kQuantizerKinds), their names
/// (command-line and display spellings) and the grad-weight quantizer each grad-input quantizer
/// is paired with.

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

#include "fqt/nn/policy.hpp"
#include "fqt/quant/catalogue.hpp"
#include "fqt/quant/grid.hpp"

namespace fqt_examples {

/// \brief The grad-input quantizers the examples accept, in table order (PTQ, PSQ, BHQ,
/// Hadamard): the kinds whose scales are constant along the columns of G, which Q_b1(G)·W
/// contracts.
inline std::vector<fqt::QuantizerKind> grad_input_kinds() {
  return fqt::quantizer_kinds(fqt::Contraction::Columns);
}

/// \brief The paper's three grad-input quantizers (PTQ, PSQ, BHQ): what the trainer's comparison
/// runs by default, so that the main job's grid keeps its size as kinds join the table (the
/// others are a --compare-quantizers away).
inline std::vector<fqt::QuantizerKind> paper_grad_input_kinds() {
  return {fqt::QuantizerKind::PerTensor, fqt::QuantizerKind::PerSample,
          fqt::QuantizerKind::BlockHouseholder};
}

/// \brief The gradient grids, in table order: the paper's Free grid, then fqt's zero-aligned grid.
inline const std::vector<fqt::Grid> kGrids = {fqt::Grid::Free, fqt::Grid::ZeroAligned};

/// \brief The short name of a kind ("ptq", "psq", "column", "channel", "bhq", "hadamard"), the
/// spelling fqt::parse_quantizer_kind accepts (command lines, run names, tables).
inline const char* kind_name(fqt::QuantizerKind kind) { return fqt::kind_info(kind).name; }

/// \brief The short name in capitals, e.g. "BHQ" (plot keys, help texts).
inline std::string kind_title(fqt::QuantizerKind kind) {
  std::string title = kind_name(kind);
  for (auto& c : title) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return title;
}

/// \brief The position of `kind` in `kinds` (kinds.size() when absent).
inline std::size_t position(const std::vector<fqt::QuantizerKind>& kinds, fqt::QuantizerKind kind) {
  return static_cast<std::size_t>(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin());
}

/// \brief "free" or "zero", the names nn::parse_grid accepts (command lines, run names, tables).
inline const char* grid_name(fqt::Grid grid) { return grid == fqt::Grid::Free ? "free" : "zero"; }

/// \brief "Free" or "ZeroAligned", the enumerators' own spelling (variance_vs_bits' tables).
inline const char* grid_title(fqt::Grid grid) {
  return grid == fqt::Grid::Free ? "Free" : "ZeroAligned";
}

/// \brief The short names of `kinds`, in their order.
inline std::vector<std::string> kind_names(const std::vector<fqt::QuantizerKind>& kinds) {
  std::vector<std::string> names;
  for (const auto k : kinds) names.emplace_back(kind_name(k));
  return names;
}

/// \brief The names of grad_input_kinds(): "ptq", "psq", "bhq", "hadamard".
inline std::vector<std::string> grad_input_quantizer_names() {
  return kind_names(grad_input_kinds());
}

/// \brief The names of kGrids: "free", "zero".
inline std::vector<std::string> grid_names() {
  std::vector<std::string> names;
  for (const auto g : kGrids) names.emplace_back(grid_name(g));
  return names;
}

/// \brief The paper's grad-weight quantizer for a grad-input quantizer: the same kind when its
/// scales also factor out of the weight gradient Q_b2(G)ᵀ·X (PTQ with PTQ), else per-column (PSQ,
/// BHQ and Hadamard, whose per-sample scales do not).
inline fqt::QuantizerKind paired_grad_weight(fqt::QuantizerKind grad_input) {
  return fqt::can_feed(grad_input, fqt::Contraction::Rows) ? grad_input
                                                           : fqt::QuantizerKind::PerColumn;
}

/// \brief The paper's pairing as a backend can run it: on a backend that multiplies codes, the
/// per-column grad-weight quantizer (one scale per (k, oy, ox) on a conv, which varies along its
/// grad-weight contraction) becomes per-channel — the same quantizer on linear layers, and the
/// per-(k) scale an integer conv GEMM applies.
inline fqt::QuantizerKind paired_grad_weight(fqt::QuantizerKind grad_input,
                                             const fqt::nn::Backend& backend) {
  const fqt::QuantizerKind paired = paired_grad_weight(grad_input);
  return backend.multiplies_codes() && !fqt::can_feed(paired, fqt::Contraction::RowsAndChannels)
             ? fqt::QuantizerKind::PerChannel
             : paired;
}

/// \brief The grad-weight quantizers paired_grad_weight gives the grad-input kinds, in table
/// order: "ptq" and "column".
inline std::vector<fqt::QuantizerKind> paired_grad_weight_kinds() {
  std::vector<fqt::QuantizerKind> paired;
  for (const auto k : grad_input_kinds()) paired.push_back(paired_grad_weight(k));
  std::vector<fqt::QuantizerKind> kinds;
  for (const auto& k : fqt::kQuantizerKinds) {
    if (std::find(paired.begin(), paired.end(), k.kind) != paired.end()) kinds.push_back(k.kind);
  }
  return kinds;
}

/// \brief Sets the grid of both gradient quantizers, Q_b1 and Q_b2.
inline void set_gradient_grid(fqt::nn::QuantPolicy& policy, fqt::Grid grid) {
  policy.grad_input.grid = grid;
  policy.grad_weight.grid = grid;
}

/// \brief `names` joined as a list in words: "a", "a or b", "a, b or c".
inline std::string or_list(const std::vector<std::string>& names) {
  std::string text;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) text += i + 1 == names.size() ? " or " : ", ";
    text += names[i];
  }
  return text;
}

}  // namespace fqt_examples
