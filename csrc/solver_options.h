// The native solves as other translation units of mtl_fast._C call them (cpu_step.cpp): their
// options, validated (ValueError naming the bad value), from explicit values or from the keyword
// arguments of a binding, and the solves themselves (non-inline entry points of solvers.h, so its
// per-ISA clones are compiled in solvers.cpp alone).  Every option is required: the values come
// from mtl_fast/_solve_constants.py (native_imtl_g_options / native_mgda_options).
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>

#include "solvers.h"

namespace mtl_fast {
namespace solvers {

ImtlGOptions make_imtl_g_options(double rel_eps, double fallback_factor, int steps,
                                 int projections, double sum_rel_tol);
MgdaOptions make_mgda_options(int apg_iters, int power_iters, double lipschitz_safety,
                              double support_rel, double drop_tol, double ridge, double tol,
                              double division_floor, long max_iter);
// Exactly the keywords of imtl_g_solve / mgda_solve (solvers.cpp); ValueError otherwise.
ImtlGOptions imtl_g_options(const pybind11::kwargs& kw);
MgdaOptions mgda_options(const pybind11::kwargs& kw);

void run_imtl_g(const double* G, std::size_t T, double* out, const ImtlGOptions& opt);
void run_mgda(const double* G, std::size_t T, double* out, const MgdaOptions& opt);

}  // namespace solvers
}  // namespace mtl_fast
