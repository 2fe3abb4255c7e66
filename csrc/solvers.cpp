// pybind11 bindings of the Gram-space solves (solvers.h):
//
//   mtl_fast._C.imtl_g_solve(G, *, rel_eps, fallback_factor, steps, projections, sum_rel_tol)
//       -> float64 [T]
//   mtl_fast._C.mgda_solve(G, *, apg_iters, power_iters, lipschitz_safety, support_rel, drop_tol,
//                          ridge, tol, division_floor, max_iter) -> float64 [T]
//
// Every keyword is required: the native solvers hold no constants of their own.  The values come
// from mtl_fast/_solve_constants.py (native_imtl_g_options / native_mgda_options), the module the
// reference and the Triton kernels read too; tests/test_solve_constants.py checks that the keyword
// sets match and that changing a constant there changes these solvers' results.
//
// G is anything NumPy turns into an array without a copy of its data type (an ndarray, a CPU
// tensor's .numpy()): it must be 2-D, square with T >= 1, float64 and C-contiguous; nothing is
// converted silently.  Every validation error is a ValueError.  The solve runs with the GIL
// released (G must not be modified by another thread meanwhile).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstddef>
#include <string>

#include "bindings.h"
#include "solver_options.h"
#include "solvers.h"

namespace py = pybind11;

namespace mtl_fast {
namespace {

std::string shape_text(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        s += (d == 0 ? "" : ", ") + std::to_string(a.shape(d));
    }
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// `obj` as a NumPy array that is a valid Gram-matrix argument; ValueError otherwise.
py::array checked_gram(const py::object& obj) {
    py::array a = py::array::ensure(obj);
    if (!a) {
        throw py::value_error("G must be a float64 NumPy array [T, T]; got an object of type " +
                              std::string(py::str(py::type::of(obj).attr("__name__"))) +
                              " that NumPy cannot convert");
    }
    if (a.ndim() != 2) {
        throw py::value_error("G must be a 2-D array [T, T]; got " + std::to_string(a.ndim()) +
                              " dimension(s), shape " + shape_text(a));
    }
    if (a.shape(0) != a.shape(1)) {
        throw py::value_error("G must be square [T, T]; got shape " + shape_text(a));
    }
    if (a.shape(0) < 1) {
        throw py::value_error("G must have T >= 1 tasks; got shape " + shape_text(a));
    }
    if (!py::isinstance<py::array_t<double>>(a)) {
        throw py::value_error("G must have dtype float64 (native byte order); got " +
                              std::string(py::str(a.dtype())));
    }
    if (!(a.flags() & py::array::c_style)) {
        throw py::value_error(
            "G must be C-contiguous; got strides " +
            std::to_string(a.strides(0)) + ", " + std::to_string(a.strides(1)) +
            " (pass numpy.ascontiguousarray(G))");
    }
    return a;
}

void require(bool ok, const std::string& message) {
    if (!ok) {
        throw py::value_error(message);
    }
}

template <typename Solve>
py::array_t<double> run(const py::array& G, Solve solve) {
    const auto T = static_cast<std::size_t>(G.shape(0));
    py::array_t<double> out(static_cast<py::ssize_t>(T));
    const double* g = static_cast<const double*>(G.data());
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        solve(g, T, o);
    }
    return out;
}

}  // namespace

namespace solvers {

ImtlGOptions make_imtl_g_options(double rel_eps, double fallback_factor, int steps,
                                 int projections, double sum_rel_tol) {
    require(std::isfinite(rel_eps) && rel_eps > 0,
            "rel_eps must be a finite number > 0, got " + std::to_string(rel_eps));
    require(std::isfinite(fallback_factor) && fallback_factor >= 1,
            "fallback_factor must be a finite number >= 1, got " + std::to_string(fallback_factor));
    require(steps >= 1, "steps must be >= 1, got " + std::to_string(steps));
    require(projections >= 0, "projections must be >= 0, got " + std::to_string(projections));
    require(std::isfinite(sum_rel_tol) && sum_rel_tol >= 0,
            "sum_rel_tol must be a finite number >= 0, got " + std::to_string(sum_rel_tol));
    return ImtlGOptions{{rel_eps, fallback_factor, steps, projections}, sum_rel_tol};
}

MgdaOptions make_mgda_options(int apg_iters, int power_iters, double lipschitz_safety,
                              double support_rel, double drop_tol, double ridge, double tol,
                              double division_floor, long max_iter) {
    require(apg_iters >= 0, "apg_iters must be >= 0, got " + std::to_string(apg_iters));
    require(power_iters >= 1, "power_iters must be >= 1, got " + std::to_string(power_iters));
    require(std::isfinite(lipschitz_safety) && lipschitz_safety > 0,
            "lipschitz_safety must be a finite number > 0, got " +
                std::to_string(lipschitz_safety));
    require(std::isfinite(support_rel) && support_rel >= 0 && support_rel < 1,
            "support_rel must be in [0, 1), got " + std::to_string(support_rel));
    require(std::isfinite(drop_tol) && drop_tol >= 0,
            "drop_tol must be a finite number >= 0, got " + std::to_string(drop_tol));
    require(std::isfinite(ridge) && ridge >= 0,
            "ridge must be a finite number >= 0, got " + std::to_string(ridge));
    require(std::isfinite(tol) && tol >= 0,
            "tol must be a finite number >= 0, got " + std::to_string(tol));
    require(std::isfinite(division_floor) && division_floor > 0,
            "division_floor must be a finite number > 0, got " + std::to_string(division_floor));
    require(max_iter >= 1, "max_iter must be >= 1, got " + std::to_string(max_iter));
    return MgdaOptions{apg_iters,   power_iters, lipschitz_safety, support_rel, drop_tol,
                       ridge,       tol,         division_floor,   max_iter};
}

namespace {

// The keyword `name` of `kw` (required), as T.
template <typename T>
T keyword(const py::kwargs& kw, const char* name, const char* solver) {
    if (!kw.contains(name)) {
        throw py::value_error(std::string("the ") + solver + " solve needs the keyword " + name +
                              " (pass mtl_fast._solve_constants.native_" + solver +
                              "_options(...))");
    }
    return kw[name].cast<T>();
}

void only(const py::kwargs& kw, std::size_t n, const char* solver) {
    if (kw.size() != n) {
        throw py::value_error(std::string("the ") + solver + " solve takes exactly " +
                              std::to_string(n) + " keywords, got " + std::to_string(kw.size()) +
                              ": " + std::string(py::str(kw)));
    }
}

}  // namespace

ImtlGOptions imtl_g_options(const py::kwargs& kw) {
    only(kw, 5, "imtl_g");
    return make_imtl_g_options(
        keyword<double>(kw, "rel_eps", "imtl_g"), keyword<double>(kw, "fallback_factor", "imtl_g"),
        keyword<int>(kw, "steps", "imtl_g"), keyword<int>(kw, "projections", "imtl_g"),
        keyword<double>(kw, "sum_rel_tol", "imtl_g"));
}

MgdaOptions mgda_options(const py::kwargs& kw) {
    only(kw, 9, "mgda");
    return make_mgda_options(
        keyword<int>(kw, "apg_iters", "mgda"), keyword<int>(kw, "power_iters", "mgda"),
        keyword<double>(kw, "lipschitz_safety", "mgda"), keyword<double>(kw, "support_rel", "mgda"),
        keyword<double>(kw, "drop_tol", "mgda"), keyword<double>(kw, "ridge", "mgda"),
        keyword<double>(kw, "tol", "mgda"), keyword<double>(kw, "division_floor", "mgda"),
        keyword<long>(kw, "max_iter", "mgda"));
}

void run_imtl_g(const double* G, std::size_t T, double* out, const ImtlGOptions& opt) {
    imtl_g(G, T, out, opt);
}

void run_mgda(const double* G, std::size_t T, double* out, const MgdaOptions& opt) {
    mgda(G, T, out, opt);
}

}  // namespace solvers

void register_solvers(py::module_& m) {
    m.def(
        "imtl_g_solve",
        [](const py::object& G, double rel_eps, double fallback_factor, int steps,
           int projections, double sum_rel_tol) {
            const py::array a = checked_gram(G);
            const solvers::ImtlGOptions opt = solvers::make_imtl_g_options(
                rel_eps, fallback_factor, steps, projections, sum_rel_tol);
            return run(a, [&](const double* g, std::size_t T, double* o) {
                solvers::imtl_g(g, T, o, opt);
            });
        },
        py::arg("G"), py::kw_only(), py::arg("rel_eps"), py::arg("fallback_factor"),
        py::arg("steps"), py::arg("projections"), py::arg("sum_rel_tol"),
        R"doc(IMTL-G task weights (float64 [T]) from the Gram matrix G (float64 [T, T], C-contiguous).

The algorithm of mtl_fast.reference.imtl_g_weights: C beta = 1 on the unit-gradient Gram
C = N^-1 G N^-1 by the filtered pseudo-inverse psd_pinv_solve (one Cholesky of C + eps I,
eps = rel_eps * sqrt(T), times fallback_factor if it fails; `steps` iterated-Tikhonov steps and
`projections` range projections), alpha ~ beta / n, sum(alpha) = 1 (by sum|alpha| when
|sum alpha| <= sum_rel_tol * sum|alpha|); inactive tasks (zero or non-finite gradient) get 0.
Every keyword is required: pass mtl_fast._solve_constants.native_imtl_g_options(dtype), whose
rel_eps depends on the precision G was accumulated in. The GIL is released.)doc");

    m.def(
        "mgda_solve",
        [](const py::object& G, int apg_iters, int power_iters, double lipschitz_safety,
           double support_rel, double drop_tol, double ridge, double tol, double division_floor,
           long max_iter) {
            const py::array a = checked_gram(G);
            const solvers::MgdaOptions opt = solvers::make_mgda_options(
                apg_iters, power_iters, lipschitz_safety, support_rel, drop_tol, ridge, tol,
                division_floor, max_iter);
            return run(a, [&](const double* g, std::size_t T, double* o) {
                solvers::mgda(g, T, o, opt);
            });
        },
        py::arg("G"), py::kw_only(), py::arg("apg_iters"), py::arg("power_iters"),
        py::arg("lipschitz_safety"), py::arg("support_rel"), py::arg("drop_tol"), py::arg("ridge"),
        py::arg("tol"), py::arg("division_floor"), py::arg("max_iter"),
        R"doc(Exact MGDA weights (float64 [T]): argmin a^T G a over the simplex.

The algorithm of mtl_fast.reference.mgda_weights (active_set solver, as it runs on the CPU): G
scaled to unit largest active diagonal, `apg_iters` accelerated-projected-gradient steps (step
1 / (lipschitz_safety * lambda_max), lambda_max from `power_iters` power iterations) as a warm
start, then Wolfe's minimum-norm-point algorithm from the warm start's support (entries above
support_rel * max), dropping corral coefficients <= drop_tol, affine minimiser with a ridge of
ridge * max G_tt, stopping at a Frank-Wolfe gap <= tol (relative to the largest G_tt) or after
max_iter iterations; norms, sums and step ratios are divided by at least division_floor.
Inactive tasks (zero or non-finite gradient) get 0. Every keyword is required: pass
mtl_fast._solve_constants.native_mgda_options(T). The GIL is released.)doc");
}

}  // namespace mtl_fast
