#pragma once
/// \file
/// \brief The int8 backend on oneDNN's matmul: u8 × s8 → s32 on AVX-512 VNNI or AVX-VNNI.
/// Opt-in: include this header and link the CMake target `fqt::dnnl` (`find_package(fqt
/// COMPONENTS dnnl)`), which brings oneDNN (Debian: libdnnl-dev). The rest of fqt never needs it.
///
/// Each call site (a layer's forward, grad-input or grad-weight product) keeps its compiled
/// primitive, memory objects and stream in its GemmPlan, so that the steady state creates no
/// primitive and allocates nothing; a new shape rebuilds the plan. oneDNN runs on the OpenMP
/// runtime fqt uses. Without VNNI, oneDNN's u8 × s8 kernels may saturate their 16-bit intermediate
/// sums, so on such a CPU the engine hands every product to the portable engine (see
/// `uses_vnni()`).

#include <memory>
#include <oneapi/dnnl/dnnl.hpp>

#include "fqt/core/integer_gemm.hpp"
#include "fqt/nn/backends/int8.hpp"

namespace fqt {

/// \brief The oneDNN integer GEMM engine.
class DnnlIntegerGemm final : public IntegerGemm {
 public:
  DnnlIntegerGemm() : engine_(dnnl::engine::kind::cpu, 0) {}

  const char* name() const override { return uses_vnni() ? "onednn" : "onednn-portable"; }

  /// \brief True when oneDNN's effective ISA multiplies u8 × s8 exactly (AVX-512 VNNI or
  /// AVX-VNNI); otherwise multiply() runs the portable engine.
  static bool uses_vnni() {
    static const bool vnni = [] {
      const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
      auto has = [isa](unsigned mask) { return (isa & mask) == mask; };
      return has(dnnl_cpu_isa_avx512_core_vnni) || has(dnnl_cpu_isa_avx2_vnni);
    }();
    return vnni;
  }

  void multiply(const GemmShape& shape, const std::uint8_t* a, const std::int8_t* b,
                std::int32_t* c, std::unique_ptr<GemmPlan>& slot) const override {
    if (!uses_vnni()) return portable_integer_gemm().multiply(shape, a, b, c, slot);
    auto* plan = dynamic_cast<Plan*>(slot.get());
    if (!plan || !(plan->shape == shape)) {
      slot = std::make_unique<Plan>(shape, engine_);
      plan = static_cast<Plan*>(slot.get());
    }
    plan->a.set_data_handle(const_cast<std::uint8_t*>(a));
    plan->b.set_data_handle(const_cast<std::int8_t*>(b));
    plan->c.set_data_handle(c);
    plan->matmul.execute(
        plan->stream,
        {{DNNL_ARG_SRC, plan->a}, {DNNL_ARG_WEIGHTS, plan->b}, {DNNL_ARG_DST, plan->c}});
    plan->stream.wait();
  }

 private:
  using dims = dnnl::memory::dims;
  using dt = dnnl::memory::data_type;

  static dnnl::memory::desc describe(Index batch, Index rows, Index cols, const GemmStrides& s,
                                     dt type) {
    // A batch stride of 0 broadcasts one matrix: oneDNN spells that as a batch of 1.
    return dnnl::memory::desc(dims{s.batch == 0 ? 1 : batch, rows, cols}, type,
                              dims{s.batch == 0 ? rows * cols : s.batch, s.row, s.col});
  }

  struct Plan final : GemmPlan {
    Plan(const GemmShape& s, const dnnl::engine& engine)
        : shape(s),
          a(describe(s.batch, s.m, s.k, s.a, dt::u8), engine, DNNL_MEMORY_NONE),
          b(describe(s.batch, s.k, s.n, s.b, dt::s8), engine, DNNL_MEMORY_NONE),
          c(describe(s.batch, s.m, s.n, s.c, dt::s32), engine, DNNL_MEMORY_NONE),
          matmul(dnnl::matmul::primitive_desc(
              dnnl::matmul::desc(a.get_desc(), b.get_desc(), c.get_desc()), engine)),
          stream(engine) {}
    GemmShape shape;
    dnnl::memory a, b, c;
    dnnl::matmul matmul;
    // The call site's own stream, bound to this engine: a call site runs one product at a time
    // (a layer's cache is not shared between concurrent steps).
    dnnl::stream stream;
  };

  dnnl::engine engine_;
};

namespace nn {

/// \brief The int8 backend on oneDNN, for QuantPolicy::backend (one shared instance).
inline std::shared_ptr<const Backend> dnnl_backend() {
  static const DnnlIntegerGemm engine;
  static const auto backend = std::make_shared<const Int8Backend>(engine);
  return backend;
}

}  // namespace nn
}  // namespace fqt
