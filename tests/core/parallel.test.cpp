// Exceptions out of parallel loops (core/parallel.hpp): an exception thrown inside an OpenMP
// region reaches the caller, as in a serial loop, instead of terminating the process.
#include <algorithm>
#include <catch2/catch.hpp>
#include <fqt/quant.hpp>
#include <limits>
#include <stdexcept>
#include <string>

#include "support/quant_support.hpp"

using fqt::Index;
using fqt::Matrix;
using fqt::Philox;

namespace {

// Runs f with `threads` threads and returns the message of the std::domain_error it throws.
template <class F>
std::string domain_error_message(int threads, F&& f) {
  const int before = fqt::num_threads();
  fqt::set_num_threads(threads);
  std::string message = "(nothing thrown)";
  try {
    f();
  } catch (const std::domain_error& e) {
    message = e.what();
  }
  fqt::set_num_threads(before);
  return message;
}

}  // namespace

TEST_CASE("parallel_for rethrows the exception of the lowest failing index", "[core][parallel]") {
  const int before = fqt::num_threads();
  fqt::set_num_threads(2);
  for (const Index first : {Index{0}, Index{5}, Index{4000}, Index{4095}}) {
    CAPTURE(first);
    try {
      fqt::parallel_for(4096, 1 << 12, [&](Index i) {
        if (i == first || i == first + 7 || i == 4095) throw std::out_of_range(std::to_string(i));
      });
      FAIL("nothing thrown");
    } catch (const std::out_of_range& e) {
      CHECK(std::string(e.what()) == std::to_string(first));
    }
  }
  // Every index runs when nothing throws.
  std::vector<int> seen(4096, 0);
  fqt::parallel_for(4096, 1 << 12, [&](Index i) { seen[static_cast<std::size_t>(i)] += 1; });
  CHECK(std::count(seen.begin(), seen.end(), 1) == 4096);
  fqt::set_num_threads(before);
}

TEMPLATE_TEST_CASE("a NaN or an overflowing range in a large gradient throws on two threads",
                   "[core][parallel][quant]", float, double) {
  // 512 x 256 = 131,072 elements: above the threshold at which the row loops go parallel. The bad
  // element sits far from the first chunk.
  Matrix<TestType> x = fqt_test::heavy_tailed<TestType>(512, 256, 3);
  const auto bad = GENERATE(0, 1);
  if (bad == 0) {
    x(437, 101) = std::numeric_limits<TestType>::quiet_NaN();
  } else {
    x(437, 101) = std::numeric_limits<TestType>::max();
    x(437, 102) = -std::numeric_limits<TestType>::max();
  }
  auto each = [&](const auto& q) {
    INFO(q.name() << (bad == 0 ? " NaN" : " overflowing range"));
    auto quantize = [&] { (void)q.quantize(x, Philox(4)); };
    auto fake = [&] { (void)q(x, Philox(4)); };
    auto variance = [&] { (void)q.expected_variance(x); };
    const std::string serial = domain_error_message(1, quantize);
    CHECK(serial.find(q.name()) == 0);
    if (bad == 0) CHECK(serial.find("element (437, 101)") != std::string::npos);
    CHECK(domain_error_message(2, quantize) == serial);
    CHECK(domain_error_message(2, fake) == serial);
    CHECK(domain_error_message(2, variance) == serial);
  };
  each(fqt::PerTensorQuantizer<TestType>(4));
  each(fqt::PerSampleQuantizer<TestType>(4));
  each(fqt::PerColumnQuantizer<TestType>(4));
  each(fqt::BlockHouseholderQuantizer<TestType>(4));
}
