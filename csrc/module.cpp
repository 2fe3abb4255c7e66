// Entry point of the extension module mtl_fast._C.
//
// The extension is built with pybind11 only (no libtorch), so one binary serves every torch
// version; arrays cross the boundary through the buffer protocol.  Each component registers its
// bindings from its own translation unit through a function declared in bindings.h.
#include <pybind11/pybind11.h>

#include "bindings.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "mtl_fast native extension (pybind11, not linked against libtorch)";
    m.attr("__build_info__") = py::dict(
        py::arg("compiler") = py::str(
#if defined(__clang__)
            "clang " __clang_version__
#elif defined(__GNUC__)
            "gcc " __VERSION__
#else
            "unknown"
#endif
            ),
        py::arg("cxx_standard") = py::int_(__cplusplus));
    mtl_fast::register_all(m);
}
