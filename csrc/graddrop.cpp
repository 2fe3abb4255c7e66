// pybind11 bindings of GradDrop's native CPU passes (graddrop.h):
//
//   mtl_fast._C.graddrop_sums(rows, numel, dtype, weights, batch, signs, out, num_threads)
//   mtl_fast._C.graddrop_combine(rows, numel, dtype, weights, leak, sums, columns, signs,
//                                uniform, out, out_dtype, accumulate, eps, num_threads)
//
// As for the other CPU passes (cpu_passes.cpp), arrays cross as raw addresses of CPU tensors:
// `rows` holds T addresses of `numel` contiguous elements of `dtype`; `weights`, `leak`,
// `uniform` and `sums` are float32 arrays (float64 for float64 rows); `signs` is an int8 array
// of sgn(A) in {-1, 0, 1}; `signs` and `sums` may be 0 (none).  The caller (mtl_fast/_native_graddrop.py) guarantees sizes, types and liveness; only
// names, nulls and shapes are checked here.  The passes run with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "cpu_dispatch.h"
#include "graddrop.h"

namespace py = pybind11;

namespace mtl_fast {
namespace {

using graddrop::Elem;

graddrop::Rows graddrop_rows(const std::vector<std::uintptr_t>& rows,
                             std::vector<const void*>& holder, std::size_t numel,
                             const std::string& dtype) {
    // The checks in their order: no rows (cpu::row_pointers), numel, a null row (row_pointers).
    if (!rows.empty() && numel == 0) throw py::value_error("numel must be >= 1");
    holder = cpu::row_pointers(rows);
    return graddrop::Rows{holder.data(), rows.size(), numel, cpu::elem_of(dtype, "dtype")};
}

template <class T>
const T* as(std::uintptr_t p) {
    return reinterpret_cast<const T*>(p);
}

int at_least_one(int n) { return n < 1 ? 1 : n; }

}  // namespace

void register_graddrop(py::module_& m) {
    m.def(
        "graddrop_sums",
        [](const std::vector<std::uintptr_t>& rows, std::size_t numel, const std::string& dtype,
           std::uintptr_t weights, std::size_t batch, std::uintptr_t signs, std::uintptr_t out,
           int num_threads) {
            std::vector<const void*> holder;
            const graddrop::Rows r = graddrop_rows(rows, holder, numel, dtype);
            if (batch == 0 || numel % batch != 0) {
                throw py::value_error("batch must divide numel");
            }
            if (weights == 0 || out == 0) throw py::value_error("weights and out must be non-null");
            const auto* sp = reinterpret_cast<const std::int8_t*>(signs);
            py::gil_scoped_release release;
            if (r.elem == Elem::F64) {
                graddrop::sums<double>(r, as<double>(weights), batch, sp,
                                       reinterpret_cast<double*>(out), at_least_one(num_threads));
            } else {
                graddrop::sums<float>(r, as<float>(weights), batch, sp,
                                      reinterpret_cast<float*>(out), at_least_one(num_threads));
            }
        },
        py::arg("rows"), py::arg("numel"), py::arg("dtype"), py::arg("weights"), py::arg("batch"),
        py::arg("signs"), py::arg("out"), py::arg("num_threads"),
        R"doc(S[t, f] = weights[t] * sum_b sgn(signs[b, f]) rows[t][b, f] over the rows seen as
[batch, numel / batch]; written into `out` (T x F, float32, float64 for float64 rows).)doc");

    m.def(
        "graddrop_combine",
        [](const std::vector<std::uintptr_t>& rows, std::size_t numel, const std::string& dtype,
           std::uintptr_t weights, std::uintptr_t leak, std::uintptr_t sums, std::size_t columns,
           std::uintptr_t signs, std::uintptr_t uniform,
           std::uintptr_t out, const std::string& out_dtype, bool accumulate, double eps,
           int num_threads) {
            std::vector<const void*> holder;
            const graddrop::Rows r = graddrop_rows(rows, holder, numel, dtype);
            if (weights == 0 || leak == 0 || uniform == 0 || out == 0) {
                throw py::value_error("weights, leak, uniform and out must be non-null");
            }
            if (sums == 0 ? columns != numel : (columns == 0 || numel % columns != 0)) {
                throw py::value_error("columns must be numel (no sums) or divide numel");
            }
            graddrop::CombineArgs a{reinterpret_cast<const void*>(sums),
                                    columns,
                                    reinterpret_cast<const std::int8_t*>(signs),
                                    reinterpret_cast<const void*>(uniform),
                                    reinterpret_cast<void*>(out),
                                    cpu::elem_of(out_dtype, "out_dtype"),
                                    accumulate,
                                    eps,
                                    at_least_one(num_threads)};
            py::gil_scoped_release release;
            if (r.elem == Elem::F64) {
                graddrop::combine<double>(r, as<double>(weights), as<double>(leak), a);
            } else {
                graddrop::combine<float>(r, as<float>(weights), as<float>(leak), a);
            }
        },
        py::arg("rows"), py::arg("numel"), py::arg("dtype"), py::arg("weights"), py::arg("leak"),
        py::arg("sums"), py::arg("columns"), py::arg("signs"), py::arg("uniform"), py::arg("out"), py::arg("out_dtype"), py::arg("accumulate"),
        py::arg("eps"), py::arg("num_threads"),
        R"doc(out (+)= sum_t (leak_t + (1 - leak_t) M_t) weights_t rows[t], GradDrop's sign
dropout (csrc/graddrop.h), with the sign purity from `sums` (T x columns) or, when sums is 0,
per element.)doc");
}

}  // namespace mtl_fast
