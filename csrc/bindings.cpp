#include "bindings.h"

namespace mtl_fast {

void register_all(pybind11::module_& m) {
    // Components add their register_* calls here (see bindings.h).
    register_welford(m);
    register_solvers(m);
    register_cpu_passes(m);
    register_graddrop(m);
}

}  // namespace mtl_fast
