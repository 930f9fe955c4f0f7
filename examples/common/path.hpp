#pragma once
/// \file
/// \brief Shared by the examples: whether a program (gnuplot) can be run.

#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>

namespace fqt_examples {

/// \brief True when `program` is an executable file in a directory of $PATH.
inline bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return true;
  }
  return false;
}

}  // namespace fqt_examples
