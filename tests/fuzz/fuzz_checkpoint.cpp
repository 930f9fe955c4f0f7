// libFuzzer harness of fqt_train::load_parameters (examples/trainer/checkpoint.hpp) against a
// small fixed model: LeNet-style with 1 and 1 conv channels, 2 hidden units, 2 classes, 16x16
// images (8 tensors, 62 floats).
//
// Input: byte 0 flags (bit 0: write the file's real size into its header, bit 1: write its
// CRC-32 into its last 4 bytes, so that mutations reach the records past the size and checksum
// checks), then the parameter file.
//
// Invariants: only checkpoint_error escapes, its message starting with the path; a refused file
// leaves the model's values untouched; an accepted file has finite values, keeps the shapes, and
// is exactly the file save_parameters writes for the loaded values (the format is canonical).

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

  try {
    fqt_train::load_parameters(parameters, file.path());
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
  try {
    fqt_train::save_parameters(parameters, saved.path());
  } catch (...) {
    fqt_fuzz::unexpected_exception("save_parameters of loaded values");
  }
  if (saved.read() != bytes) {
    fqt_fuzz::finding("an accepted file is what save_parameters writes for its values",
                      "saved: ", fqt_fuzz::hex(saved.read().data(), saved.read().size()));
  }
  return 0;
}
