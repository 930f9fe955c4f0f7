// libFuzzer harness of fqt_train::load_parameters (examples/trainer/checkpoint.hpp) against a
// small fixed model: LeNet-style with 1 and 1 conv channels, 2 hidden units, 2 classes, 16x16
// images (8 tensors, 62 floats).
//
// Input: byte 0 flags (bit 0: write the file's real size into its header, bit 1: write its
// CRC-32 into its last 4 bytes, so that mutations reach the records past the size and checksum
// checks), then the parameter file.
//
// Invariants: only checkpoint_error escapes, its message starting with the path; a refused file
// leaves the model's values untouched; an accepted file has finite values and keeps the shapes;
// the codes it returns (one entry per parameter) have their parameter's shape and values
// (dequantized bit for bit), and an nn::QuantizedSGD resumed from them stores them and shows the
// same values; an accepted version-2 file is exactly the file save_parameters writes for the
// loaded values and codes (the format is canonical), and an accepted version-1 file is saved
// as version 2 with 4 more bytes per record (the encoding) that load the same values.

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "fqt/nn/optim_quantized.hpp"
#include "fuzz_support.hpp"
#include "trainer/checkpoint.hpp"
#include "trainer/model.hpp"

namespace {

fqt_train::Model& model() {
  static fqt_train::Model m = [] {
    fqt_train::Architecture a;
    a.conv1_channels = 1;
    a.conv2_channels = 1;
    a.hidden = 2;
    a.image_height = a.image_width = 16;
    a.classes = 2;
    return fqt_train::Model(a, fqt::Philox(2024));
  }();
  return m;
}

using Stored = fqt::nn::QuantizedSGD<float>::Stored;

bool same_values(const fqt_train::Matrix& a, const fqt_train::Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

// The codes' invariants: their parameter's shape, values that are the codes' values, and (when
// every coded entry is a weight of one width and one granularity) an optimizer resumed from them
// that stores exactly them.
void check_codes(const std::vector<fqt_train::nn::Parameter<float>>& parameters,
                 const fqt_train::StoredWeights& codes) {
  if (codes.size() != parameters.size()) {
    fqt_fuzz::finding("one entry of codes per parameter", codes.size(), " for ", parameters.size());
  }
  int bits = 32;
  bool per_row = true, uniform = true;
  for (std::size_t k = 0; k < codes.size(); ++k) {
    std::visit(
        [&](const auto& t) {
          using T = std::decay_t<decltype(t)>;
          if constexpr (!std::is_same_v<T, std::monostate>) {
            const auto& value = parameters[k].variable.value();
            if (t.rows() != value.rows() || t.cols() != value.cols()) {
              fqt_fuzz::finding("codes have their parameter's shape", "parameter ", k);
            }
            fqt_train::Matrix decoded(t.rows(), t.cols());
            t.read(decoded);
            if (!same_values(decoded, value)) {
              fqt_fuzz::finding("a coded parameter's values are its codes' values", "parameter ",
                                k);
            }
            uniform = uniform && parameters[k].weight_decay && (bits == 32 || bits == T::kBits) &&
                      (bits == 32 || per_row == t.per_row());
            bits = T::kBits;
            per_row = t.per_row();
          }
        },
        codes[k]);
  }
  if (bits == 32 || !uniform) return;
  std::vector<fqt_train::Matrix> values;
  for (const auto& p : parameters) values.push_back(p.variable.value());
  try {
    fqt::nn::WeightStorageOptions storage;
    storage.weight_bits = bits;
    storage.per_row = per_row;
    fqt::nn::QuantizedSGD<float> sgd(parameters, {0.05, 0.9, false, 1e-4}, storage);
    for (std::size_t k = 0; k < codes.size(); ++k) {
      std::visit(
          [&](const auto& t) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
              sgd.load_weight(k, t);
            }
          },
          codes[k]);
    }
    for (std::size_t k = 0; k < codes.size(); ++k) {
      if (!std::holds_alternative<std::monostate>(codes[k]) && sgd.stored_weight(k) != codes[k]) {
        fqt_fuzz::finding("an optimizer resumed from the codes stores them", "parameter ", k);
      }
      if (!std::holds_alternative<std::monostate>(codes[k]) &&
          !same_values(parameters[k].variable.value(), values[k])) {
        fqt_fuzz::finding("an optimizer resumed from the codes shows their values", "parameter ",
                          k);
      }
    }
  } catch (...) {
    fqt_fuzz::unexpected_exception("QuantizedSGD resumed from loaded codes");
  }
  // The optimizer rounded the weights held as float32 values: back to the loaded ones.
  for (std::size_t k = 0; k < parameters.size(); ++k) parameters[k].variable.value() = values[k];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fqt_train::Model& net = model();
  static const std::vector<fqt_train::nn::Parameter<float>> parameters = net.parameters();
  static std::vector<fqt_train::Matrix> initial = [] {
    std::vector<fqt_train::Matrix> values;
    for (const auto& p : parameters) values.push_back(p.variable.value());
    return values;
  }();
  static fqt_fuzz::MemoryFile file("fqt-fuzz-checkpoint"), saved("fqt-fuzz-checkpoint-saved");
  fqt_fuzz::context() =
      "checkpoint input of " + std::to_string(size) + " bytes: " + fqt_fuzz::hex(data, size);

  if (size == 0) return 0;
  const std::uint8_t flags = data[0];
  std::vector<std::uint8_t> bytes(data + 1, data + size);
  if ((flags & 1) && bytes.size() >= 24) {
    for (int i = 0; i < 8; ++i) bytes[16 + i] = static_cast<std::uint8_t>(bytes.size() >> (8 * i));
  }
  if ((flags & 2) && bytes.size() >= 4) {
    const std::uint32_t crc = static_cast<std::uint32_t>(
        ::crc32(::crc32(0L, Z_NULL, 0), bytes.data(), static_cast<uInt>(bytes.size() - 4)));
    for (int i = 0; i < 4; ++i)
      bytes[bytes.size() - 4 + i] = static_cast<std::uint8_t>(crc >> (8 * i));
  }
  file.write(bytes);
  for (std::size_t k = 0; k < parameters.size(); ++k) parameters[k].variable.value() = initial[k];

  fqt_train::StoredWeights codes;
  try {
    codes = fqt_train::load_parameters(parameters, file.path());
  } catch (const fqt_train::checkpoint_error& e) {
    if (std::string(e.what()).rfind(file.path() + ": ", 0) != 0) {
      fqt_fuzz::finding("errors name the file", e.what());
    }
    for (std::size_t k = 0; k < parameters.size(); ++k) {
      const auto& value = parameters[k].variable.value();
      if (value.rows() != initial[k].rows() || value.cols() != initial[k].cols() ||
          std::memcmp(value.data(), initial[k].data(), sizeof(float) * value.size()) != 0) {
        fqt_fuzz::finding("a refused file leaves the model as it was", "parameter ", k,
                          " changed; ", e.what());
      }
    }
    if (fqt_fuzz::verbose()) std::fprintf(stderr, "refused: %s\n", e.what());
    return 0;
  } catch (...) {
    fqt_fuzz::unexpected_exception("load_parameters");
  }
  if (fqt_fuzz::verbose()) std::fprintf(stderr, "accepted\n");

  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const auto& value = parameters[k].variable.value();
    if (value.rows() != initial[k].rows() || value.cols() != initial[k].cols()) {
      fqt_fuzz::finding("loading keeps the shapes", "parameter ", k, " is ", value.rows(), " x ",
                        value.cols());
    }
    if (!value.allFinite()) fqt_fuzz::finding("loaded values are finite", "parameter ", k);
  }
  std::vector<fqt_train::Matrix> loaded;
  for (const auto& p : parameters) loaded.push_back(p.variable.value());
  check_codes(parameters, codes);
  try {
    fqt_train::save_parameters(parameters, codes, saved.path());
  } catch (...) {
    fqt_fuzz::unexpected_exception("save_parameters of loaded values and codes");
  }
  const std::uint32_t version = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) |
                                (static_cast<std::uint32_t>(bytes[11]) << 24);
  if (version == fqt_train::kCheckpointVersion) {
    if (saved.read() != bytes) {
      fqt_fuzz::finding("an accepted file is what save_parameters writes for its values and codes",
                        "saved: ", fqt_fuzz::hex(saved.read().data(), saved.read().size()));
    }
    return 0;
  }
  // Version 1: float32 records only, saved again as version 2.
  if (version != 1) fqt_fuzz::finding("an accepted file is of version 1 or 2", "version ", version);
  for (std::size_t k = 0; k < codes.size(); ++k) {
    if (!std::holds_alternative<std::monostate>(codes[k])) {
      fqt_fuzz::finding("a version-1 file holds no codes", "parameter ", k);
    }
  }
  if (saved.read().size() != bytes.size() + 4 * parameters.size()) {
    fqt_fuzz::finding("a version-1 file saved again gains 4 bytes per record", saved.read().size(),
                      " bytes from ", bytes.size());
  }
  try {
    fqt_train::load_parameters(parameters, saved.path());
  } catch (...) {
    fqt_fuzz::unexpected_exception("load_parameters of a version-1 file saved again");
  }
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    if (!same_values(parameters[k].variable.value(), loaded[k])) {
      fqt_fuzz::finding("a version-1 file saved again loads the same values", "parameter ", k);
    }
  }
  return 0;
}
