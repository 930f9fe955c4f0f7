// Tests of tests/support/skip.hpp: a missing data set or tool fails the tests under CI.

#include "support/skip.hpp"

#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <optional>
#include <string>

namespace {

// Sets an environment variable for the scope, then restores the previous value.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnvironment() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("A missing prerequisite fails under CI=true and is skipped elsewhere", "[support]") {
  using fqt_test::MissingPrerequisite;
  for (const char* ci : {"true", "TRUE", "1"}) {
    ScopedEnvironment env("CI", ci);
    CAPTURE(ci);
    CHECK(fqt_test::missing_prerequisite_policy() == MissingPrerequisite::Fail);
  }
  for (const char* ci : {"false", "0", ""}) {
    ScopedEnvironment env("CI", ci);
    CAPTURE(ci);
    CHECK(fqt_test::missing_prerequisite_policy() == MissingPrerequisite::Skip);
  }
  {
    ScopedEnvironment env("CI", nullptr);
    CHECK(fqt_test::missing_prerequisite_policy() == MissingPrerequisite::Skip);
    CHECK(fqt_test::prerequisite(true, "present"));
  }
  ScopedEnvironment env("CI", "true");
  CHECK(fqt_test::prerequisite(true, "a present prerequisite passes under CI too"));
}

TEST_CASE("The Fashion-MNIST directory can be overridden for the tests", "[support]") {
  {
    ScopedEnvironment env("FQT_FASHION_MNIST_DIR", nullptr);
    CHECK(fqt_test::fashion_mnist_dir() == "/usr/share/datasets/fashion-mnist");
  }
  ScopedEnvironment env("FQT_FASHION_MNIST_DIR", "/nowhere/fashion");
  CHECK(fqt_test::fashion_mnist_dir() == "/nowhere/fashion");
}
