// libFuzzer harness of fqt::data::read_idx. The input is an IDX file; it is read as it is and
// gzip-compressed (unless it already is gzip), and the two reads must agree.
//
// Invariants: only format_error escapes (io_error cannot: the file exists and is readable); an
// accepted array has 1..255 dimensions whose product is the number of bytes, within the byte
// limit, and so is the product of its non-zero dimensions; plain and gzip give the same result;
// a smaller limit refuses exactly the arrays above it.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fqt/data/idx.hpp"
#include "fuzz_support.hpp"

namespace {

using fqt::data::IdxArray;

struct Outcome {
  std::optional<IdxArray> array;  ///< empty: refused
  std::string error;
};

Outcome read(const std::string& path, std::uint64_t max_bytes, const char* what) {
  Outcome outcome;
  try {
    outcome.array = fqt::data::read_idx(path, max_bytes);
  } catch (const fqt::data::format_error& e) {
    outcome.error = e.what();
    if (outcome.error.rfind("read_idx: " + path + ": ", 0) != 0) {
      fqt_fuzz::finding("errors name the function and the file", what, ": ", outcome.error);
    }
  } catch (const fqt::data::io_error& e) {
    fqt_fuzz::finding("a readable file gives no io_error", what, ": ", e.what());
  } catch (...) {
    fqt_fuzz::unexpected_exception(what);
  }
  return outcome;
}

void check_array(const IdxArray& a, std::uint64_t max_bytes, const char* what) {
  if (a.dims.empty() || a.dims.size() > 255) {
    fqt_fuzz::finding("an IDX array has 1 to 255 dimensions", what, ": ", a.dims.size());
  }
  std::uint64_t product = 1, nonzero = 1;
  for (const std::uint32_t d : a.dims) {
    // Both stay within max_bytes (checked below), so no step overflows unless read_idx is wrong.
    if (d != 0 && nonzero > max_bytes / d) {
      fqt_fuzz::finding("the non-zero dimensions multiply to at most the limit", what);
    }
    nonzero *= d == 0 ? 1 : d;
    product *= d;
  }
  if (product != a.data.size()) {
    fqt_fuzz::finding("the dimensions multiply to the number of bytes", what, ": ", product,
                      " != ", a.data.size());
  }
}

bool same(const IdxArray& a, const IdxArray& b) { return a.dims == b.dims && a.data == b.data; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static fqt_fuzz::MemoryFile plain("fqt-fuzz-idx"), compressed("fqt-fuzz-idx-gz");
  fqt_fuzz::context() =
      "IDX file of " + std::to_string(size) + " bytes: " + fqt_fuzz::hex(data, size);
  const std::uint64_t limit = fqt::data::default_max_idx_bytes;
  plain.write(data, size);
  const Outcome as_is = read(plain.path(), limit, "read_idx(plain)");
  if (as_is.array) check_array(*as_is.array, limit, "read_idx(plain)");
  if (fqt_fuzz::verbose()) {
    std::fprintf(stderr, "plain: %s\n",
                 as_is.array
                     ? ("accepted, " + std::to_string(as_is.array->data.size()) + " bytes").c_str()
                     : as_is.error.c_str());
  }

  // A limit below the payload refuses it; at or above, the same array comes back.
  const std::uint64_t small = size / 2;
  const Outcome limited = read(plain.path(), small, "read_idx(plain, small limit)");
  if (limited.array) {
    check_array(*limited.array, small, "read_idx(plain, small limit)");
    if (!as_is.array || !same(*as_is.array, *limited.array)) {
      fqt_fuzz::finding("a smaller limit accepts only what the default accepts", "limit ", small);
    }
  } else if (as_is.array && as_is.array->data.size() <= small) {
    // Refused although the payload fits: only for an empty array with large non-zero dims.
    std::uint64_t nonzero = 1;
    for (const std::uint32_t d : as_is.array->dims) {
      nonzero = d == 0 ? nonzero : (nonzero > small / d ? small + 1 : nonzero * d);
    }
    if (nonzero <= small) {
      fqt_fuzz::finding("an array within the limit is accepted", "limit ", small, ": ",
                        limited.error);
    }
  }

  // The same bytes, gzip-compressed, read the same (a gzip input would be compressed twice).
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) return 0;
  compressed.write(fqt_fuzz::gzip(data, size, size % 10));
  const Outcome unzipped = read(compressed.path(), limit, "read_idx(gzip)");
  if (unzipped.array) check_array(*unzipped.array, limit, "read_idx(gzip)");
  if (static_cast<bool>(as_is.array) != static_cast<bool>(unzipped.array)) {
    fqt_fuzz::finding("plain and gzip files of the same bytes read the same",
                      "plain: ", as_is.array ? "accepted" : as_is.error,
                      "; gzip: ", unzipped.array ? "accepted" : unzipped.error);
  }
  if (as_is.array && !same(*as_is.array, *unzipped.array)) {
    fqt_fuzz::finding("plain and gzip files of the same bytes read the same", "arrays differ");
  }
  return 0;
}
