// Registration hooks of the components of mtl_fast._C.  Each component implements its register_*
// function in its own .cpp file; register_all (bindings.cpp) calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace mtl_fast {

void register_all(pybind11::module_& m);

// welford.cpp: mtl_fast._C.Welford, the running-statistics accumulator.
void register_welford(pybind11::module_& m);
// solvers.cpp: mtl_fast._C.imtl_g_solve / mgda_solve, the Gram-space weight solves.
void register_solvers(pybind11::module_& m);
// cpu_passes.cpp: mtl_fast._C.gram_rows / combine_rows, the native CPU passes over the rows.
void register_cpu_passes(pybind11::module_& m);
// graddrop.cpp: mtl_fast._C.graddrop_sums / graddrop_combine, GradDrop's sign dropout.
void register_graddrop(pybind11::module_& m);

}  // namespace mtl_fast
