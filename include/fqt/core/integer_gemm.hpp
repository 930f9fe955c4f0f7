#pragma once
/// \file
/// \brief Integer GEMM engines: C = A·B with A unsigned 8-bit, B signed 8-bit and C int32, the form
/// AVX-512 VNNI and AVX-VNNI multiply natively (u8 × s8 → s32). `IntegerGemm` is the interface
/// (oneDNN's engine implements it in fqt/nn/backends/dnnl.hpp); `PortableIntegerGemm` is the plain
/// blocked C++ engine that runs everywhere.
///
/// Every operand is a batch of strided matrices, so that transposed and interleaved views (conv's
/// im2col columns, a weight read as Wᵀ) need no copy. Integer accumulation is exact, so results
/// never depend on the number of threads or the engine.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "fqt/core/error.hpp"
#include "fqt/core/matrix.hpp"
#include "fqt/core/parallel.hpp"

namespace fqt {

/// \brief Strides of a batch of matrices, in elements: element (b, i, j) is at
/// b·batch + i·row + j·col. batch = 0 broadcasts one matrix over the batch.
struct GemmStrides {
  Index batch = 0, row = 0, col = 1;
  bool operator==(const GemmStrides& o) const {
    return batch == o.batch && row == o.row && col == o.col;
  }
};

/// \brief The shape of a batched integer GEMM: C_b (m × n) = A_b (m × k) · B_b (k × n) for b in
/// [0, batch).
struct GemmShape {
  Index batch = 1, m = 0, n = 0, k = 0;
  GemmStrides a, b, c;
  bool operator==(const GemmShape& o) const {
    return batch == o.batch && m == o.m && n == o.n && k == o.k && a == o.a && b == o.b && c == o.c;
  }
};

/// \brief What an engine keeps for one recurring GEMM (a compiled kernel, packed buffers), owned
/// by the caller so that each call site keeps its own.
class GemmPlan {
 public:
  virtual ~GemmPlan() = default;
};

/// \brief The largest depth k for which Σ_k a·b of codes a ∈ [0, max_a], b ∈ [−128, 127] cannot
/// overflow int32: (2³¹ − 1) / (128·max_a).
inline Index max_exact_depth(int max_a) {
  return static_cast<Index>(2147483647LL / (128LL * std::max(max_a, 1)));
}

/// \brief An engine that computes batched u8 × s8 → s32 products.
class IntegerGemm {
 public:
  virtual ~IntegerGemm() = default;
  /// \brief A short name for reports, e.g. "portable" or "onednn".
  virtual const char* name() const = 0;
  /// \brief C = A·B (overwrites C) for every batch. The caller guarantees k ≤
  /// max_exact_depth(largest code of A). `plan` may hold what the engine kept from an earlier
  /// call of this call site; the engine (re)builds it when the shape changed.
  virtual void multiply(const GemmShape& shape, const std::uint8_t* a, const std::int8_t* b,
                        std::int32_t* c, std::unique_ptr<GemmPlan>& plan) const = 0;
};

/// \brief The portable engine: C row by row, B's rows streamed contiguously (B is first copied
/// row-major if its columns are strided), spread over threads by rows. Correct everywhere; tens
/// of GOP/s rather than VNNI's hundreds.
class PortableIntegerGemm final : public IntegerGemm {
 public:
  const char* name() const override { return "portable"; }

  void multiply(const GemmShape& s, const std::uint8_t* a, const std::int8_t* b, std::int32_t* c,
                std::unique_ptr<GemmPlan>& slot) const override {
    if (!dynamic_cast<Plan*>(slot.get())) slot = std::make_unique<Plan>();
    Plan& plan = static_cast<Plan&>(*slot);
    const bool contiguous = s.b.col == 1;
    const bool shared_b = s.b.batch == 0;
    if (!contiguous) plan.b.resize(static_cast<std::size_t>((shared_b ? 1 : s.batch) * s.k * s.n));
    for (Index batch = 0; batch < (contiguous ? 0 : (shared_b ? 1 : s.batch)); ++batch) {
      const std::int8_t* src = b + batch * s.b.batch;
      std::int8_t* dst = plan.b.data() + batch * s.k * s.n;
      for (Index kk = 0; kk < s.k; ++kk)
        for (Index j = 0; j < s.n; ++j) dst[kk * s.n + j] = src[kk * s.b.row + j * s.b.col];
    }
    const Index rows = s.batch * s.m;
    parallel_for(rows, s.n * s.k, [&](Index r) {
      const Index batch = r / s.m, i = r % s.m;
      const std::uint8_t* arow = a + batch * s.a.batch + i * s.a.row;
      const std::int8_t* bm =
          contiguous ? b + batch * s.b.batch : plan.b.data() + (shared_b ? 0 : batch * s.k * s.n);
      const Index brow = contiguous ? s.b.row : s.n;
      std::int32_t* crow = c + batch * s.c.batch + i * s.c.row;
      for (Index j = 0; j < s.n; ++j) crow[j * s.c.col] = 0;
      if (s.c.col == 1) {
        for (Index kk = 0; kk < s.k; ++kk) {
          const std::int32_t av = arow[kk * s.a.col];
          if (av == 0) continue;
          const std::int8_t* bk = bm + kk * brow;
          for (Index j = 0; j < s.n; ++j) crow[j] += av * static_cast<std::int32_t>(bk[j]);
        }
      } else {
        for (Index kk = 0; kk < s.k; ++kk) {
          const std::int32_t av = arow[kk * s.a.col];
          const std::int8_t* bk = bm + kk * brow;
          for (Index j = 0; j < s.n; ++j)
            crow[j * s.c.col] += av * static_cast<std::int32_t>(bk[j]);
        }
      }
    });
  }

 private:
  struct Plan final : GemmPlan {
    std::vector<std::int8_t> b;  // B copied row-major when its columns are strided
  };
};

/// \brief The portable engine (stateless).
inline const IntegerGemm& portable_integer_gemm() {
  static const PortableIntegerGemm engine;
  return engine;
}

}  // namespace fqt
