#pragma once
/// \file
/// \brief Shared by the examples: the paper's gradient quantizers and grids as data — their lists
/// (the quantizer lists come from the catalogue's table, fqt::kQuantizerKinds), their names
/// (command-line and display spellings) and the grad-weight quantizer each grad-input quantizer
/// is paired with.

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "fqt/nn/policy.hpp"
#include "fqt/nn/presets.hpp"
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

/// \brief The gradient grids, in enum order: Free, ZeroAligned, Paper (the released code's
/// configuration) and Auto (fqt's default).
inline const std::vector<fqt::Grid> kGrids = {fqt::Grid::Free, fqt::Grid::ZeroAligned,
                                              fqt::Grid::Paper, fqt::Grid::Auto};

/// \brief A grad-input quantizer on a grid: one line of the trainer's comparison.
using QuantizerGrid = std::pair<fqt::QuantizerKind, fqt::Grid>;

/// \brief What the trainer's comparison runs by default: the paper's three quantizers in the
/// configuration of its released code (Grid::Paper), fqt's default (the adaptive quantizer on
/// Grid::Auto) and the Hadamard quantizer on Grid::Auto.
inline std::vector<QuantizerGrid> default_series() {
  using fqt::Grid;
  using fqt::QuantizerKind;
  return {{QuantizerKind::PerTensor, Grid::Paper},
          {QuantizerKind::PerSample, Grid::Paper},
          {QuantizerKind::BlockHouseholder, Grid::Paper},
          {QuantizerKind::Adaptive, Grid::Auto},
          {QuantizerKind::Hadamard, Grid::Auto}};
}

/// \brief Every quantizer on every grid, quantizers outermost.
inline std::vector<QuantizerGrid> cross_series(const std::vector<fqt::QuantizerKind>& kinds,
                                               const std::vector<fqt::Grid>& grids) {
  std::vector<QuantizerGrid> series;
  for (const auto k : kinds)
    for (const auto g : grids) series.emplace_back(k, g);
  return series;
}

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

/// \brief "free", "zero", "paper" or "auto", the names nn::parse_grid accepts (command lines,
/// run names, tables).
inline const char* grid_name(fqt::Grid grid) { return fqt::to_string(grid); }

/// \brief "Free", "ZeroAligned", "Paper" or "Auto", the enumerators' own spelling
/// (variance_vs_bits' tables).
inline const char* grid_title(fqt::Grid grid) {
  switch (grid) {
    case fqt::Grid::Free:
      return "Free";
    case fqt::Grid::ZeroAligned:
      return "ZeroAligned";
    case fqt::Grid::Paper:
      return "Paper";
    case fqt::Grid::Auto:
      return "Auto";
  }
  return "?";
}

/// \brief The short names of `kinds`, in their order.
inline std::vector<std::string> kind_names(const std::vector<fqt::QuantizerKind>& kinds) {
  std::vector<std::string> names;
  for (const auto k : kinds) names.emplace_back(kind_name(k));
  return names;
}

/// \brief The names of grad_input_kinds(): "ptq", "psq", "bhq", "hadamard", "adaptive".
inline std::vector<std::string> grad_input_quantizer_names() {
  return kind_names(grad_input_kinds());
}

/// \brief The names of kGrids: "free", "zero", "paper", "auto".
inline std::vector<std::string> grid_names() {
  std::vector<std::string> names;
  for (const auto g : kGrids) names.emplace_back(grid_name(g));
  return names;
}

/// \brief The paper's grad-weight quantizer for a grad-input quantizer (nn::presets).
using fqt::nn::presets::paired_grad_weight;

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
