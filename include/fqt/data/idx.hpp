#pragma once
/// \file
/// \brief Reader and writer of IDX files (the MNIST / Fashion-MNIST format), plain or gzip (the
/// MNIST loader is fqt/data/mnist.hpp).
///
/// An IDX file is a 4-byte magic number `0x00 0x00 <type> <ndims>`, then `ndims` big-endian
/// uint32 dimensions, then the elements in row-major order. fqt reads and writes type 0x08
/// (unsigned byte), the only type MNIST and Fashion-MNIST use.
///
/// This header uses zlib: link the CMake target `fqt::data` (`find_package(fqt COMPONENTS data)`),
/// which brings it, or zlib yourself (`-lz`). The fqt::fqt target does not link zlib, so the rest
/// of fqt carries no zlib dependency.
///
/// Errors in the file throw fqt::data::format_error, failures to open, read or write a file throw
/// fqt::data::io_error; both messages read "<function>: <file>: <what is wrong>".

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"

namespace fqt {
namespace data {

/// \brief A file of the data set is not valid: wrong magic number, unsupported element type,
/// impossible dimensions, truncated or trailing data, corrupt gzip stream, inconsistent contents.
class format_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief A file cannot be opened, read or written (missing, a directory, no permission, disk
/// full).
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// \brief Default cap on the payload of an IDX file (1 GiB). MNIST's training images take 47 MB,
/// EMNIST's largest split about 550 MB; a header that declares more is treated as corrupt.
inline constexpr std::uint64_t default_max_idx_bytes = std::uint64_t{1} << 30;

/// \brief An IDX array of unsigned bytes (type code 0x08).
struct IdxArray {
  /// Dimensions, outermost first: {N, rows, cols} for MNIST images, {N} for labels.
  std::vector<std::uint32_t> dims;
  /// The elements in row-major order; its size is the product of `dims`.
  std::vector<std::uint8_t> data;
};

/// \brief Reads an IDX file of unsigned bytes, gzip-compressed or not (detected from the content,
/// not from the name).
///
/// The header is validated before the payload is allocated: the element count (and, for an empty
/// array, the product of its non-zero dimensions) may not overflow or exceed `max_bytes`, and it
/// must fit in the file (exactly for a plain file; for a gzip file,
/// within deflate's maximum expansion of 1032:1). The payload is then read in one bulk read.
/// \param path the file, e.g. `.../t10k-images-idx3-ubyte.gz`
/// \param max_bytes largest payload accepted, in bytes
/// \return the dimensions and the payload
/// \throws io_error if the file does not exist or cannot be read
/// \throws format_error on a wrong magic number, a type code other than 0x08, zero dimensions,
/// a payload larger than `max_bytes` (for an empty array: non-zero dimensions whose product
/// exceeds `max_bytes`, so that no product of dimensions overflows), truncated data, trailing
/// data or a corrupt gzip stream.
/// Bytes that follow a complete gzip stream and are not themselves gzip are ignored (by zlib).
inline IdxArray read_idx(const std::filesystem::path& path,
                         std::uint64_t max_bytes = default_max_idx_bytes);

/// \brief Writes an IDX file of unsigned bytes (type code 0x08).
/// \param path the file to create or overwrite
/// \param array 1 to 255 dimensions whose product equals `array.data.size()`
/// \param gzip compress with gzip (as the MNIST files are distributed) or write the raw bytes
/// \throws std::invalid_argument if `array` is inconsistent
/// \throws io_error if the file cannot be written
inline void write_idx(const std::filesystem::path& path, const IdxArray& array, bool gzip);

// ---- implementation ----

namespace detail {

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFilePtr = std::unique_ptr<gzFile_s, GzCloser>;

// gzread and gzwrite take an unsigned length and return an int: move big buffers in pieces.
inline constexpr std::size_t gz_max_chunk = std::size_t{1} << 30;

template <class Error, class... Parts>
[[noreturn]] void fail(const char* where, const std::filesystem::path& path, Parts&&... parts) {
  throw Error(fqt::detail::concat(where, ": ", path.string(), ": ", std::forward<Parts>(parts)...));
}

inline std::string errno_message(int error) {
  return error != 0 ? std::generic_category().message(error) : std::string("unknown error");
}

// Reads up to `size` bytes; returns how many were read (less only at the end of the data).
// Throws on a read error or a corrupt stream; a gzip stream that ends early is reported by the
// caller as truncation.
inline std::size_t gz_read_fully(gzFile_s* file, std::uint8_t* buffer, std::size_t size,
                                 const char* where, const std::filesystem::path& path) {
  std::size_t got = 0;
  while (got < size) {
    const auto chunk = static_cast<unsigned>(std::min(size - got, gz_max_chunk));
    errno = 0;
    const int read = gzread(file, buffer + got, chunk);
    if (read < 0) {
      int errnum = Z_OK;
      const char* message = gzerror(file, &errnum);
      if (errnum == Z_ERRNO) fail<io_error>(where, path, "read failed: ", errno_message(errno));
      fail<format_error>(where, path, "corrupt gzip stream: ", message);
    }
    if (read == 0) break;
    got += static_cast<std::size_t>(read);
  }
  if (got < size) {
    int errnum = Z_OK;
    const char* message = gzerror(file, &errnum);
    // Z_BUF_ERROR is zlib's "unexpected end of file" in a gzip stream: truncation, left to the
    // caller, which knows what was expected.
    if (errnum == Z_ERRNO) fail<io_error>(where, path, "read failed: ", errno_message(errno));
    if (errnum != Z_OK && errnum != Z_BUF_ERROR) {
      fail<format_error>(where, path, "corrupt gzip stream: ", message);
    }
  }
  return got;
}

inline const char* idx_type_name(std::uint8_t type) {
  switch (type) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return nullptr;
  }
}

inline std::string hex_byte(unsigned value) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[(value >> 4) & 0xF] + digits[value & 0xF];
}

// Opens an existing, non-directory file for reading through zlib (plain or gzip).
inline GzFilePtr open_idx_file(const std::filesystem::path& path, const char* where) {
  std::error_code status_error;
  const auto status = std::filesystem::status(path, status_error);
  if (!std::filesystem::exists(status)) fail<io_error>(where, path, "no such file");
  if (std::filesystem::is_directory(status)) fail<io_error>(where, path, "is a directory");

  errno = 0;
  GzFilePtr file(gzopen(path.string().c_str(), "rb"));
  if (!file) fail<io_error>(where, path, "cannot open: ", errno_message(errno));
  gzbuffer(file.get(), 1u << 18);
  return file;
}

// Reads and validates the 4-byte magic number; returns the number of dimensions (1 to 255).
inline std::size_t read_idx_magic(gzFile_s* file, const char* where,
                                  const std::filesystem::path& path) {
  std::uint8_t magic[4] = {};
  const std::size_t magic_got = gz_read_fully(file, magic, 4, where, path);
  if (magic_got < 4) {
    fail<format_error>(where, path, "truncated header: expected a 4-byte magic number, got ",
                       magic_got, " bytes");
  }
  if (magic[0] != 0 || magic[1] != 0) {
    fail<format_error>(where, path,
                       "wrong magic number: expected bytes 0x00 0x00 <type> <ndims>, got ",
                       hex_byte(magic[0]), " ", hex_byte(magic[1]), " ", hex_byte(magic[2]), " ",
                       hex_byte(magic[3]), " (not an IDX file)");
  }
  const std::uint8_t type = magic[2];
  if (type != 0x08) {
    const char* name = idx_type_name(type);
    if (name == nullptr) {
      fail<format_error>(where, path, "wrong magic number: unknown type code ", hex_byte(type));
    }
    fail<format_error>(where, path, "unsupported type code ", hex_byte(type), " (", name,
                       "); only 0x08 (unsigned byte) is supported");
  }
  const std::size_t ndims = magic[3];
  if (ndims == 0) fail<format_error>(where, path, "wrong magic number: zero dimensions");
  return ndims;
}

// Reads the `ndims` big-endian uint32 dimensions that follow the magic number.
inline std::vector<std::uint32_t> read_idx_dims(gzFile_s* file, std::size_t ndims,
                                                const char* where,
                                                const std::filesystem::path& path) {
  std::uint8_t dim_bytes[4 * 255] = {};
  const std::size_t dims_got = gz_read_fully(file, dim_bytes, 4 * ndims, where, path);
  if (dims_got < 4 * ndims) {
    fail<format_error>(where, path, "truncated header: expected ", 4 * ndims, " bytes of ", ndims,
                       " dimensions, got ", dims_got);
  }
  std::vector<std::uint32_t> dims(ndims);
  for (std::size_t d = 0; d < ndims; ++d) {
    const std::uint8_t* b = dim_bytes + 4 * d;
    dims[d] = (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
              (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
  }
  return dims;
}

// The payload size the dimensions declare, checked (with its non-zero factors) against the limit.
inline std::uint64_t idx_payload_bytes(const std::vector<std::uint32_t>& dims,
                                       std::uint64_t max_bytes, const char* where,
                                       const std::filesystem::path& path) {
  const std::size_t ndims = dims.size();
  bool empty = false;
  for (std::size_t d = 0; d < ndims; ++d) empty = empty || dims[d] == 0;
  // Cap the limit so that products below stay far from overflow and fit a size_t and an Index.
  const std::uint64_t limit = std::min<std::uint64_t>(
      {max_bytes, std::numeric_limits<std::size_t>::max(),
       static_cast<std::uint64_t>(std::numeric_limits<Index>::max()), std::uint64_t{1} << 62});
  // The product of the non-zero dimensions is bounded even when another dimension is 0: an
  // empty array of 0 x 2^32-1 x 2^32-1 holds no byte, but the size of one of its items (rows x
  // cols for images) would overflow the caller's arithmetic. Bounding the whole product bounds
  // the product of every subset of the dimensions.
  std::uint64_t nonzero_product = 1;
  for (std::size_t d = 0; d < ndims; ++d) {
    if (dims[d] == 0) continue;
    if (nonzero_product > limit / dims[d]) {
      std::string shape;
      for (std::size_t e = 0; e < ndims; ++e) {
        shape += (e == 0 ? "" : " x ") + std::to_string(dims[e]);
      }
      if (empty) {
        fail<format_error>(where, path, "dimensions ", shape,
                           ": the non-zero dimensions multiply to more than the limit of ", limit,
                           " bytes (the array is empty, but the size of its items overflows)");
      }
      fail<format_error>(where, path, "dimensions ", shape, " declare more than the limit of ",
                         limit, " bytes");
    }
    nonzero_product *= dims[d];
  }
  return empty ? 0 : nonzero_product;
}

// Checks the declared payload against the file size (plain: exactly; gzip: deflate's bound).
inline void check_idx_file_size(gzFile_s* file, std::uint64_t header_bytes, std::uint64_t expected,
                                const char* where, const std::filesystem::path& path) {
  std::error_code size_error;
  const std::uint64_t file_bytes = std::filesystem::file_size(path, size_error);
  if (size_error) return;
  if (gzdirect(file) == 1) {
    const std::uint64_t got = file_bytes > header_bytes ? file_bytes - header_bytes : 0;
    if (got < expected) {
      fail<format_error>(where, path, "truncated data: expected ", expected, " bytes, got ", got);
    }
    if (got > expected) {
      fail<format_error>(where, path, "trailing garbage: ", got - expected, " bytes after the ",
                         expected, " data bytes the header declares");
    }
  } else {
    // Deflate codes at best 258 repeated bytes in 2 bits: no gzip file expands beyond 1032:1.
    constexpr std::uint64_t deflate_max_expansion = 1032;
    const std::uint64_t most =
        file_bytes > std::numeric_limits<std::uint64_t>::max() / deflate_max_expansion
            ? std::numeric_limits<std::uint64_t>::max()
            : file_bytes * deflate_max_expansion;
    if (header_bytes + expected > most) {
      fail<format_error>(where, path, "truncated data: the header declares ", expected,
                         " bytes, more than a gzip file of ", file_bytes,
                         " bytes can hold (at most ", most, " bytes uncompressed)");
    }
  }
}

// Reads exactly `expected` payload bytes and checks that nothing follows them.
inline std::vector<std::uint8_t> read_idx_payload(gzFile_s* file, std::uint64_t expected,
                                                  const char* where,
                                                  const std::filesystem::path& path) {
  std::vector<std::uint8_t> data(static_cast<std::size_t>(expected));
  const std::size_t got = gz_read_fully(file, data.data(), data.size(), where, path);
  if (got < data.size()) {
    fail<format_error>(where, path, "truncated data: expected ", expected, " bytes, got ", got);
  }
  std::uint8_t extra = 0;
  if (gz_read_fully(file, &extra, 1, where, path) != 0) {
    fail<format_error>(where, path, "trailing garbage: more data after the ", expected,
                       " data bytes the header declares");
  }
  return data;
}

// read_idx, naming `where` in its error messages: header, size checks, then the payload.
inline IdxArray read_idx(const std::filesystem::path& path, std::uint64_t max_bytes,
                         const char* where) {
  const GzFilePtr file = open_idx_file(path, where);
  const std::size_t ndims = read_idx_magic(file.get(), where, path);
  IdxArray array;
  array.dims = read_idx_dims(file.get(), ndims, where, path);
  const std::uint64_t expected = idx_payload_bytes(array.dims, max_bytes, where, path);
  const std::uint64_t header_bytes = 4 + 4 * ndims;
  check_idx_file_size(file.get(), header_bytes, expected, where, path);
  array.data = read_idx_payload(file.get(), expected, where, path);
  return array;
}

}  // namespace detail

inline IdxArray read_idx(const std::filesystem::path& path, std::uint64_t max_bytes) {
  return detail::read_idx(path, max_bytes, "read_idx");
}

inline void write_idx(const std::filesystem::path& path, const IdxArray& array, bool gzip) {
  fqt::check(!array.dims.empty() && array.dims.size() <= 255, "write_idx",
             "an IDX array has 1 to 255 dimensions, got ", array.dims.size());
  std::uint64_t elements = 1;
  for (const std::uint32_t dim : array.dims) {
    // Saturate instead of overflowing: any product above the data size is a mismatch anyway.
    const std::uint64_t most = std::numeric_limits<std::uint64_t>::max();
    elements = (dim != 0 && elements > most / dim) ? most : elements * dim;
  }
  fqt::check(elements == array.data.size(), "write_idx", "the dimensions hold ", elements,
             " elements but data has ", array.data.size());

  std::vector<std::uint8_t> header(4 + 4 * array.dims.size());
  header[2] = 0x08;
  header[3] = static_cast<std::uint8_t>(array.dims.size());
  for (std::size_t d = 0; d < array.dims.size(); ++d) {
    for (int byte = 0; byte < 4; ++byte) {
      header[4 + 4 * d + byte] = static_cast<std::uint8_t>(array.dims[d] >> (24 - 8 * byte));
    }
  }

  errno = 0;
  // "T" makes zlib write the bytes through without compression.
  detail::GzFilePtr file(gzopen(path.string().c_str(), gzip ? "wb" : "wbT"));
  if (!file) {
    detail::fail<io_error>("write_idx", path,
                           "cannot open for writing: ", detail::errno_message(errno));
  }
  gzbuffer(file.get(), 1u << 18);
  auto write = [&](const std::uint8_t* bytes, std::size_t size) {
    while (size > 0) {
      const auto chunk = static_cast<unsigned>(std::min(size, detail::gz_max_chunk));
      errno = 0;
      if (gzwrite(file.get(), bytes, chunk) != static_cast<int>(chunk)) {
        int errnum = Z_OK;
        const char* message = gzerror(file.get(), &errnum);
        detail::fail<io_error>("write_idx", path, "write failed: ",
                               errnum == Z_ERRNO ? detail::errno_message(errno) : message);
      }
      bytes += chunk;
      size -= chunk;
    }
  };
  write(header.data(), header.size());
  write(array.data.data(), array.data.size());
  errno = 0;
  // gzclose flushes the last block: its result is the last write's.
  if (gzclose(file.release()) != Z_OK) {
    detail::fail<io_error>("write_idx", path,
                           "write failed on close: ", detail::errno_message(errno));
  }
}

}  // namespace data
}  // namespace fqt
