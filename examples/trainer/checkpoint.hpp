#pragma once
/// \file
/// \brief Saving and loading a model's trained parameters in a small checked binary format: as
/// float32 values, or as the integer codes nn::QuantizedSGD keeps a weight as.
///
/// **Format.** All integers little-endian; offsets in bytes. Version 2 is written; version 1
/// (float32 values only, records without an encoding) is still read.
///
///     0   8 bytes   magic "FQTPARAM"
///     8   uint32    format version (2, or 1)
///     12  uint32    P, the number of parameter tensors
///     16  uint64    the total size of the file in bytes, checksum included
///     24  P records, in the model's parameter order:
///           uint32    L, the length of the name (1 ≤ L ≤ 1024)
///           L bytes   the name, e.g. "3.weight"
///           uint32    R, the number of dimensions (1 ≤ R ≤ 8; fqt writes 2: rows, cols)
///           R × uint64  the dimensions; N, their product, is the number of elements
///           version 1:
///             float32 × N   the values, IEEE-754, row-major
///           version 2:
///             uint32    E, the encoding of the values:
///             E = 0, float32:  float32 × N   the values, IEEE-754, row-major
///             E = 1, int8 codes, or E = 2, int16 codes (R = 2: rows, cols):
///               uint32    G, the granularity of the steps: 1 one per row, 0 one for the tensor
///               uint64    S, the number of steps: rows when G = 1, else 1
///               float32 × S   the steps, finite and ≥ 0
///               int8 × N or int16 × N   the codes c, row-major, |c| ≤ 127 or ≤ 32767
///             the value of element (i, j) is step_i · c_ij (step_0 when G = 0), in double
///             rounded to float: nn::QuantizedTensor's values (fqt/nn/weight_storage.hpp)
///     end−4  uint32  CRC-32 (zlib's crc32, the ISO-HDLC / gzip polynomial) of every byte before it
///
/// **Codes.** save_parameters with stored weights (nn::QuantizedSGD::stored_weight of each
/// parameter: StoredWeights) writes a coded weight as its codes and steps, exactly; a parameter
/// kept in float (std::monostate) is written as float32 values. load_parameters writes every
/// record's values into the model's Variable (a codes record's dequantized values) and returns
/// the codes, so that an optimizer resumes from exactly those codes
/// (nn::QuantizedSGD::load_weight; the trainer's TrainOptions::initial_codes).
///
/// Loading refuses, with a fqt_train::checkpoint_error naming the file and the problem: a file
/// that cannot be read, a directory, a device or a pipe (not a regular file), a wrong magic or
/// version, a size other than the header declares (truncated or with trailing bytes), a checksum
/// mismatch (corrupted), a malformed record (an unknown encoding or granularity, codes of a rank
/// other than 2, a step count that does not match the shape), a non-finite value, a code out of
/// its symmetric range, a step that is negative or not finite, codes whose value overflows float,
/// and a file that does not match the model (another number of tensors, other names or shapes —
/// a model of another architecture). The header is checked against the real size of the file
/// before the rest is read, and a file more than twice the size of the largest file of the model
/// (plus 1 MiB) is refused from its header alone, so a huge or endless file costs no memory. Every
/// count is checked against the bytes left before anything is read. The model is changed only
/// when every check passed. Saving refuses what loading would refuse (names outside 1..1024 bytes,
/// non-finite values, codes of another shape than their parameter's) before it touches the file.

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/nn/optim_quantized.hpp"
#include "fqt/nn/weight_storage.hpp"
#include "trainer/model.hpp"

namespace fqt_train {

/// \brief A parameter file cannot be written, or is refused on load; the message reads
/// "<file>: <what is wrong>".
class checkpoint_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief The magic bytes at the start of a parameter file.
inline constexpr char kCheckpointMagic[8] = {'F', 'Q', 'T', 'P', 'A', 'R', 'A', 'M'};
/// \brief The format version this build writes (and the newest it reads).
inline constexpr std::uint32_t kCheckpointVersion = 2;
/// \brief The oldest format version this build reads.
inline constexpr std::uint32_t kCheckpointOldestVersion = 1;
/// \brief The longest parameter name the format holds, in bytes.
inline constexpr std::size_t kCheckpointMaxNameBytes = 1024;

/// \brief The encoding E of a version-2 record's values.
enum class CheckpointEncoding : std::uint32_t {
  Float32 = 0,  ///< float32 values
  Int8 = 1,     ///< int8 codes and float32 steps
  Int16 = 2     ///< int16 codes and float32 steps
};

/// \brief One entry per parameter: its codes (nn::QuantizedSGD's stored weight), or
/// std::monostate for a parameter held as float values.
using StoredWeights = std::vector<nn::QuantizedSGD<float>::Stored>;

/// \brief The width of the codes in `weights`: 32 when no entry holds codes (an empty list
/// included), 8 or 16 when every entry that holds codes has codes of that width, 0 when the
/// widths are mixed.
inline int stored_bits(const StoredWeights& weights) {
  int bits = 32;
  for (const auto& w : weights) {
    const int b = std::holds_alternative<nn::QuantizedTensor<std::int8_t>>(w)    ? 8
                  : std::holds_alternative<nn::QuantizedTensor<std::int16_t>>(w) ? 16
                                                                                 : 32;
    if (b == 32) continue;
    if (bits != 32 && bits != b) return 0;
    bits = b;
  }
  return bits;
}

namespace detail {

inline void put_u16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v & 0xffu));
  out.push_back(static_cast<char>((v >> 8) & 0xffu));
}
inline void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}
inline void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}
inline void put_f32(std::string& out, float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  put_u32(out, bits);
}
inline std::uint16_t get_u16(const std::string& in, std::size_t at) {
  return static_cast<std::uint16_t>(static_cast<unsigned char>(in[at]) |
                                    (static_cast<unsigned char>(in[at + 1]) << 8));
}
inline std::uint32_t get_u32(const std::string& in, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}
inline std::uint64_t get_u64(const std::string& in, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}
inline float get_f32(const std::string& in, std::size_t at) {
  const std::uint32_t bits = get_u32(in, at);
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}
inline std::uint32_t crc32_of(const char* data, std::size_t size) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  while (size > 0) {
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(size, 1u << 30));
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(data), chunk);
    data += chunk;
    size -= chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

template <class... Parts>
[[noreturn]] void refuse(const std::filesystem::path& path, Parts&&... parts) {
  throw checkpoint_error(fqt::detail::concat(path.string(), ": ", std::forward<Parts>(parts)...));
}

inline std::string shape_text(const std::vector<std::uint64_t>& dims) {
  std::ostringstream s;
  for (std::size_t i = 0; i < dims.size(); ++i) s << (i ? " x " : "") << dims[i];
  return s.str();
}

/// The size in bytes of the version-2 file save_parameters writes for `parameters` as float32
/// values.
inline std::uint64_t checkpoint_size(const std::vector<nn::Parameter<float>>& parameters) {
  std::uint64_t size = 24 + 4;  // header, checksum
  for (const auto& p : parameters) {
    size += 4 + p.name.size() + 4 + 2 * 8 + 4 +
            4 * static_cast<std::uint64_t>(p.variable.value().size());
  }
  return size;
}

/// The size in bytes of the largest file of `parameters` in either version: each record in its
/// largest encoding (float32 values, or int16 codes with a step per row).
inline std::uint64_t largest_checkpoint_size(const std::vector<nn::Parameter<float>>& parameters) {
  std::uint64_t size = 24 + 4;
  for (const auto& p : parameters) {
    const auto n = static_cast<std::uint64_t>(p.variable.value().size());
    const auto rows = static_cast<std::uint64_t>(p.variable.value().rows());
    size += 4 + p.name.size() + 4 + 2 * 8 + 4 + std::max(4 * n, 4 + 8 + 4 * rows + 2 * n);
  }
  return size;
}

/// What is wrong with codes and steps for a rows × cols tensor (their counts already match its
/// shape and granularity): a step that is negative or not finite, a code outside
/// [−kMaxCode, kMaxCode], or a value step·code that overflows float; empty when nothing is.
template <class Code>
std::string codes_problem(Index rows, Index cols, bool per_row, const std::vector<Code>& codes,
                          const std::vector<float>& steps) {
  constexpr int kMax = nn::QuantizedTensor<Code>::kMaxCode;
  for (std::size_t k = 0; k < steps.size(); ++k) {
    if (!(std::isfinite(steps[k]) && steps[k] >= 0)) {
      return fqt::detail::concat("step ", k, " is ", steps[k], ", expected finite and >= 0");
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const double step = steps[static_cast<std::size_t>(per_row ? r : 0)];
    for (Index c = 0; c < cols; ++c) {
      const int code = codes[static_cast<std::size_t>(r * cols + c)];
      if (code < -kMax || code > kMax) {
        return fqt::detail::concat("code (", r, ", ", c, ") is ", code,
                                   ", outside the symmetric range [-", kMax, ", ", kMax, "]");
      }
      if (!std::isfinite(static_cast<float>(step * code))) {
        return fqt::detail::concat("value (", r, ", ", c, "), step ", step, " times code ", code,
                                   ", overflows float");
      }
    }
  }
  return {};
}

/// One parsed record of a parameter file.
struct Record {
  std::string name;
  std::vector<std::uint64_t> dims;
  CheckpointEncoding encoding = CheckpointEncoding::Float32;
  bool per_row = false;          ///< codes: a step per row
  std::size_t steps_offset = 0;  ///< codes: of the first step
  std::size_t data_offset = 0;   ///< of the first value or code
  std::uint64_t count = 0;       ///< number of values or codes
};

// Appends a record's name and shape.
inline void put_record_head(std::string& out, const std::string& name, Index rows, Index cols) {
  put_u32(out, static_cast<std::uint32_t>(name.size()));
  out += name;
  put_u32(out, 2);
  put_u64(out, static_cast<std::uint64_t>(rows));
  put_u64(out, static_cast<std::uint64_t>(cols));
}

template <class Code>
void put_codes(std::string& out, const nn::QuantizedTensor<Code>& t) {
  put_u32(out, static_cast<std::uint32_t>(std::is_same_v<Code, std::int8_t>
                                              ? CheckpointEncoding::Int8
                                              : CheckpointEncoding::Int16));
  put_u32(out, t.per_row() ? 1 : 0);
  put_u64(out, t.steps().size());
  for (const float s : t.steps()) put_f32(out, s);
  for (const Code c : t.codes()) {
    if constexpr (std::is_same_v<Code, std::int8_t>) {
      out.push_back(static_cast<char>(static_cast<std::uint8_t>(c)));
    } else {
      put_u16(out, static_cast<std::uint16_t>(c));
    }
  }
}

// Decodes a checked codes record (counts match, bytes in range) into codes and values, refusing
// what codes_problem finds.
template <class Code>
nn::QuantizedTensor<Code> read_codes(const std::filesystem::path& path, const std::string& in,
                                     const Record& r, Matrix& values) {
  const auto rows = static_cast<Index>(r.dims[0]), cols = static_cast<Index>(r.dims[1]);
  std::vector<float> steps(static_cast<std::size_t>(r.per_row ? rows : 1));
  for (std::size_t k = 0; k < steps.size(); ++k) steps[k] = get_f32(in, r.steps_offset + 4 * k);
  std::vector<Code> codes(static_cast<std::size_t>(r.count));
  for (std::size_t k = 0; k < codes.size(); ++k) {
    if constexpr (std::is_same_v<Code, std::int8_t>) {
      const int u = static_cast<unsigned char>(in[r.data_offset + k]);
      codes[k] = static_cast<Code>(u < 0x80 ? u : u - 0x100);
    } else {
      const std::uint16_t u = get_u16(in, r.data_offset + 2 * k);
      codes[k] = static_cast<Code>(u < 0x8000u ? int(u) : int(u) - 0x10000);
    }
  }
  const std::string problem = codes_problem(rows, cols, r.per_row, codes, steps);
  if (!problem.empty()) {
    refuse(path, "parameter '", r.name, "' (", nn::QuantizedTensor<Code>::kBits,
           "-bit codes): ", problem);
  }
  try {
    nn::QuantizedTensor<Code> t(rows, cols, r.per_row, std::move(codes), std::move(steps));
    values.resize(rows, cols);
    t.read(values);
    return t;
  } catch (const std::exception& e) {  // refused above already; kept as a checkpoint_error
    refuse(path, "parameter '", r.name, "': ", e.what());
  }
}

}  // namespace detail

/// \brief Writes `parameters` to `path` in version 2 of the format of this file: each parameter's
/// name and shape, and its codes when `stored` holds codes for it (then its value, the codes'
/// view, is not read), else its float32 values.
/// \param stored empty (every parameter as float32), or one entry per parameter, e.g.
///        nn::QuantizedSGD::stored_weight(i) or TrainResult::stored_weights
/// \throws checkpoint_error if `stored` is not aligned with `parameters`, a name is empty or
/// longer than 1024 bytes, a value is not finite, codes have another shape than their parameter
/// or a value that overflows float (then the file is not touched: loading would refuse it), or
/// the file cannot be written
inline void save_parameters(const std::vector<nn::Parameter<float>>& parameters,
                            const StoredWeights& stored, const std::filesystem::path& path) {
  if (parameters.size() > std::numeric_limits<std::uint32_t>::max()) {
    detail::refuse(path, "cannot save ", parameters.size(),
                   " parameter tensors: the format holds at most 2^32 - 1");
  }
  if (!stored.empty() && stored.size() != parameters.size()) {
    detail::refuse(path, "cannot save ", parameters.size(), " parameters with ", stored.size(),
                   " stored weights: give one per parameter (std::monostate for float values), "
                   "or none");
  }
  auto entry = [&](std::size_t k) -> const nn::QuantizedSGD<float>::Stored* {
    return stored.empty() ? nullptr : &stored[k];
  };
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const auto& p = parameters[k];
    if (p.name.empty() || p.name.size() > kCheckpointMaxNameBytes) {
      detail::refuse(path, "cannot save parameter ", k, " '", p.name.substr(0, 64),
                     p.name.size() > 64 ? "...'" : "'", ": a name of ", p.name.size(),
                     " bytes, the format holds names of [1, ", kCheckpointMaxNameBytes, "] bytes");
    }
    const Matrix& value = p.variable.value();
    const auto* s = entry(k);
    if (s == nullptr || std::holds_alternative<std::monostate>(*s)) {
      for (Index j = 0; j < value.size(); ++j) {
        if (!std::isfinite(value.data()[j])) {
          detail::refuse(path, "cannot save parameter '", p.name, "': non-finite value ",
                         value.data()[j], " at element ", j,
                         " (a parameter file holds finite values only)");
        }
      }
      continue;
    }
    std::visit(
        [&](const auto& t) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
            if (t.rows() != value.rows() || t.cols() != value.cols()) {
              detail::refuse(path, "cannot save parameter '", p.name, "': its codes are ", t.rows(),
                             " x ", t.cols(), " but the parameter is ", value.rows(), " x ",
                             value.cols(), " (stored weights of another model?)");
            }
            const std::string problem =
                detail::codes_problem(t.rows(), t.cols(), t.per_row(), t.codes(), t.steps());
            if (!problem.empty()) {
              detail::refuse(path, "cannot save parameter '", p.name, "': ", problem);
            }
          }
        },
        *s);
  }
  std::string out(kCheckpointMagic, sizeof(kCheckpointMagic));
  detail::put_u32(out, kCheckpointVersion);
  detail::put_u32(out, static_cast<std::uint32_t>(parameters.size()));
  detail::put_u64(out, 0);  // the total size, patched below
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const auto& p = parameters[k];
    const Matrix& value = p.variable.value();
    detail::put_record_head(out, p.name, value.rows(), value.cols());
    const auto* s = entry(k);
    if (s == nullptr || std::holds_alternative<std::monostate>(*s)) {
      detail::put_u32(out, static_cast<std::uint32_t>(CheckpointEncoding::Float32));
      for (Index j = 0; j < value.size(); ++j) detail::put_f32(out, value.data()[j]);
    } else {
      std::visit(
          [&](const auto& t) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(t)>, std::monostate>) {
              detail::put_codes(out, t);
            }
          },
          *s);
    }
  }
  const std::uint64_t total = out.size() + 4;
  for (int i = 0; i < 8; ++i) out[16 + i] = static_cast<char>((total >> (8 * i)) & 0xffu);
  detail::put_u32(out, detail::crc32_of(out.data(), out.size()));

  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) detail::refuse(path, "cannot open the file for writing");
  file.write(out.data(), static_cast<std::streamsize>(out.size()));
  file.close();
  if (!file) detail::refuse(path, "could not write the ", out.size(), " bytes of the file");
}

/// \brief Writes `parameters` as float32 values (see the overload with stored weights).
inline void save_parameters(const std::vector<nn::Parameter<float>>& parameters,
                            const std::filesystem::path& path) {
  save_parameters(parameters, StoredWeights{}, path);
}

/// \brief Writes the model's parameters to `path` as float32 values (see save_parameters).
inline void save_model(const Model& model, const std::filesystem::path& path) {
  save_parameters(model.parameters(), path);
}

/// \brief Writes the model's parameters to `path`, the coded ones as their codes (`stored`: one
/// entry per parameter, or empty; see save_parameters).
inline void save_model(const Model& model, const StoredWeights& stored,
                       const std::filesystem::path& path) {
  save_parameters(model.parameters(), stored, path);
}

/// \brief Reads a parameter file (version 1 or 2) into `parameters` (matched by position, name
/// and shape): each Variable gets the record's values, a codes record's dequantized values.
/// Nothing is changed unless the whole file is valid and matches.
/// \returns one entry per parameter: the codes of a codes record (to resume an optimizer from,
///          with nn::QuantizedSGD::load_weight), std::monostate for a float32 record
/// \throws checkpoint_error naming the file and the problem (see the file comment)
inline StoredWeights load_parameters(const std::vector<nn::Parameter<float>>& parameters,
                                     const std::filesystem::path& path) {
  std::error_code error;
  const auto status = std::filesystem::status(path, error);
  if (std::filesystem::is_directory(status)) {
    detail::refuse(path, "is a directory, not a parameter file");
  }
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    detail::refuse(path,
                   "not a regular file (a device or a pipe?): a parameter file is read from "
                   "a file whose size is known");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) detail::refuse(path, "cannot open the file (missing or unreadable)");
  const std::uint64_t real = std::filesystem::file_size(path, error);
  if (error) detail::refuse(path, "cannot get the size of the file: ", error.message());
  // Reads bytes [in.size(), size) of the file, appending them to `in`.
  std::string in;
  auto read_up_to = [&](std::uint64_t size) {
    const std::size_t first = in.size();
    in.resize(static_cast<std::size_t>(size));
    file.read(&in[first], static_cast<std::streamsize>(in.size() - first));
    if (static_cast<std::size_t>(file.gcount()) != in.size() - first) {
      detail::refuse(path, "read error: got ", first + static_cast<std::size_t>(file.gcount()),
                     " of the ", in.size(), " bytes of the file");
    }
  };

  // The header first: nothing more is read unless it is a parameter file of a plausible size.
  constexpr std::size_t kHeader = 24, kChecksum = 4;
  read_up_to(std::min<std::uint64_t>(real, kHeader));
  const std::size_t magic_bytes = std::min(in.size(), sizeof(kCheckpointMagic));
  if (std::memcmp(in.data(), kCheckpointMagic, magic_bytes) != 0) {
    detail::refuse(path, "not an fqt parameter file (the magic bytes are not \"FQTPARAM\")");
  }
  if (real < kHeader + kChecksum) {
    detail::refuse(path, "truncated: ", real, " bytes, less than the ", kHeader + kChecksum,
                   " bytes of a header and checksum");
  }
  const std::uint32_t version = detail::get_u32(in, 8);
  if (version < kCheckpointOldestVersion || version > kCheckpointVersion) {
    detail::refuse(path, "unsupported format version ", version, " (this build reads versions ",
                   kCheckpointOldestVersion, " to ", kCheckpointVersion, ")");
  }
  const std::uint32_t count = detail::get_u32(in, 12);
  const std::uint64_t declared = detail::get_u64(in, 16);
  if (declared != real) {
    detail::refuse(
        path, declared > real ? "truncated: the file has " : "trailing bytes: the file has ", real,
        " bytes but its header declares ", declared, " (or the header is corrupted)");
  }
  // A file far larger than any file of the model is refused before it is read (one near its size
  // is still parsed, for a precise message).
  const std::uint64_t largest = detail::largest_checkpoint_size(parameters);
  if (declared / 2 > largest + (std::uint64_t{1} << 19)) {
    detail::refuse(path, "the file has ", declared,
                   " bytes but a parameter file of this model has at most ", largest,
                   " (saved from a model of another architecture, or corrupted)");
  }
  read_up_to(declared);
  const std::uint32_t stored = detail::get_u32(in, in.size() - kChecksum);
  const std::uint32_t computed = detail::crc32_of(in.data(), in.size() - kChecksum);
  if (stored != computed) {
    std::ostringstream s;
    s << std::hex << "checksum mismatch: stored CRC-32 0x" << stored << ", computed 0x" << computed
      << " (the file is corrupted)";
    detail::refuse(path, s.str());
  }

  // The checksum holds: a malformed record now means a writer bug, not a damaged file.
  std::vector<detail::Record> records;
  const std::size_t end = in.size() - kChecksum;
  std::size_t at = kHeader;
  auto need = [&](std::uint64_t bytes, std::uint32_t k, const char* what) {
    if (bytes > end - at) {
      detail::refuse(path, "malformed record ", k, ": its ", what,
                     " would run past the end of the data");
    }
  };
  // `items` elements of `width` bytes each (without forming a product that could overflow).
  auto need_items = [&](std::uint64_t items, std::uint64_t width, std::uint32_t k,
                        const char* what) {
    if (items > (end - at) / width) {
      detail::refuse(path, "malformed record ", k, ": its ", what,
                     " would run past the end of the data");
    }
  };
  for (std::uint32_t k = 0; k < count; ++k) {
    detail::Record r;
    need(4, k, "name length");
    const std::uint32_t length = detail::get_u32(in, at);
    at += 4;
    if (length == 0 || length > kCheckpointMaxNameBytes) {
      detail::refuse(path, "malformed record ", k, ": name length ", length, " is not in [1, ",
                     kCheckpointMaxNameBytes, "]");
    }
    need(length, k, "name");
    r.name = in.substr(at, length);
    at += length;
    need(4, k, "rank");
    const std::uint32_t rank = detail::get_u32(in, at);
    at += 4;
    if (rank == 0 || rank > 8) {
      detail::refuse(path, "malformed record ", k, " ('", r.name, "'): rank ", rank,
                     " is not in [1, 8]");
    }
    need(8ull * rank, k, "shape");
    r.count = 1;
    for (std::uint32_t d = 0; d < rank; ++d) {
      r.dims.push_back(detail::get_u64(in, at));
      at += 8;
      if (r.dims.back() != 0 && r.count > (end - at) / r.dims.back()) {
        detail::refuse(path, "malformed record ", k, " ('", r.name, "'): shape ",
                       detail::shape_text(r.dims), "... is larger than the file");
      }
      r.count *= r.dims.back();
    }
    if (version >= 2) {
      need(4, k, "encoding");
      const std::uint32_t encoding = detail::get_u32(in, at);
      at += 4;
      if (encoding > static_cast<std::uint32_t>(CheckpointEncoding::Int16)) {
        detail::refuse(path, "malformed record ", k, " ('", r.name, "'): unknown encoding ",
                       encoding, " (0: float32 values, 1: int8 codes, 2: int16 codes)");
      }
      r.encoding = static_cast<CheckpointEncoding>(encoding);
    }
    if (r.encoding == CheckpointEncoding::Float32) {
      need_items(r.count, 4, k, "values");
      r.data_offset = at;
      at += 4 * r.count;
      records.push_back(std::move(r));
      continue;
    }
    const int bits = r.encoding == CheckpointEncoding::Int8 ? 8 : 16;
    if (rank != 2) {
      detail::refuse(path, "malformed record ", k, " ('", r.name, "'): ", bits,
                     "-bit codes of rank ", rank, ", codes have 2 dimensions (rows, cols)");
    }
    need(4 + 8, k, "granularity and step count");
    const std::uint32_t granularity = detail::get_u32(in, at);
    const std::uint64_t steps = detail::get_u64(in, at + 4);
    at += 4 + 8;
    if (granularity > 1) {
      detail::refuse(path, "malformed record ", k, " ('", r.name, "'): granularity ", granularity,
                     " is neither 1 (a step per row) nor 0 (one step)");
    }
    r.per_row = granularity == 1;
    const std::uint64_t want = r.per_row ? r.dims[0] : 1;
    if (steps != want) {
      detail::refuse(path, "malformed record ", k, " ('", r.name, "'): ", steps, " steps, but a ",
                     r.per_row ? "per-row " : "per-tensor ", detail::shape_text(r.dims),
                     " tensor has ", want);
    }
    need_items(steps, 4, k, "steps");
    r.steps_offset = at;
    at += 4 * steps;
    need_items(r.count, bits / 8, k, "codes");
    r.data_offset = at;
    at += (bits / 8) * r.count;
    records.push_back(std::move(r));
  }
  if (at != end) {
    detail::refuse(path, end - at, " unused bytes after the last of the ", count, " records");
  }

  // Match against the model.
  if (records.size() != parameters.size()) {
    detail::refuse(path, "the file holds ", records.size(), " parameter tensors but the model has ",
                   parameters.size(), " (a model of another architecture?)");
  }
  for (std::size_t k = 0; k < records.size(); ++k) {
    const auto& r = records[k];
    const Matrix& value = parameters[k].variable.value();
    const std::vector<std::uint64_t> want = {static_cast<std::uint64_t>(value.rows()),
                                             static_cast<std::uint64_t>(value.cols())};
    if (r.name != parameters[k].name || r.dims != want) {
      detail::refuse(path, "parameter ", k, " is '", r.name, "' of shape ",
                     detail::shape_text(r.dims), " in the file but '", parameters[k].name,
                     "' of shape ", detail::shape_text(want),
                     " in the model (saved from a model of another architecture? check "
                     "--channels and --hidden)");
    }
  }
  std::vector<Matrix> values;
  StoredWeights codes(records.size());
  for (std::size_t k = 0; k < records.size(); ++k) {
    const auto& r = records[k];
    Matrix m(static_cast<Index>(r.dims[0]), static_cast<Index>(r.dims[1]));
    if (r.encoding == CheckpointEncoding::Int8) {
      codes[k] = detail::read_codes<std::int8_t>(path, in, r, m);
    } else if (r.encoding == CheckpointEncoding::Int16) {
      codes[k] = detail::read_codes<std::int16_t>(path, in, r, m);
    } else {
      for (std::uint64_t j = 0; j < r.count; ++j) {
        m.data()[j] = detail::get_f32(in, r.data_offset + 4 * j);
        if (!std::isfinite(m.data()[j])) {
          detail::refuse(path, "parameter '", r.name, "' has a non-finite value at element ", j);
        }
      }
    }
    values.push_back(std::move(m));
  }
  for (std::size_t k = 0; k < records.size(); ++k) {
    parameters[k].variable.value() = std::move(values[k]);
  }
  return codes;
}

/// \brief Reads a parameter file into the model (see load_parameters).
/// \returns the codes of its codes records (std::monostate for float32 records)
inline StoredWeights load_model(Model& model, const std::filesystem::path& path) {
  return load_parameters(model.parameters(), path);
}

}  // namespace fqt_train
