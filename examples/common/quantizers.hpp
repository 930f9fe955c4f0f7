#pragma once
/// \file
/// \brief Shared by the examples: the paper's gradient quantizers and grids as data — their lists,
/// their names (command-line and display spellings) and the grad-weight quantizer each grad-input
/// quantizer is paired with.

#include <string>
#include <vector>

#include "fqt/nn/policy.hpp"
#include "fqt/quant/grid.hpp"

namespace fqt_examples {

/// \brief The grad-input quantizers the examples compare, in table order: PTQ, PSQ, BHQ.
inline const std::vector<fqt::nn::GradInputQuantizer> kGradInputQuantizers = {
    fqt::nn::GradInputQuantizer::PerTensor, fqt::nn::GradInputQuantizer::PerSample,
    fqt::nn::GradInputQuantizer::BlockHouseholder};

/// \brief The gradient grids, in table order: the paper's Free grid, then fqt's zero-aligned grid.
inline const std::vector<fqt::Grid> kGrids = {fqt::Grid::Free, fqt::Grid::ZeroAligned};

/// \brief "free" or "zero", the names nn::parse_grid accepts (command lines, run names, tables).
inline const char* grid_name(fqt::Grid grid) { return grid == fqt::Grid::Free ? "free" : "zero"; }

/// \brief "Free" or "ZeroAligned", the enumerators' own spelling (variance_vs_bits' tables).
inline const char* grid_title(fqt::Grid grid) {
  return grid == fqt::Grid::Free ? "Free" : "ZeroAligned";
}

/// \brief The names of kGradInputQuantizers: "ptq", "psq", "bhq".
inline std::vector<std::string> grad_input_quantizer_names() {
  std::vector<std::string> names;
  for (const auto q : kGradInputQuantizers) names.emplace_back(fqt::nn::to_string(q));
  return names;
}

/// \brief The names of kGrids: "free", "zero".
inline std::vector<std::string> grid_names() {
  std::vector<std::string> names;
  for (const auto g : kGrids) names.emplace_back(grid_name(g));
  return names;
}

/// \brief The paper's grad-weight quantizer for a grad-input quantizer: PTQ with PTQ, per-column
/// with PSQ and BHQ (their per-sample scales do not factor out of the weight gradient).
inline fqt::nn::GradWeightQuantizer paired_grad_weight(fqt::nn::GradInputQuantizer grad_input) {
  return grad_input == fqt::nn::GradInputQuantizer::PerTensor
             ? fqt::nn::GradWeightQuantizer::PerTensor
             : fqt::nn::GradWeightQuantizer::PerColumn;
}

}  // namespace fqt_examples
