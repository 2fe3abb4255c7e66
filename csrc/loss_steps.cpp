// Per-step formulas of loss-based methods for CPU losses, one native call each (the torch
// functional cores in mtl_fast/methods/ are the specification; the methods call these only for
// CPU losses on one process, and tests/methods/ checks both against the same oracles):
//
//   mtl_fast._C.cv_step(stats, losses, present, current_denominator, variance_eps,
//                       denominator_floor) -> weights
//       CV-Weighting (Groenendijk et al. 2021, mtl_fast/methods/cv.py), one training step on the
//       2T-stream accumulator `stats` (a Welford: streams [0, T) the loss ratios, [T, 2T) the raw
//       losses): the loss ratios l_i = L_i / mu_{L_i} (eq. 3; 1 at a task's first observation or
//       a zero mean), the weights alpha (eq. 4-5, c_i = sqrt(var_{l_i} + eps) / max(d_i, floor),
//       d_i the ratios' running mean or, current_denominator, l_i; normalised over the present
//       tasks; equal until every present task has two ratios) from the statistics BEFORE this
//       step, then the update of both statistics with (l, L) on the present tasks.
//
//   mtl_fast._C.famo_logit_step(logits, exp_avg, exp_avg_sq, updates, delta, present, lr, gamma,
//                               adam, beta1, beta2, adam_eps) -> (logits, exp_avg, exp_avg_sq,
//                               updates)
//       FAMO (Liu et al. 2023, mtl_fast/methods/famo.py, _logit_step): the gradient
//       d + gamma xi with d_t = z_t (delta_t - sum_s z_s delta_s), z the softmax of xi over the
//       present tasks, then the SGD step or Adam's (coupled decay, per-task step counts), only on
//       the present tasks; new arrays (the inputs are not modified).
//   mtl_fast._C.famo_factors(logits, d, present) -> factors
//       w_t = z_t / (c D_t), c = sum_s z_s / D_s over the present tasks (0 for absent ones).
//
// Arrays are float64 / bool NumPy arrays of T entries (C-contiguous; `present` may be None: every
// task).  The formulas are those of cv.py's loss_ratios, cv_weights and normalize_over_present,
// in float64, summed in task order.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "welford.h"

namespace py = pybind11;

namespace mtl_fast {
namespace {

using F64 = py::array_t<double, py::array::c_style>;
using Bool = py::array_t<bool, py::array::c_style>;

const double* values_of(const py::object& obj, std::size_t T, const char* what, F64& keep) {
    keep = F64::ensure(obj);
    if (!keep || keep.ndim() != 1 || static_cast<std::size_t>(keep.shape(0)) != T ||
        !py::isinstance<F64>(obj)) {
        throw py::value_error(std::string(what) + " must be a float64 array of " +
                              std::to_string(T) + " values");
    }
    return keep.data();
}

const bool* mask_of(const py::object& obj, std::size_t T, Bool& keep) {
    if (obj.is_none()) return nullptr;
    keep = Bool::ensure(obj);
    if (!keep || keep.ndim() != 1 || static_cast<std::size_t>(keep.shape(0)) != T ||
        !py::isinstance<Bool>(obj)) {
        throw py::value_error("present must be None or a bool array of " + std::to_string(T) +
                              " values");
    }
    return keep.data();
}

// w_t = v_t / sum_{s present} v_s over the present tasks, 0 elsewhere; all 0 when the sum is not
// positive (normalize_over_present).
void normalise_over_present(std::vector<double>& v, const bool* present) {
    double total = 0.0;
    for (std::size_t t = 0; t < v.size(); ++t) {
        if (present != nullptr && !present[t]) v[t] = 0.0;
        total += v[t];
    }
    for (double& x : v) x = total > 0 ? x / total : 0.0;
}

py::array_t<double> cv_step(Welford& stats, const py::object& losses, const py::object& present,
                            bool current_denominator, double variance_eps,
                            double denominator_floor) {
    const std::size_t T = stats.num_streams() / 2;
    if (T == 0 || stats.num_streams() != 2 * T) {
        throw py::value_error("stats must hold 2T streams (loss ratios, then raw losses)");
    }
    F64 keep_l;
    Bool keep_p;
    const double* L = values_of(losses, T, "losses", keep_l);
    const bool* p = mask_of(present, T, keep_p);
    const std::vector<std::int64_t>& count = stats.count();
    const std::vector<double>& mean = stats.mean();
    std::vector<double> x(2 * T);
    std::vector<std::uint8_t> sel(2 * T);
    std::vector<double> c(T), ones(T, 1.0);
    bool ready = true;
    for (std::size_t t = 0; t < T; ++t) {
        const bool ok = count[T + t] > 0 && mean[T + t] > 0;
        const double ratio = ok ? L[t] / mean[T + t] : 1.0;  // eq. 3
        const double denom = current_denominator ? ratio : mean[t];
        c[t] = std::sqrt(stats.var(t) + variance_eps) / std::max(denom, denominator_floor);
        const bool here = p == nullptr || p[t];
        ready = ready && (count[t] >= 2 || !here);
        x[t] = ratio;
        x[T + t] = L[t];
        sel[t] = sel[T + t] = here ? 1 : 0;
    }
    std::vector<double>& w = ready ? c : ones;
    normalise_over_present(w, p);
    if (stats.update(x.data(), sel.data()) != 0 && !stats.skip_nonfinite()) {
        throw py::value_error("cv_step: non-finite loss or ratio; nothing was updated");
    }
    py::array_t<double> out(static_cast<py::ssize_t>(T));
    double* o = out.mutable_data();
    for (std::size_t t = 0; t < T; ++t) o[t] = w[t];
    return out;
}

// z = softmax of x over the present tasks (0 elsewhere; all 0 when none is present).
std::vector<double> softmax_over_present(const double* x, const bool* p, std::size_t T) {
    double top = -INFINITY;
    for (std::size_t t = 0; t < T; ++t) {
        if (p == nullptr || p[t]) top = std::max(top, x[t]);
    }
    std::vector<double> z(T, 0.0);
    if (top == -INFINITY) return z;
    double total = 0.0;
    for (std::size_t t = 0; t < T; ++t) {
        if (p == nullptr || p[t]) {
            z[t] = std::exp(x[t] - top);
            total += z[t];
        }
    }
    for (double& v : z) v /= total;
    return z;
}

py::array_t<double> new_f64(const std::vector<double>& v) {
    py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

py::tuple famo_logit_step(const py::object& logits, const py::object& exp_avg,
                          const py::object& exp_avg_sq, const py::object& updates,
                          const py::object& delta, const py::object& present, double lr,
                          double gamma, bool adam, double beta1, double beta2, double adam_eps) {
    F64 k_xi, k_m, k_v, k_d;
    Bool k_p;
    const py::array_t<std::int64_t, py::array::c_style> n_in =
        py::array_t<std::int64_t, py::array::c_style>::ensure(updates);
    if (!n_in || n_in.ndim() != 1 || !py::isinstance<py::array_t<std::int64_t>>(updates)) {
        throw py::value_error("updates must be an int64 array");
    }
    const std::size_t T = static_cast<std::size_t>(n_in.shape(0));
    const double* xi = values_of(logits, T, "logits", k_xi);
    const double* m = values_of(exp_avg, T, "exp_avg", k_m);
    const double* v = values_of(exp_avg_sq, T, "exp_avg_sq", k_v);
    const double* dl = values_of(delta, T, "delta", k_d);
    const bool* p = mask_of(present, T, k_p);
    const std::int64_t* n0 = n_in.data();
    const std::vector<double> z = softmax_over_present(xi, p, T);
    double zd = 0.0;
    for (std::size_t t = 0; t < T; ++t) zd += z[t] * ((p == nullptr || p[t]) ? dl[t] : 0.0);
    std::vector<double> xi_new(xi, xi + T), m_new(m, m + T), v_new(v, v + T);
    py::array_t<std::int64_t> n_out(static_cast<py::ssize_t>(T));
    std::int64_t* n = n_out.mutable_data();
    for (std::size_t t = 0; t < T; ++t) {
        const bool here = p == nullptr || p[t];
        n[t] = n0[t] + (here ? 1 : 0);
        if (!here) continue;
        const double grad = z[t] * (dl[t] - zd) + gamma * xi[t];
        if (!adam) {
            xi_new[t] = xi[t] - lr * grad;
            continue;
        }
        const double w = 1.0 - beta1;  // torch.lerp(m, grad, w), w < 0.5: m + w (grad - m)
        const double mt = w < 0.5 ? m[t] + w * (grad - m[t]) : grad - (grad - m[t]) * (1.0 - w);
        const double vt = v[t] * beta2 + (1.0 - beta2) * grad * grad;
        const double nf = static_cast<double>(std::max<std::int64_t>(n[t], 1));
        const double bc1 = 1.0 - std::pow(beta1, nf);
        const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, nf));
        const double denom = std::sqrt(vt) / bc2_sqrt + adam_eps;
        xi_new[t] = xi[t] - (lr / bc1) * mt / denom;
        m_new[t] = mt;
        v_new[t] = vt;
    }
    return py::make_tuple(new_f64(xi_new), new_f64(m_new), new_f64(v_new), n_out);
}

py::array_t<double> famo_factors(const py::object& logits, const py::object& d,
                                 const py::object& present) {
    F64 k_xi, k_d;
    Bool k_p;
    const F64 probe = F64::ensure(logits);
    if (!probe || probe.ndim() != 1) throw py::value_error("logits must be a float64 array");
    const std::size_t T = static_cast<std::size_t>(probe.shape(0));
    const double* xi = values_of(logits, T, "logits", k_xi);
    const double* D = values_of(d, T, "d", k_d);
    const bool* p = mask_of(present, T, k_p);
    const std::vector<double> z = softmax_over_present(xi, p, T);
    double c = 0.0;
    for (std::size_t t = 0; t < T; ++t) {
        if (p == nullptr || p[t]) c += z[t] / D[t];
    }
    std::vector<double> w(T, 0.0);
    const double cc = c > 0 ? c : 1.0;
    for (std::size_t t = 0; t < T; ++t) {
        if (p == nullptr || p[t]) w[t] = z[t] / cc / D[t];
    }
    return new_f64(w);
}

}  // namespace

void register_loss_steps(py::module_& m) {
    m.def("cv_step", &cv_step, py::arg("stats"), py::arg("losses"), py::arg("present"),
          py::arg("current_denominator"), py::arg("variance_eps"), py::arg("denominator_floor"),
          R"doc(One CV-Weighting step on CPU losses: the weights from the statistics before the
step, then the statistics updated with the step's loss ratios and losses (see
csrc/loss_steps.cpp).)doc");
    m.def("famo_logit_step", &famo_logit_step, py::arg("logits"), py::arg("exp_avg"),
          py::arg("exp_avg_sq"), py::arg("updates"), py::arg("delta"), py::arg("present"),
          py::arg("lr"), py::arg("gamma"), py::arg("adam"), py::arg("beta1"), py::arg("beta2"),
          py::arg("adam_eps"),
          "FAMO's logit step on the present tasks; new (logits, exp_avg, exp_avg_sq, updates).");
    m.def("famo_factors", &famo_factors, py::arg("logits"), py::arg("d"), py::arg("present"),
          "FAMO's loss factors z_t / (c D_t) over the present tasks.");
}

}  // namespace mtl_fast
