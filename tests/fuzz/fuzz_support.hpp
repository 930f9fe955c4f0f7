#pragma once
// Shared by the libFuzzer harnesses: in-memory files for readers that take a path, a report of
// a violated invariant that aborts (libFuzzer saves the input), a byte reader, gzip.

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

namespace fqt_fuzz {

/// \brief What the harness is checking, printed with a finding (the decoded input, say).
inline std::string& context() {
  static std::string text;
  return text;
}

/// \brief Thrown instead of aborting for a finding listed in FQT_FUZZ_KNOWN; the harness then
/// skips the rest of the input.
struct KnownFinding {};

/// \brief Whether `invariant` is one of the '|'-separated invariants of $FQT_FUZZ_KNOWN: a way
/// to keep fuzzing past a defect already reported (triage only; test.sh never sets it).
inline bool known(const char* invariant) {
  static const std::string list = [] {
    const char* text = std::getenv("FQT_FUZZ_KNOWN");
    return text != nullptr ? "|" + std::string(text) + "|" : std::string();
  }();
  return !list.empty() && list.find("|" + std::string(invariant) + "|") != std::string::npos;
}

/// \brief Reports a violated invariant and aborts, so that libFuzzer saves the input.
template <class... Parts>
[[noreturn]] void finding(const char* invariant, Parts&&... parts) {
  if (known(invariant)) throw KnownFinding{};
  std::ostringstream details;
  details.precision(17);
  (details << ... << std::forward<Parts>(parts));
  std::fprintf(stderr, "\n==== fqt fuzz finding: %s\n%s\n---- input: %s\n", invariant,
               details.str().c_str(), context().c_str());
  std::fflush(stderr);
  std::abort();
}

/// \brief Reports an exception of a type the entry point does not document.
[[noreturn]] inline void unexpected_exception(const char* call) {
  try {
    throw;
  } catch (const std::exception& e) {
    finding("only documented exceptions escape", call, " threw ", typeid(e).name(), ": ", e.what());
  } catch (...) {
    finding("only documented exceptions escape", call, " threw a non-std::exception");
  }
}

/// \brief True when FQT_FUZZ_VERBOSE is set: harnesses then print what each input did (to check
/// that the seeds reach the branches they are meant for).
inline bool verbose() {
  static const bool on = std::getenv("FQT_FUZZ_VERBOSE") != nullptr;
  return on;
}

/// \brief A file in memory (memfd) with a path, /proc/self/fd/N, for readers that open a path.
/// Created once per process and rewritten for every input: no file system traffic.
class MemoryFile {
 public:
  explicit MemoryFile(const char* name) {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ < 0) {
      // No memfd (an old kernel or a sandbox): an unlinked temporary file.
      const char* tmp = std::getenv("TMPDIR");
      std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/fqt-fuzz-XXXXXX";
      fd_ = ::mkstemp(&pattern[0]);
      if (fd_ < 0) fail("cannot create a temporary file");
      ::unlink(pattern.c_str());
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemoryFile() { ::close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  /// Replaces the contents.
  void write(const void* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) fail("ftruncate failed");
    const auto* bytes = static_cast<const char*>(data);
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, bytes + done, size - done, static_cast<off_t>(done));
      if (n <= 0) fail("pwrite failed");
      done += static_cast<std::size_t>(n);
    }
  }
  void write(const std::vector<std::uint8_t>& bytes) { write(bytes.data(), bytes.size()); }

  /// The current contents.
  std::vector<std::uint8_t> read() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("fstat failed");
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n =
          ::pread(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      if (n <= 0) fail("pread failed");
      done += static_cast<std::size_t>(n);
    }
    return bytes;
  }

  const std::string& path() const { return path_; }

 private:
  [[noreturn]] static void fail(const char* what) {
    std::fprintf(stderr, "fqt fuzz harness: %s: %s\n", what, std::strerror(errno));
    std::abort();
  }

  int fd_ = -1;
  std::string path_;
};

/// \brief The bytes of a gzip stream (one member) of `size` bytes at `data`.
inline std::vector<std::uint8_t> gzip(const std::uint8_t* data, std::size_t size, int level = 6) {
  z_stream stream{};
  if (deflateInit2(&stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    std::fprintf(stderr, "fqt fuzz harness: deflateInit2 failed\n");
    std::abort();
  }
  std::vector<std::uint8_t> out(deflateBound(&stream, static_cast<uLong>(size)) + 32);
  stream.next_in = const_cast<Bytef*>(data);
  stream.avail_in = static_cast<uInt>(size);
  stream.next_out = out.data();
  stream.avail_out = static_cast<uInt>(out.size());
  const int status = deflate(&stream, Z_FINISH);
  if (status != Z_STREAM_END) {
    std::fprintf(stderr, "fqt fuzz harness: deflate failed (%d)\n", status);
    std::abort();
  }
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

/// \brief Reads a fuzz input front to back; past the end every read gives zeros.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  /// Little-endian.
  std::uint64_t uint(int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= std::uint64_t{byte()} << (8 * i);
    return v;
  }
  void copy(void* out, std::size_t bytes) {
    auto* o = static_cast<std::uint8_t*>(out);
    for (std::size_t i = 0; i < bytes; ++i) o[i] = byte();
  }
  bool empty() const { return at_ >= size_; }
  std::size_t remaining() const { return at_ < size_ ? size_ - at_ : 0; }
  const std::uint8_t* here() const { return data_ + (at_ < size_ ? at_ : size_); }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

/// \brief Hex dump of a short byte string (for findings).
inline std::string hex(const std::uint8_t* data, std::size_t size, std::size_t most = 256) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < size && i < most; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  if (size > most) out += "...";
  return out;
}

}  // namespace fqt_fuzz
