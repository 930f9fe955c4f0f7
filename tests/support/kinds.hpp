#pragma once
// The quantizer kinds of the catalogue's table that tests run "each of": those that can feed a
// given contraction (Columns: every grad-input quantizer; Rows: every grad-weight quantizer).

#include <vector>

#include "fqt/quant/catalogue.hpp"

namespace fqt_test {

/// The kinds of fqt::kQuantizerKinds whose scales are constant along `contraction`, in table
/// order.
inline std::vector<fqt::QuantizerKind> kinds_feeding(fqt::Contraction contraction) {
  std::vector<fqt::QuantizerKind> kinds;
  for (const auto& k : fqt::kQuantizerKinds) {
    if (fqt::can_feed(k.kind, contraction)) kinds.push_back(k.kind);
  }
  return kinds;
}

/// Every grad-input quantizer (ptq, psq, bhq for the table as shipped).
inline std::vector<fqt::QuantizerKind> grad_input_kinds() {
  return kinds_feeding(fqt::Contraction::Columns);
}

}  // namespace fqt_test
