#pragma once
/// \file
/// \brief The one SIMD switch of fqt. `FQT_HAVE_AVX512` is 1 when the translation unit is compiled
/// for AVX-512F (e.g. `-march=native` on a machine that has it) and `FQT_NO_SIMD` is not defined;
/// every vector kernel then has an AVX-512 path beside its portable scalar path, and the two
/// execute the same IEEE operations (explicit fma), so their results are bit-identical. Define
/// `FQT_NO_SIMD` to force the portable paths (the tests compare the two).

#if defined(__AVX512F__) && !defined(FQT_NO_SIMD)
#include <immintrin.h>
#define FQT_HAVE_AVX512 1
#else
#define FQT_HAVE_AVX512 0
#endif

// GCC 12 reports its own _mm512_undefined_*() placeholders as uninitialized (GCC bug 105593,
// fixed in GCC 13); these bracket fqt's intrinsics code.
#if defined(__GNUC__) && !defined(__clang__)
#define FQT_SIMD_DIAGNOSTICS_PUSH                                                      \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define FQT_SIMD_DIAGNOSTICS_POP _Pragma("GCC diagnostic pop")
#else
#define FQT_SIMD_DIAGNOSTICS_PUSH
#define FQT_SIMD_DIAGNOSTICS_POP
#endif
