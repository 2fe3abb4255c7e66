// One balanced step of a gradient method on the CPU in one native call, and a Gram-space solve
// that reads G in place (mtl_fast/_native_passes.py calls both, each from one function):
//
//   mtl_fast._C.balance_rows(rows, numel, dtype, present, gram_out, solver, weights_out, out,
//                            out_dtype, num_threads, **options) -> (bad_tasks, bad_gram_rows)
//   mtl_fast._C.solve_gram(G, num_tasks, dtype, solver, weights_out, weights_dtype, **options)
//       -> bad_gram_rows
//
// balance_rows does what mtl_fast/_balance.py's balance_gram does on one process, in order:
//   1. G = J J^T of the T rows (the Gram pass of cpu_passes.h), rounded to float32 unless the rows
//      are float64 (the precision the Python path hands a method's solve);
//   2. the absent tasks (present[t] == 0; `present` is the address of T bytes, or 0: all present)
//      get zero rows and columns;
//   3. bad_tasks: the present tasks whose G_tt is NaN/Inf (a non-finite or overflowing gradient).
//      If there is one, nothing else is done or written: the caller raises naming them;
//   4. gram_out (address of T x T values of the Gram dtype, float32 or float64 for float64 rows;
//      0: not wanted) receives the masked G.  solver == "none" stops here;
//   5. solver "imtl_g" or "mgda": the native solve of solvers.h (the options are its required
//      keywords, as for imtl_g_solve / mgda_solve).  A non-finite entry left in the masked G is
//      reported as bad_gram_rows instead (the Python solve's error), nothing more is written;
//   6. weights_out (T float32): alpha_t rounded to float32, 0 where G_tt <= 0;
//   7. out (0: none): sum_t alpha_t g_t in out_dtype, the combine pass with those weights.
// Both passes read the rows in place; the GIL is released around them.
//
// solve_gram: G (T x T, float32 or float64, C-contiguous, at address G) -> its rows holding a
// NaN/Inf (then nothing is written), else the solve of float64(G) written to weights_out as
// weights_dtype (float32 or float64).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "cpu_dispatch.h"
#include "solver_options.h"

namespace py = pybind11;

namespace mtl_fast {
namespace {

using cpu::Elem;

enum class Solver { None, ImtlG, Mgda };

Solver solver_of(const std::string& name) {
    if (name == "none") return Solver::None;
    if (name == "imtl_g") return Solver::ImtlG;
    if (name == "mgda") return Solver::Mgda;
    throw py::value_error("solver must be 'none', 'imtl_g' or 'mgda'; got '" + name + "'");
}

// The solve of a float64 G (masked, finite), after parsing its options from `kw`.
struct Solve {
    Solver kind = Solver::None;
    solvers::ImtlGOptions imtl_g{};
    solvers::MgdaOptions mgda{};

    Solve(Solver k, const py::kwargs& kw) : kind(k) {
        if (k == Solver::ImtlG) imtl_g = solvers::imtl_g_options(kw);
        if (k == Solver::Mgda) mgda = solvers::mgda_options(kw);
        if (k == Solver::None && kw.size() != 0) {
            throw py::value_error("solver 'none' takes no options; got " + std::string(py::str(kw)));
        }
    }

    void operator()(const double* G, std::size_t T, double* alpha) const {
        if (kind == Solver::ImtlG) solvers::run_imtl_g(G, T, alpha, imtl_g);
        if (kind == Solver::Mgda) solvers::run_mgda(G, T, alpha, mgda);
    }
};

// The rows holding a NaN/Inf entry.
std::vector<std::size_t> nonfinite_rows(const double* G, std::size_t T) {
    std::vector<std::size_t> bad;
    for (std::size_t i = 0; i < T; ++i) {
        for (std::size_t j = 0; j < T; ++j) {
            if (!std::isfinite(G[i * T + j])) {
                bad.push_back(i);
                break;
            }
        }
    }
    return bad;
}

void write_values(const double* v, std::size_t n, std::uintptr_t addr, Elem e) {
    if (e == Elem::F64) {
        double* o = reinterpret_cast<double*>(addr);
        for (std::size_t k = 0; k < n; ++k) o[k] = v[k];
    } else {
        float* o = reinterpret_cast<float*>(addr);
        for (std::size_t k = 0; k < n; ++k) o[k] = static_cast<float>(v[k]);
    }
}

using Bad = std::pair<std::vector<std::size_t>, std::vector<std::size_t>>;

Bad balance_rows(const std::vector<std::uintptr_t>& rows, std::size_t numel,
                 const std::string& dtype, std::uintptr_t present, std::uintptr_t gram_out,
                 const std::string& solver, std::uintptr_t weights_out, std::uintptr_t out,
                 const std::string& out_dtype, int num_threads, const py::kwargs& options) {
    const std::vector<const void*> p = cpu::row_pointers(rows);
    const Elem e = cpu::elem_of(dtype, "dtype");
    const Elem oe = cpu::elem_of(out_dtype, "out_dtype");
    const Solve solve(solver_of(solver), options);
    if (numel == 0) throw py::value_error("numel must be >= 1");
    if (solve.kind != Solver::None && weights_out == 0) {
        throw py::value_error("weights_out is null");
    }
    const std::size_t T = p.size();
    const unsigned char* mask = reinterpret_cast<const unsigned char*>(present);
    const cpu::Kernels& k = cpu::active();
    std::vector<double> G(T * T);
    Bad bad;
    {
        py::gil_scoped_release release;
        cpu::gram_f64(k, p.data(), T, numel, e, G.data(), num_threads);
        for (std::size_t i = 0; i < T; ++i) {
            for (std::size_t j = 0; j < T; ++j) {
                double& g = G[i * T + j];
                if (mask != nullptr && !(mask[i] && mask[j])) {
                    g = 0.0;
                } else if (e != Elem::F64) {
                    g = static_cast<double>(static_cast<float>(g));
                }
            }
        }
        for (std::size_t t = 0; t < T; ++t) {
            if ((mask == nullptr || mask[t]) && !std::isfinite(G[t * T + t])) bad.first.push_back(t);
        }
    }
    if (!bad.first.empty()) return bad;
    if (gram_out != 0) write_values(G.data(), T * T, gram_out, e == Elem::F64 ? Elem::F64 : Elem::F32);
    if (solve.kind == Solver::None) return bad;
    bad.second = nonfinite_rows(G.data(), T);
    if (!bad.second.empty()) return bad;
    std::vector<double> alpha(T);
    {
        py::gil_scoped_release release;
        solve(G.data(), T, alpha.data());
        float* w = reinterpret_cast<float*>(weights_out);
        for (std::size_t t = 0; t < T; ++t) {
            w[t] = G[t * T + t] > 0 ? static_cast<float>(alpha[t]) : 0.0f;
            alpha[t] = static_cast<double>(w[t]);  // the combine reads the float32 weights
        }
        if (out != 0) {
            cpu::combine_weights(k, p.data(), T, numel, e, alpha.data(),
                                 reinterpret_cast<void*>(out), oe, false, num_threads);
        }
    }
    return bad;
}

std::vector<std::size_t> solve_gram(std::uintptr_t G_addr, std::size_t T, const std::string& dtype,
                                    const std::string& solver, std::uintptr_t weights_out,
                                    const std::string& weights_dtype, const py::kwargs& options) {
    const Elem e = cpu::elem_of(dtype, "dtype");
    const Elem we = cpu::elem_of(weights_dtype, "weights_dtype");
    if ((e != Elem::F32 && e != Elem::F64) || (we != Elem::F32 && we != Elem::F64)) {
        throw py::value_error("dtype and weights_dtype must be float32 or float64");
    }
    const Solve solve(solver_of(solver), options);
    if (solve.kind == Solver::None) throw py::value_error("solve_gram needs a solver");
    if (T == 0 || G_addr == 0 || weights_out == 0) {
        throw py::value_error("num_tasks must be >= 1 and G, weights_out non-null");
    }
    std::vector<double> G(T * T);
    for (std::size_t k = 0; k < T * T; ++k) {
        G[k] = e == Elem::F64 ? reinterpret_cast<const double*>(G_addr)[k]
                              : static_cast<double>(reinterpret_cast<const float*>(G_addr)[k]);
    }
    std::vector<std::size_t> bad = nonfinite_rows(G.data(), T);
    if (!bad.empty()) return bad;
    std::vector<double> alpha(T);
    {
        py::gil_scoped_release release;
        solve(G.data(), T, alpha.data());
    }
    write_values(alpha.data(), T, weights_out, we);
    return bad;
}

}  // namespace

void register_cpu_step(py::module_& m) {
    m.def("balance_rows", &balance_rows, py::arg("rows"), py::arg("numel"), py::arg("dtype"),
          py::arg("present"), py::arg("gram_out"), py::arg("solver"), py::arg("weights_out"),
          py::arg("out"), py::arg("out_dtype"), py::arg("num_threads"),
          R"doc(One balanced step on T rows read in place: Gram matrix, absent-task mask,
non-finite check, optional native solve (imtl_g / mgda, with their required keywords) and
combine; returns (bad tasks, bad Gram rows). See csrc/cpu_step.cpp.)doc");
    m.def("solve_gram", &solve_gram, py::arg("G"), py::arg("num_tasks"), py::arg("dtype"),
          py::arg("solver"), py::arg("weights_out"), py::arg("weights_dtype"),
          R"doc(The native imtl_g / mgda solve of a T x T float32/float64 G read in place; returns
its rows holding NaN/Inf (then nothing is written). See csrc/cpu_step.cpp.)doc");
}

}  // namespace mtl_fast
