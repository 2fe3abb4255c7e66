// pybind11 bindings of mtl_fast::Welford (welford.h) as mtl_fast._C.Welford.
//
// Inputs cross as NumPy arrays (anything np.asarray accepts: lists, buffer-protocol objects,
// CPU tensors' .numpy()).  Values must be 1-D with a real floating or integer dtype and are
// converted to contiguous float64 (a copy unless they already are: non-contiguous input is
// copied, not rejected); masks must be 1-D bool.  Every validation error is a ValueError.
// The arithmetic runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "welford.h"

namespace py = pybind11;

namespace mtl_fast {
namespace {

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
using BoolArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// `obj` as a 1-D NumPy array of `k` entries whose dtype kind is in `kinds`; ValueError otherwise.
py::array checked_array(const py::object& obj, std::size_t k, const char* what,
                        const std::string& kinds, const char* kinds_text) {
    py::array a = py::array::ensure(obj);
    if (!a) {
        throw py::value_error(std::string(what) + " could not be converted to a NumPy array");
    }
    if (a.ndim() != 1) {
        throw py::value_error(std::string(what) + " must be 1-D, got " +
                              std::to_string(a.ndim()) + " dimensions");
    }
    if (static_cast<std::size_t>(a.shape(0)) != k) {
        throw py::value_error(std::string(what) + " has length " + std::to_string(a.shape(0)) +
                              ", expected num_streams = " + std::to_string(k));
    }
    if (kinds.find(a.dtype().kind()) == std::string::npos) {
        throw py::value_error(std::string(what) + " must have " + kinds_text + " dtype, got " +
                              std::string(py::str(a.dtype())));
    }
    return a;
}

F64Array as_values(const py::object& obj, std::size_t k) {
    return F64Array::ensure(checked_array(obj, k, "values", "fiu", "a real floating or integer"));
}

std::optional<BoolArray> as_mask(const py::object& obj, std::size_t k) {
    if (obj.is_none()) {
        return std::nullopt;
    }
    return BoolArray::ensure(checked_array(obj, k, "mask", "b", "a bool"));
}

const std::uint8_t* mask_data(const std::optional<BoolArray>& mask) {
    return mask ? reinterpret_cast<const std::uint8_t*>(mask->data()) : nullptr;
}

template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
    py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) {
        std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(T));
    }
    return out;
}

py::array_t<bool> flags_to_numpy(const std::vector<std::uint8_t>& v) {
    py::array_t<bool> out(static_cast<py::ssize_t>(v.size()));
    bool* p = out.mutable_data();
    for (std::size_t i = 0; i < v.size(); ++i) {
        p[i] = v[i] != 0;
    }
    return out;
}

template <typename F>
py::array_t<double> per_stream(const Welford& w, F f) {
    py::array_t<double> out(static_cast<py::ssize_t>(w.num_streams()));
    double* p = out.mutable_data();
    for (std::size_t k = 0; k < w.num_streams(); ++k) {
        p[k] = f(k);
    }
    return out;
}

// "[0, 3, 7]"; at most 20 indices, then "... (N in total)".
std::string format_indices(const std::vector<std::uint8_t>& flags) {
    std::string s = "[";
    std::size_t shown = 0;
    std::size_t total = 0;
    for (std::size_t k = 0; k < flags.size(); ++k) {
        if (flags[k] == 0) {
            continue;
        }
        ++total;
        if (shown < 20) {
            s += (shown == 0 ? "" : ", ") + std::to_string(k);
            ++shown;
        }
    }
    if (total > shown) {
        s += ", ... (" + std::to_string(total) + " in total)";
    }
    return s + "]";
}

}  // namespace

void register_welford(py::module_& m) {
    py::class_<Welford>(m, "Welford", R"doc(
Running mean / variance of K independent float64 streams (see mtl_fast.running_stats).

Welford(num_streams, decay=None, decay_variance=True, nonfinite="raise")
)doc")
        .def(py::init([](std::int64_t num_streams, std::optional<double> decay,
                         bool decay_variance, const std::string& nonfinite) {
                 if (nonfinite != "raise" && nonfinite != "skip") {
                     throw py::value_error("nonfinite must be 'raise' or 'skip', got '" +
                                           nonfinite + "'");
                 }
                 return Welford(num_streams, decay, decay_variance, nonfinite == "skip");
             }),
             py::arg("num_streams"), py::arg("decay") = py::none(),
             py::arg("decay_variance") = true, py::arg("nonfinite") = "raise")
        .def(
            "update",
            [](Welford& self, const py::object& values, const py::object& mask) {
                const F64Array x = as_values(values, self.num_streams());
                const std::optional<BoolArray> sel = as_mask(mask, self.num_streams());
                const double* xp = x.data();
                const std::uint8_t* mp = mask_data(sel);
                std::size_t bad = 0;
                {
                    py::gil_scoped_release nogil;
                    bad = self.update(xp, mp);
                }
                if (bad != 0 && !self.skip_nonfinite()) {
                    throw py::value_error(
                        "non-finite value(s) (NaN/Inf) in stream(s) " +
                        format_indices(self.last_nonfinite()) +
                        "; nothing was updated (use nonfinite='skip' to leave only those "
                        "streams unchanged)");
                }
                return bad;
            },
            py::arg("values"), py::arg("mask") = py::none(),
            "One step for the selected streams; returns the number of selected non-finite "
            "values.")
        .def(
            "merge", [](Welford& self, const Welford& other) { self.merge(other); },
            py::arg("other"), "Chan et al. (1979) combination of another accumulator into this.")
        .def(
            "reset",
            [](Welford& self, const py::object& mask) {
                const std::optional<BoolArray> sel = as_mask(mask, self.num_streams());
                self.reset(mask_data(sel));
            },
            py::arg("mask") = py::none())
        .def("get_state",
             [](const Welford& self) {
                 return py::make_tuple(to_numpy(self.count()), to_numpy(self.mean()),
                                       to_numpy(self.m2()));
             },
             "(count int64, mean float64, m2 float64) as new arrays.")
        .def(
            "set_state",
            [](Welford& self, const py::object& count, const py::object& mean,
               const py::object& m2) {
                const std::size_t k = self.num_streams();
                const I64Array c = I64Array::ensure(
                    checked_array(count, k, "count", "iu", "an integer"));
                const F64Array mu = F64Array::ensure(
                    checked_array(mean, k, "mean", "fiu", "a real floating or integer"));
                const F64Array s = F64Array::ensure(
                    checked_array(m2, k, "m2", "fiu", "a real floating or integer"));
                self.set_state(c.data(), mu.data(), s.data());
            },
            py::arg("count"), py::arg("mean"), py::arg("m2"))
        .def("mean", [](const Welford& w) { return to_numpy(w.mean()); })
        .def("m2", [](const Welford& w) { return to_numpy(w.m2()); })
        .def("count", [](const Welford& w) { return to_numpy(w.count()); })
        .def("var",
             [](const Welford& w) { return per_stream(w, [&](std::size_t k) { return w.var(k); }); })
        .def("sample_var",
             [](const Welford& w) {
                 return per_stream(w, [&](std::size_t k) { return w.sample_var(k); });
             })
        .def("last_nonfinite", [](const Welford& w) { return flags_to_numpy(w.last_nonfinite()); })
        .def_property_readonly("num_streams", &Welford::num_streams)
        .def_property_readonly("decay", [](const Welford& w) { return w.decay(); })
        .def_property_readonly("decay_variance", &Welford::decay_variance)
        .def_property_readonly("nonfinite", [](const Welford& w) {
            return std::string(w.skip_nonfinite() ? "skip" : "raise");
        });
}

}  // namespace mtl_fast
