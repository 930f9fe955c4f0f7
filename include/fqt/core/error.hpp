#pragma once
/// \file
/// \brief The three tiers of error handling: static_assert for type misuse, FQT_ASSERT for
/// internal invariants (compiled out under NDEBUG, overridable), and always-on argument checks that
/// throw std::invalid_argument or std::domain_error naming the function, the argument and values.

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#ifndef FQT_ASSERT
/// Internal invariant, checked in debug builds only. Define FQT_ASSERT before including fqt to
/// route it elsewhere (the tests make it throw).
#define FQT_ASSERT(cond) assert(cond)
#endif

namespace fqt {
namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  out.precision(9);
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace detail

/// \brief Throws std::invalid_argument with "<where>: <message parts...>" unless cond holds.
/// \param cond the condition that valid input satisfies
/// \param where the public function that checks, e.g. "PerSampleQuantizer::quantize"
template <class... Parts>
inline void check(bool cond, const char* where, Parts&&... parts) {
  if (!cond) {
    throw std::invalid_argument(detail::concat(where, ": ", std::forward<Parts>(parts)...));
  }
}

/// \brief Throws std::domain_error with "<where>: <message parts...>" unless cond holds. Used for
/// values outside the domain of the math (NaN, infinity).
template <class... Parts>
inline void check_domain(bool cond, const char* where, Parts&&... parts) {
  if (!cond) {
    throw std::domain_error(detail::concat(where, ": ", std::forward<Parts>(parts)...));
  }
}

}  // namespace fqt
