// The pydiffuse op library and the small pybind11 module pydiffuse._C, which reports how the
// extension was built and the row order of the packed coefficient tables.
//
// Each op's host side lives in its own file csrc/cpu/<op>.cpp: its schema (written once, in a
// TORCH_LIBRARY_FRAGMENT of this library), its Meta kernel (for torch.compile), the invariants
// of its kernels' inputs, its CPU kernel, and its CPU and CUDA bindings (TORCH_LIBRARY_IMPL; the
// CUDA kernels are csrc/cuda/<op>.cu). The public Python API is pydiffuse/ops.
#include <pybind11/pybind11.h>

#include "common/step.h"
#include "cpu/output_pool.h"
#include "cpu/philox_lanes.h"
#include "torch_utils.h"

// The library; the ops' definitions are the fragments of csrc/cpu/*.cpp.
TORCH_LIBRARY(pydiffuse, m) {}

namespace {

template <size_t N>
pybind11::tuple names(const char* const (&rows)[N]) {
  pybind11::tuple out(N);
  for (size_t i = 0; i < N; ++i) out[i] = pybind11::str(rows[i]);
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "pydiffuse compiled kernels; the ops live in torch.ops.pydiffuse";
#ifdef PYDIFFUSE_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.attr("cuda_archs") = PYDIFFUSE_CUDA_ARCHS;
  module.attr("compiler") = PYDIFFUSE_COMPILER;
  // The coefficient rows the kernels read (csrc/common/step.h); pydiffuse/ops/_dispatch.py
  // checks them against pydiffuse/ops/_packing.py on load.
  module.attr("step_coef_names") = names(pydiffuse::kStepCoefNames);
  module.attr("langevin_coef_names") = names(pydiffuse::kLangevinCoefNames);
  module.def("philox_lanes", &pydiffuse::cpu::philox_lanes,
             "The SIMD lanes the CPU noise stream's Philox runs in: avx512, avx2 or scalar.");
  module.def("release_cached_outputs", &pydiffuse::cpu::release_cached_outputs,
             "Free the CPU output cache (csrc/cpu/output_pool.h); returns the bytes released.");
}
