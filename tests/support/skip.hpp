#pragma once
// Tests that need something outside the repository (the Fashion-MNIST data set, gnuplot): where
// it is missing they are skipped with a warning on a developer's machine, but fail under CI
// (CI=true), where test.sh has installed everything and a skip would hide a broken setup.

#include <catch2/catch.hpp>
#include <cctype>
#include <cstdlib>
#include <string>

namespace fqt_test {

/// \brief What a test does when a prerequisite is missing.
enum class MissingPrerequisite {
  Skip,  ///< warn and skip the part of the test that needs it
  Fail   ///< fail the test
};

/// \brief Fail under CI (the environment variable CI is "true" or "1", any case), skip otherwise.
inline MissingPrerequisite missing_prerequisite_policy() {
  const char* ci = std::getenv("CI");
  std::string value = ci != nullptr ? ci : "";
  for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return value == "true" || value == "1" ? MissingPrerequisite::Fail : MissingPrerequisite::Skip;
}

/// \brief Returns `available`. When it is false, fails the running test under CI, or warns
/// "skipped: <what>" otherwise; the caller then skips what needs the prerequisite:
/// `if (!fqt_test::prerequisite(fs::is_directory(dir), "...")) return;`.
/// \param what names the missing prerequisite and how to get it
inline bool prerequisite(bool available, const std::string& what) {
  if (available) return true;
  if (missing_prerequisite_policy() == MissingPrerequisite::Fail) {
    FAIL("missing prerequisite under CI (CI=true), the test cannot run: " << what);
  }
  WARN("skipped: " << what);
  return false;
}

/// \brief The Fashion-MNIST directory: $FQT_FASHION_MNIST_DIR if set (to test another copy, or
/// a missing one), else Debian's dataset-fashion-mnist package.
inline std::string fashion_mnist_dir() {
  const char* dir = std::getenv("FQT_FASHION_MNIST_DIR");
  return dir != nullptr && *dir != '\0' ? dir : "/usr/share/datasets/fashion-mnist";
}

}  // namespace fqt_test
