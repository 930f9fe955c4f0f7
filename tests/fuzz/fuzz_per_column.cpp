// libFuzzer harness of fqt::PerColumnQuantizer: see fuzz_quant.hpp for the input and the
// invariants.

#include <cstddef>
#include <cstdint>

#include "fuzz_quant.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return fqt_fuzz::run_quantizer<fqt_fuzz::Kind::PerColumn>(data, size);
}
