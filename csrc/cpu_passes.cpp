// Runtime dispatch and pybind11 bindings of the native CPU passes (cpu_passes.h):
//
//   mtl_fast._C.gram_rows(rows, numel, dtype, out, out_dtype, num_threads) -> list[int]
//   mtl_fast._C.combine_rows(rows, numel, dtype, weights, weights_dtype, out, out_dtype,
//                            accumulate, num_threads) -> None
//   mtl_fast._C.cpu_isa() -> str;  mtl_fast._C.set_cpu_isa(name | None);  cpu_isas() -> list[str]
//
// The arrays cross as raw addresses (a CPU tensor's data_ptr(); the extension is not linked
// against libtorch and NumPy has no bfloat16): `rows` holds T addresses of D contiguous elements
// each, `out` the output's.  The caller (mtl_fast/_native_passes.py) guarantees that they are live,
// of the stated dtype and size, and not written meanwhile; only names and sizes are checked here.
// Dtype names are torch's: "float32", "float64", "bfloat16", "float16".  The kernels run with the
// GIL released.
//
// Instruction set: the best the running CPU supports among those compiled in (avx512 > avx2 >
// portable), unless $MTL_FAST_CPU_ISA names another at import or set_cpu_isa forces one.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "cpu_dispatch.h"
#include "cpu_passes.h"

namespace py = pybind11;

namespace mtl_fast {
namespace cpu {
namespace {

bool cpu_has(const char* isa) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const std::string s(isa);
    if (s == "avx512") return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
    if (s == "avx2") {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    }
    return false;
#else
    (void)isa;
    return false;
#endif
}

// The instruction sets compiled in and supported by this CPU, best first.
std::vector<const Kernels*> usable() {
    std::vector<const Kernels*> v;
    if (cpu::kernels_avx512() != nullptr && cpu_has("avx512")) v.push_back(cpu::kernels_avx512());
    if (cpu::kernels_avx2() != nullptr && cpu_has("avx2")) v.push_back(cpu::kernels_avx2());
    v.push_back(cpu::kernels_portable());
    return v;
}

const Kernels* find(const std::string& name) {
    for (const Kernels* k : usable()) {
        if (name == k->name) return k;
    }
    std::string names;
    for (const Kernels* k : usable()) names += (names.empty() ? "" : ", ") + std::string(k->name);
    throw py::value_error("instruction set '" + name + "' is not available on this CPU/build; " +
                          "choose one of: " + names);
}

const Kernels* initial() {
    const char* env = std::getenv("MTL_FAST_CPU_ISA");
    if (env != nullptr && *env != '\0') return find(env);
    return usable().front();
}

const Kernels*& current() {
    static const Kernels* k = nullptr;
    return k;
}

}  // namespace

const Kernels& active() {
    if (current() == nullptr) current() = initial();
    return *current();
}

Elem elem_of(const std::string& name, const char* what) {
    if (name == "float32") return Elem::F32;
    if (name == "float64") return Elem::F64;
    if (name == "bfloat16") return Elem::BF16;
    if (name == "float16") return Elem::F16;
    throw py::value_error(std::string(what) +
                          " must be one of float32, float64, bfloat16, float16; got " + name);
}

std::size_t elem_bytes(Elem e) { return (e == Elem::F32) ? 4 : (e == Elem::F64) ? 8 : 2; }

std::vector<const void*> row_pointers(const std::vector<std::uintptr_t>& rows) {
    if (rows.empty()) throw py::value_error("rows must hold at least one address");
    std::vector<const void*> p(rows.size());
    for (std::size_t t = 0; t < rows.size(); ++t) {
        if (rows[t] == 0) throw py::value_error("rows[" + std::to_string(t) + "] is null");
        p[t] = reinterpret_cast<const void*>(rows[t]);
    }
    return p;
}

int threads(int n) { return n < 1 ? 1 : n; }

void gram_f64(const Kernels& k, const void* const* rows, std::size_t T, std::size_t D, Elem e,
              double* G, int num_threads) {
    const GramPlan plan = gram_plan(T, D, elem_bytes(e));
    std::vector<double> scratch(plan.chunks > 1 ? plan.chunks * T * T : 0);
    k.gram(GramArgs{rows, T, D, e, G, scratch.data(), threads(num_threads)});
}

void combine_weights(const Kernels& k, const void* const* rows, std::size_t T, std::size_t D,
                     Elem e, const double* weights, void* out, Elem out_elem, bool accumulate,
                     int num_threads) {
    std::vector<std::size_t> kept;
    std::vector<double> w;
    for (std::size_t t = 0; t < T; ++t) {
        if (weights[t] != 0.0) {  // skipped, not multiplied: the row may hold NaN
            kept.push_back(t);
            w.push_back(weights[t]);
        }
    }
    const bool stream = out_elem == Elem::F32 && !accumulate && D * 4 >= COMBINE_STREAM_BYTES;
    k.combine(CombineArgs{rows, T, D, e, kept.data(), w.data(), kept.size(), out, out_elem,
                          accumulate, threads(num_threads), stream});
}

}  // namespace cpu

void register_cpu_passes(py::module_& m) {
    m.def(
        "gram_rows",
        [](const std::vector<std::uintptr_t>& rows, std::size_t numel, const std::string& dtype,
           std::uintptr_t out, const std::string& out_dtype, int num_threads) {
            using namespace cpu;
            const std::vector<const void*> p = row_pointers(rows);
            const Elem e = elem_of(dtype, "dtype");
            const Elem oe = elem_of(out_dtype, "out_dtype");
            if (oe != Elem::F32 && oe != Elem::F64) {
                throw py::value_error("out_dtype must be float32 or float64; got " + out_dtype);
            }
            if (numel == 0) throw py::value_error("numel must be >= 1");
            if (out == 0) throw py::value_error("out is null");
            const std::size_t T = p.size();
            std::vector<double> G(T * T);
            const Kernels& k = active();
            {
                py::gil_scoped_release release;
                gram_f64(k, p.data(), T, numel, e, G.data(), num_threads);
                if (oe == Elem::F64) {
                    std::copy(G.begin(), G.end(), reinterpret_cast<double*>(out));
                } else {
                    float* o = reinterpret_cast<float*>(out);
                    for (std::size_t i = 0; i < T * T; ++i) o[i] = static_cast<float>(G[i]);
                }
            }
            // G_tt = |g_t|^2 is NaN/Inf exactly when g_t holds a NaN/Inf or its norm overflows.
            std::vector<std::size_t> bad;
            for (std::size_t t = 0; t < T; ++t) {
                if (!std::isfinite(G[t * T + t])) bad.push_back(t);
            }
            return bad;
        },
        py::arg("rows"), py::arg("numel"), py::arg("dtype"), py::arg("out"),
        py::arg("out_dtype"), py::arg("num_threads"),
        R"doc(Gram matrix of T rows read in place; writes T x T into `out`, returns the tasks
whose diagonal entry is non-finite (see csrc/cpu_passes.h for the accumulation contract).)doc");

    m.def(
        "combine_rows",
        [](const std::vector<std::uintptr_t>& rows, std::size_t numel, const std::string& dtype,
           std::uintptr_t weights, const std::string& weights_dtype, std::uintptr_t out,
           const std::string& out_dtype, bool accumulate, int num_threads) {
            using namespace cpu;
            const std::vector<const void*> p = row_pointers(rows);
            const Elem e = elem_of(dtype, "dtype");
            const Elem we = elem_of(weights_dtype, "weights_dtype");
            const Elem oe = elem_of(out_dtype, "out_dtype");
            if (we != Elem::F32 && we != Elem::F64) {
                throw py::value_error("weights_dtype must be float32 or float64; got " +
                                      weights_dtype);
            }
            if (numel == 0) throw py::value_error("numel must be >= 1");
            if (out == 0 || weights == 0) throw py::value_error("out and weights must be non-null");
            std::vector<double> w(p.size());
            for (std::size_t t = 0; t < p.size(); ++t) {
                w[t] = we == Elem::F32 ? reinterpret_cast<const float*>(weights)[t]
                                       : reinterpret_cast<const double*>(weights)[t];
            }
            const Kernels& k = active();
            py::gil_scoped_release release;
            combine_weights(k, p.data(), p.size(), numel, e, w.data(),
                            reinterpret_cast<void*>(out), oe, accumulate, num_threads);
        },
        py::arg("rows"), py::arg("numel"), py::arg("dtype"), py::arg("weights"),
        py::arg("weights_dtype"), py::arg("out"), py::arg("out_dtype"), py::arg("accumulate"),
        py::arg("num_threads"),
        R"doc(out (+)= sum_t w_t rows[t] over the rows with a non-zero weight, accumulated in
float32 (float64 for float64 rows), rounded once to out's dtype.)doc");

    m.def(
        "cpu_isa", []() { return std::string(cpu::active().name); },
        "The instruction set the CPU passes use now: 'avx512', 'avx2' or 'portable'.");
    m.def(
        "cpu_isas",
        []() {
            std::vector<std::string> names;
            for (const cpu::Kernels* k : cpu::usable()) names.emplace_back(k->name);
            return names;
        },
        "The instruction sets compiled in and supported by this CPU, best first.");
    m.def(
        "set_cpu_isa",
        [](const std::optional<std::string>& name) {
            cpu::current() = name ? cpu::find(*name) : cpu::usable().front();
        },
        py::arg("name"),
        "Force an instruction set for the CPU passes ('portable' always exists); None: the best.");
}

}  // namespace mtl_fast
