// The dispatcher of the native CPU passes (cpu_passes.cpp) as seen by the other translation units
// of mtl_fast._C that run the passes (cpu_step.cpp): the active instruction set, dtype names, row
// addresses, and the Gram and combine passes with their scratch memory.  Compiled with the
// baseline flags; the kernels themselves stay in their instruction-set units (cpu_passes.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_passes.h"

namespace mtl_fast {
namespace cpu {

// The kernels of the instruction set in use (see cpu_passes.cpp: best supported, or forced).
const Kernels& active();
// torch's dtype name -> Elem ("float32", "float64", "bfloat16", "float16"); ValueError otherwise,
// naming the argument `what`.
Elem elem_of(const std::string& name, const char* what);
std::size_t elem_bytes(Elem e);
// The T row addresses as pointers; ValueError on none or a null address.
std::vector<const void*> row_pointers(const std::vector<std::uintptr_t>& rows);

// G (T x T float64, full, symmetric) of the rows; call without the GIL.
void gram_f64(const Kernels& k, const void* const* rows, std::size_t T, std::size_t D, Elem e,
              double* G, int num_threads);
// out (+)= sum_t weights[t] rows[t] over the non-zero weights (zero ones skipped, never read);
// call without the GIL.
void combine_weights(const Kernels& k, const void* const* rows, std::size_t T, std::size_t D,
                     Elem e, const double* weights, void* out, Elem out_elem, bool accumulate,
                     int num_threads);

}  // namespace cpu
}  // namespace mtl_fast
