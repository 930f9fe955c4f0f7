#pragma once
/// \file
/// \brief Saving and loading a model's trained parameters in a small checked binary format.
///
/// **Format (version 1).** All integers little-endian; offsets in bytes.
///
///     0   8 bytes   magic "FQTPARAM"
///     8   uint32    format version (1)
///     12  uint32    P, the number of parameter tensors
///     16  uint64    the total size of the file in bytes, checksum included
///     24  P records, in the model's parameter order:
///           uint32    L, the length of the name (1 ≤ L ≤ 1024)
///           L bytes   the name, e.g. "3.weight"
///           uint32    R, the number of dimensions (1 ≤ R ≤ 8; fqt writes 2: rows, cols)
///           R × uint64  the dimensions
///           float32 × (product of the dimensions)   the values, IEEE-754, row-major
///     end−4  uint32  CRC-32 (zlib's crc32, the ISO-HDLC / gzip polynomial) of every byte before it
///
/// Loading refuses, with a fqt_train::checkpoint_error naming the file and the problem: a file
/// that cannot be read, a directory, a device or a pipe (not a regular file), a wrong magic or
/// version, a size other than the header declares (truncated or with trailing bytes), a checksum
/// mismatch (corrupted), a malformed record, a non-finite value, and a file that does not match
/// the model (another number of tensors, other names or shapes — a model of another
/// architecture). The header is checked against the real size of the file before the rest is
/// read, and a file more than twice the size of the model's own (plus 1 MiB) is refused from its
/// header alone, so a huge or endless file costs no memory. The model is changed only when every
/// check passed. Saving refuses what loading would refuse (names outside 1..1024 bytes,
/// non-finite values) before it touches the file.

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "fqt/core/error.hpp"
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
/// \brief The format version this build writes and reads.
inline constexpr std::uint32_t kCheckpointVersion = 1;
/// \brief The longest parameter name the format holds, in bytes.
inline constexpr std::size_t kCheckpointMaxNameBytes = 1024;

namespace detail {

inline void put_u32(std::string& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}
inline void put_u64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
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

/// The size in bytes of the file save_parameters writes for `parameters`.
inline std::uint64_t checkpoint_size(const std::vector<nn::Parameter<float>>& parameters) {
  std::uint64_t size = 24 + 4;  // header, checksum
  for (const auto& p : parameters) {
    size +=
        4 + p.name.size() + 4 + 2 * 8 + 4 * static_cast<std::uint64_t>(p.variable.value().size());
  }
  return size;
}

/// One parsed record of a parameter file.
struct Record {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::size_t data_offset = 0;  ///< of the first float
  std::uint64_t count = 0;      ///< number of floats
};

}  // namespace detail

/// \brief Writes `parameters` (names, shapes, values) to `path` in the format of this file.
/// \throws checkpoint_error if a name is empty or longer than 1024 bytes, a value is not finite
/// (then the file is not touched: loading would refuse it), or the file cannot be written
inline void save_parameters(const std::vector<nn::Parameter<float>>& parameters,
                            const std::filesystem::path& path) {
  if (parameters.size() > std::numeric_limits<std::uint32_t>::max()) {
    detail::refuse(path, "cannot save ", parameters.size(),
                   " parameter tensors: the format holds at most 2^32 - 1");
  }
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const auto& p = parameters[k];
    if (p.name.empty() || p.name.size() > kCheckpointMaxNameBytes) {
      detail::refuse(path, "cannot save parameter ", k, " '", p.name.substr(0, 64),
                     p.name.size() > 64 ? "...'" : "'", ": a name of ", p.name.size(),
                     " bytes, the format holds names of [1, ", kCheckpointMaxNameBytes, "] bytes");
    }
    const Matrix& value = p.variable.value();
    for (Index j = 0; j < value.size(); ++j) {
      if (!std::isfinite(value.data()[j])) {
        detail::refuse(path, "cannot save parameter '", p.name, "': non-finite value ",
                       value.data()[j], " at element ", j,
                       " (a parameter file holds finite values only)");
      }
    }
  }
  std::string out(kCheckpointMagic, sizeof(kCheckpointMagic));
  detail::put_u32(out, kCheckpointVersion);
  detail::put_u32(out, static_cast<std::uint32_t>(parameters.size()));
  detail::put_u64(out, 0);  // the total size, patched below
  for (const auto& p : parameters) {
    const Matrix& value = p.variable.value();
    detail::put_u32(out, static_cast<std::uint32_t>(p.name.size()));
    out += p.name;
    detail::put_u32(out, 2);
    detail::put_u64(out, static_cast<std::uint64_t>(value.rows()));
    detail::put_u64(out, static_cast<std::uint64_t>(value.cols()));
    for (Index k = 0; k < value.size(); ++k) {
      std::uint32_t bits;
      std::memcpy(&bits, value.data() + k, sizeof(bits));
      detail::put_u32(out, bits);
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

/// \brief Writes the model's parameters to `path` (see save_parameters).
inline void save_model(const Model& model, const std::filesystem::path& path) {
  save_parameters(model.parameters(), path);
}

/// \brief Reads a parameter file into `parameters` (matched by position, name and shape).
/// Nothing is changed unless the whole file is valid and matches.
/// \throws checkpoint_error naming the file and the problem (see the file comment)
inline void load_parameters(const std::vector<nn::Parameter<float>>& parameters,
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
  if (version != kCheckpointVersion) {
    detail::refuse(path, "unsupported format version ", version, " (this build reads version ",
                   kCheckpointVersion, ")");
  }
  const std::uint32_t count = detail::get_u32(in, 12);
  const std::uint64_t declared = detail::get_u64(in, 16);
  if (declared != real) {
    detail::refuse(
        path, declared > real ? "truncated: the file has " : "trailing bytes: the file has ", real,
        " bytes but its header declares ", declared, " (or the header is corrupted)");
  }
  // Only a file of exactly this size can match the model; one far larger is refused before it is
  // read (its records are still parsed for a precise message when it is near the model's size).
  const std::uint64_t expected = detail::checkpoint_size(parameters);
  if (declared != expected && declared / 2 > expected + (std::uint64_t{1} << 19)) {
    detail::refuse(path, "the file has ", declared,
                   " bytes but a parameter file of this model has ", expected,
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
                     " runs past the end of the data");
    }
  };
  for (std::uint32_t k = 0; k < count; ++k) {
    detail::Record r;
    need(4, k, "name length");
    const std::uint32_t length = detail::get_u32(in, at);
    at += 4;
    if (length == 0 || length > 1024) {
      detail::refuse(path, "malformed record ", k, ": name length ", length,
                     " is not in [1, 1024]");
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
    need(4 * r.count, k, "values");
    r.data_offset = at;
    at += 4 * r.count;
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
  for (std::size_t k = 0; k < records.size(); ++k) {
    const auto& r = records[k];
    Matrix m(static_cast<Index>(r.dims[0]), static_cast<Index>(r.dims[1]));
    for (std::uint64_t j = 0; j < r.count; ++j) {
      const std::uint32_t bits = detail::get_u32(in, r.data_offset + 4 * j);
      std::memcpy(m.data() + j, &bits, sizeof(bits));
      if (!std::isfinite(m.data()[j])) {
        detail::refuse(path, "parameter '", r.name, "' has a non-finite value at element ", j);
      }
    }
    values.push_back(std::move(m));
  }
  for (std::size_t k = 0; k < records.size(); ++k) {
    parameters[k].variable.value() = std::move(values[k]);
  }
}

/// \brief Reads a parameter file into the model (see load_parameters).
inline void load_model(Model& model, const std::filesystem::path& path) {
  load_parameters(model.parameters(), path);
}

}  // namespace fqt_train
