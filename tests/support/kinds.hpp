#pragma once
// The quantizer kinds tests run "each of": every grad-input quantizer of the catalogue's table.

#include <vector>

#include "fqt/quant/catalogue.hpp"

namespace fqt_test {

/// Every grad-input quantizer (ptq, psq, bhq, hadamard for the table as shipped).
inline std::vector<fqt::QuantizerKind> grad_input_kinds() {
  return fqt::quantizer_kinds(fqt::Contraction::Columns);
}

}  // namespace fqt_test
