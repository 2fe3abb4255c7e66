// Gram-space weight solves for small T on the CPU: IMTL-G and exact MGDA.
//
// Pure C++17, no Python, no LAPACK: the pybind11 bindings live in solvers.cpp.  These are the
// algorithms of the reference mtl_fast/reference/solve.py (the specification), step for step,
// written with plain loops so that a T <= 256 solve costs microseconds instead of the hundreds of
// PyTorch ops (each ~5-10 us of dispatch) of the reference.  Results agree with the reference up
// to rounding (the order of floating-point sums differs); tests/test_native_solvers.py checks it.
//
// Input: G, the T x T Gram matrix G = J J^T of the task gradients (row-major float64).
// Output: the task weights alpha[T] (float64).
//
// Degenerate input is treated as in the reference:
//   * a task whose G_tt is 0 or not finite, or whose row holds a non-finite entry against an
//     active task, is *inactive*: weight 0, and the others are solved as if it were absent;
//   * dependent gradients (duplicates, T > D) are solved in the pseudo-inverse sense;
//   * T = 1 gives [1]; an all-zero G gives all zeros.
//
// Floating-point sums use several independent partial sums (the compiler may not reassociate them
// itself), so a dot product is not latency bound.  Matrix-vector products skip zero entries of
// the vector (exact: they add nothing), which makes products with sparse simplex points cheap.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <vector>

// On x86-64 with GCC/clang the two entry points are compiled twice, for AVX2 and for the baseline
// ISA, with every helper inlined into each copy (`flatten`); the loader picks one per CPU (ifunc).
// Both copies do the same IEEE operations (no FMA contraction: -ffp-contract=off; no
// reassociation), so the results are bitwise identical on every CPU.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define MTL_FAST_SOLVER_ENTRY __attribute__((flatten, target_clones("avx2", "default")))
#else
#define MTL_FAST_SOLVER_ENTRY
#endif

namespace mtl_fast {
namespace solvers {

// The options hold no values of their own: every tolerance, iteration count and floor comes from
// the caller, i.e. from mtl_fast/_solve_constants.py (the one source the reference and the Triton
// kernels read too) through the bindings in solvers.cpp.
struct PinvOptions {
    // Shift eps = rel_eps * sqrt(T) (PINV_REL_EPS, by the precision G was accumulated in).
    double rel_eps;
    double fallback_factor;  // PINV_FALLBACK_FACTOR: eps *= this if Cholesky fails
    int steps;               // PINV_STEPS: k, iterated-Tikhonov steps
    int projections;         // PINV_PROJECTIONS: p, range projections
};

struct ImtlGOptions {
    PinvOptions pinv;
    double sum_rel_tol;  // SUM_REL_TOL: normalise by sum|alpha| when |sum alpha| <= this * sum|alpha|
};

struct MgdaOptions {
    int apg_iters;            // MGDA_APG_ITERS: accelerated-projected-gradient warm start
    int power_iters;          // MGDA_POWER_ITERS: power iterations for lambda_max(M)
    double lipschitz_safety;  // MGDA_LIPSCHITZ_SAFETY: APG step 1 / (this * lambda_max)
    double support_rel;       // MGDA_SUPPORT_REL: warm-start entries kept in the corral
    double drop_tol;          // MGDA_DROP_TOL: corral coefficients <= this are dropped
    double ridge;             // MGDA_RIDGE: ridge of the affine minimiser, * max_t M_tt
    double tol;               // MGDA_TOL: Wolfe's stopping gap, * the largest active M_tt
    double division_floor;    // DIVISION_FLOOR: smallest divisor of a norm, sum or step ratio
    long max_iter;            // Wolfe's budget (mgda_budget(T) = 5 T + 20 from the dispatcher)
};

namespace detail {

constexpr double kTiny = std::numeric_limits<double>::min();  // torch.finfo(float64).tiny
constexpr double kBig = std::numeric_limits<double>::max();   // torch.finfo(float64).max
constexpr double kLow = std::numeric_limits<double>::lowest();

using Vec = std::vector<double>;
using Mask = std::vector<unsigned char>;

// Dense square matrix, row-major; the entries start uninitialised (every user writes them first).
struct Mat {
    std::size_t n = 0;
    std::unique_ptr<double[]> a;
    explicit Mat(std::size_t n_) : n(n_), a(new double[n_ * n_]) {}
    double* data() { return a.get(); }
    double* row(std::size_t i) { return a.get() + i * n; }
    const double* row(std::size_t i) const { return a.get() + i * n; }
    double& operator()(std::size_t i, std::size_t j) { return a[i * n + j]; }
    double operator()(std::size_t i, std::size_t j) const { return a[i * n + j]; }
};

// A^T, in 16 x 16 tiles (a column-by-column copy misses the cache on every write).
inline Mat transposed(const Mat& A) {
    constexpr std::size_t kTile = 16;
    const std::size_t n = A.n;
    Mat B(n);
    for (std::size_t i0 = 0; i0 < n; i0 += kTile) {
        const std::size_t i1 = std::min(i0 + kTile, n);
        for (std::size_t j0 = 0; j0 < n; j0 += kTile) {
            const std::size_t j1 = std::min(j0 + kTile, n);
            for (std::size_t i = i0; i < i1; ++i) {
                for (std::size_t j = j0; j < j1; ++j) {
                    B(j, i) = A(i, j);
                }
            }
        }
    }
    return B;
}

// G == G^T exactly (compared in 16 x 16 tiles; stops at the first difference).  A Gram matrix
// usually is: the transpose used by the matrix-vector products is then G itself.
inline bool is_symmetric(const double* G, std::size_t n) {
    constexpr std::size_t kTile = 16;
    for (std::size_t i0 = 0; i0 < n; i0 += kTile) {
        const std::size_t i1 = std::min(i0 + kTile, n);
        for (std::size_t j0 = i0; j0 < n; j0 += kTile) {
            const std::size_t j1 = std::min(j0 + kTile, n);
            bool same = true;
            for (std::size_t i = i0; i < i1; ++i) {
                for (std::size_t j = j0; j < j1; ++j) {
                    same &= G[i * n + j] == G[j * n + i];
                }
            }
            if (!same) {
                return false;
            }
        }
    }
    return true;
}

// sum_k x_k y_k with four independent partial sums.
inline double dot(const double* x, const double* y, std::size_t n) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    std::size_t k = 0;
    for (; k + 4 <= n; k += 4) {
        s0 += x[k] * y[k];
        s1 += x[k + 1] * y[k + 1];
        s2 += x[k + 2] * y[k + 2];
        s3 += x[k + 3] * y[k + 3];
    }
    for (; k < n; ++k) {
        s0 += x[k] * y[k];
    }
    return (s0 + s1) + (s2 + s3);
}

inline double sum(const Vec& x) {
    double s0 = 0.0, s1 = 0.0;
    std::size_t k = 0;
    for (; k + 2 <= x.size(); k += 2) {
        s0 += x[k];
        s1 += x[k + 1];
    }
    if (k < x.size()) {
        s0 += x[k];
    }
    return s0 + s1;
}

// y += a x
inline void axpy(double a, const double* x, double* y, std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
        y[k] += a * x[k];
    }
}

// out = A v, given At = A^T (a column of A is a contiguous row of At): out = sum_j v_j A[:, j],
// four columns per pass over out.  Zero entries of v are skipped (they add nothing).
inline void matvec_t(const Mat& At, const Vec& v, Vec& out) {
    const std::size_t n = At.n;
    std::fill(out.begin(), out.end(), 0.0);
    double* o = out.data();
    std::size_t cols[4];
    std::size_t m = 0;
    for (std::size_t j = 0; j < n; ++j) {
        if (v[j] == 0.0) {
            continue;
        }
        cols[m++] = j;
        if (m == 4) {
            const double a0 = v[cols[0]], a1 = v[cols[1]], a2 = v[cols[2]], a3 = v[cols[3]];
            const double *c0 = At.row(cols[0]), *c1 = At.row(cols[1]), *c2 = At.row(cols[2]),
                         *c3 = At.row(cols[3]);
            for (std::size_t i = 0; i < n; ++i) {
                o[i] += (a0 * c0[i] + a1 * c1[i]) + (a2 * c2[i] + a3 * c3[i]);
            }
            m = 0;
        }
    }
    for (std::size_t c = 0; c < m; ++c) {
        axpy(v[cols[c]], At.row(cols[c]), o, n);
    }
}

// torch.nan_to_num: NaN -> 0, +-inf -> +-largest finite.
inline double nan_to_num(double x) {
    if (std::isnan(x)) {
        return 0.0;
    }
    if (std::isinf(x)) {
        return x > 0 ? kBig : kLow;
    }
    return x;
}

// ------------------------------------------------------------------------------------------
// Shared preprocessing (reference: active_tasks, _masked, unit_gram)
// ------------------------------------------------------------------------------------------

// Task t is active iff G_tt is finite and > 0 and G_tj is finite for every j with a finite,
// positive G_jj (an entry against an inactive task, e.g. a NaN gradient, does not disqualify t).
inline Mask active_tasks(const double* G, std::size_t T) {
    Mask diag_ok(T), active(T);
    for (std::size_t i = 0; i < T; ++i) {
        const double d = G[i * T + i];
        diag_ok[i] = std::isfinite(d) && d > 0.0;
    }
    for (std::size_t i = 0; i < T; ++i) {
        const double* Gi = G + i * T;
        unsigned char bad = 0;  // a non-finite entry against a task with a healthy diagonal
        for (std::size_t j = 0; j < T; ++j) {
            const bool nonfinite = !(std::fabs(Gi[j]) <= kBig);
            bad |= static_cast<unsigned char>(static_cast<unsigned char>(nonfinite) & diag_ok[j]);
        }
        active[i] = diag_ok[i] && bad == 0;
    }
    return active;
}

// G with the rows/columns of inactive tasks replaced by those of the identity, and the entries
// of active pairs divided by divisor(i, j) (the entries of active pairs are finite by the
// definition of active, so the reference's nan_to_num does not change them).
template <typename Divisor>
inline Mat masked(const double* G, std::size_t T, const Mask& active, Divisor divisor) {
    Mat M(T);
    for (std::size_t i = 0; i < T; ++i) {
        const double* Gi = G + i * T;
        double* Mi = M.row(i);
        if (!active[i]) {
            std::fill(Mi, Mi + T, 0.0);
            Mi[i] = 1.0;
            continue;
        }
        for (std::size_t j = 0; j < T; ++j) {
            const double q = Gi[j] / divisor(i, j);
            Mi[j] = active[j] ? q : 0.0;
        }
    }
    return M;
}

// ------------------------------------------------------------------------------------------
// Cholesky factorisation and solves
// ------------------------------------------------------------------------------------------

// Lower-triangular L (row-major, zero above the diagonal) with A + shift I = L L^T, reading the
// lower triangle of A; column by column (left-looking), like LAPACK's unblocked potf2:
//
//     L_jj = sqrt(A_jj + shift - sum_{k<j} L_jk^2),
//     L_ij = (A_ij - sum_{k<j} L_ik L_jk) / L_jj          (i > j).
//
// Returns false when a pivot is not > 0 (or NaN); L then holds what LAPACK leaves in that case
// (what torch.linalg.cholesky_ex returns on the CPU): the finished columns, the failed pivot
// unsquared, and the untouched (shifted) entries of A in the remaining lower triangle.
inline bool cholesky(const Mat& A, double shift, Mat& L) {
    const std::size_t n = A.n;
    std::fill(L.data(), L.data() + n * n, 0.0);
    for (std::size_t j = 0; j < n; ++j) {
        const double* Lj = L.row(j);
        const double d = A(j, j) + shift - dot(Lj, Lj, j);
        if (!(d > 0.0)) {
            L(j, j) = d;
            for (std::size_t i = j + 1; i < n; ++i) {
                for (std::size_t c = j; c <= i; ++c) {
                    L(i, c) = A(i, c) + (c == i ? shift : 0.0);
                }
            }
            return false;
        }
        const double ljj = std::sqrt(d);
        L(j, j) = ljj;
        for (std::size_t i = j + 1; i < n; ++i) {
            L(i, j) = (A(i, j) - dot(L.row(i), Lj, j)) / ljj;
        }
    }
    return true;
}

// x with L L^T x = b (forward then backward substitution), in place on x (= b on entry).
inline void cholesky_solve(const Mat& L, Vec& x) {
    const std::size_t n = L.n;
    for (std::size_t i = 0; i < n; ++i) {  // L z = b
        x[i] = (x[i] - dot(L.row(i), x.data(), i)) / L(i, i);
    }
    for (std::size_t i = n; i-- > 0;) {  // L^T x = z, column-oriented: row i of L is column i of L^T
        x[i] /= L(i, i);
        axpy(-x[i], L.row(i), x.data(), i);
    }
}

// x ~ A^+ b for a symmetric positive semi-definite A with unit diagonal (reference:
// psd_pinv_solve).  One Cholesky factorisation of A + eps I, eps = rel_eps * sqrt(T).  With
// R = eps (A + eps I)^{-1}, whose eigenvalue on the eigenvector of A for lambda is
// r = eps / (lambda + eps), k = steps and p = projections:
//
//     x_k = (1/eps) sum_{j=1..k} R^j b      -> (1 - r^k) / lambda          (iterated Tikhonov)
//     x   = (I - R^k)^p x_k                 -> (1 - r^k)^{p+1} / lambda    (range projection)
//
// i.e. 1/lambda up to a relative bias ~(p+1)(eps/lambda)^k for lambda >> eps, and
// ~k^{p+1} lambda^p / eps^{p+1} -> 0 for lambda << eps: the null space of A (dependent gradients)
// and rounding noise are dropped as the Moore-Penrose pseudo-inverse drops them.  If the
// factorisation fails (A indefinite beyond eps), eps is multiplied by fallback_factor.
inline Vec psd_pinv_solve(const Mat& A, const Vec& b, const PinvOptions& opt) {
    const std::size_t n = A.n;
    double eps = opt.rel_eps * std::sqrt(static_cast<double>(n));
    Mat L(n);
    if (!cholesky(A, eps, L)) {
        eps = eps * opt.fallback_factor;
        cholesky(A, eps, L);  // used even if it fails too (as the reference does)
    }
    auto shrink = [&](Vec& y) {  // y <- R y
        cholesky_solve(L, y);
        for (double& v : y) {
            v = eps * v;
        }
    };
    Vec x(n, 0.0), y = b;
    for (int s = 0; s < opt.steps; ++s) {
        shrink(y);
        for (std::size_t i = 0; i < n; ++i) {
            x[i] += y[i];
        }
    }
    for (double& v : x) {
        v /= eps;
    }
    Vec z(n);
    for (int q = 0; q < opt.projections; ++q) {
        z = x;
        for (int s = 0; s < opt.steps; ++s) {
            shrink(z);
        }
        for (std::size_t i = 0; i < n; ++i) {
            x[i] -= z[i];
        }
    }
    return x;
}

// alpha / sum(alpha); by sum|alpha| when the sum vanishes (|sum| <= sum_rel_tol sum|alpha|); all
// zeros when sum|alpha| <= tiny or is NaN (reference: _normalise_sum).
inline void normalise_sum(Vec& alpha, double sum_rel_tol) {
    double total = 0.0, mass = 0.0;
    for (double v : alpha) {
        total += v;
        mass += std::fabs(v);
    }
    const double denom = std::fabs(total) > sum_rel_tol * mass ? total : mass;
    const bool ok = mass > kTiny;
    for (double& v : alpha) {
        v = ok ? v / denom : 0.0;
    }
}

// ------------------------------------------------------------------------------------------
// MGDA pieces
// ------------------------------------------------------------------------------------------

// Euclidean projection of v onto the simplex over the active coordinates (others 0); sort-based
// (Held, Wolfe & Crowder 1974): u = active v sorted decreasingly, rho = the largest k with
// u_k - (sum_{i<=k} u_i - 1)/k > 0, theta = (sum_{i<=rho} u_i - 1)/rho, out = max(v - theta, 0).
//
// `order` holds the active indices and is re-sorted by decreasing v in place, by insertion sort:
// successive projected-gradient points change the order little, so this is ~linear after the
// first call.  Only the sorted values matter, so ties and the sort algorithm do not change u.
inline void project_simplex(const Vec& v, const Mask& active, std::vector<std::size_t>& order,
                            Vec& out) {
    const std::size_t T = v.size();
    const std::size_t m = order.size();
    std::fill(out.begin(), out.end(), 0.0);
    if (m == 0) {
        return;
    }
    for (std::size_t a = 1; a < m; ++a) {
        const std::size_t idx = order[a];
        const double key = v[idx];
        std::size_t b = a;
        for (; b > 0 && v[order[b - 1]] < key; --b) {
            order[b] = order[b - 1];
        }
        order[b] = idx;
    }
    double css = 0.0, css_rho = v[order[0]];
    std::size_t rho = 1;
    for (std::size_t k = 1; k <= m; ++k) {
        const double u = v[order[k - 1]];
        css += u;
        if (u - (css - 1.0) / static_cast<double>(k) > 0.0) {
            rho = k;
            css_rho = css;
        }
    }
    const double theta = (css_rho - 1.0) / static_cast<double>(rho);
    for (std::size_t i = 0; i < T; ++i) {
        if (active[i]) {
            out[i] = std::max(v[i] - theta, 0.0);
        }
    }
}

// Accelerated projected gradient (FISTA with function-value restart) for min x^T M x on the
// simplex over the active tasks, from the barycentre (reference: _apg_simplex):
//
//     L = lipschitz_safety * lambda_max(M)   (power_iters power iterations from 1; the gradient
//                                             of x^T M x is 2 lambda_max-Lipschitz)
//     x+ = P(y - 2 M y / L),  restart (momentum 0, t = 1) when f(x+) > f(x),
//     t+ = (1 + sqrt(1 + 4 t^2)) / 2,  y+ = x+ + (t - 1)/t+ (x+ - x).
//
// M y is kept up to date by linearity (M y+ = M x+ + m (M x+ - M x)): one product per iteration.
inline Vec apg_simplex(const Mat& Mt, const Mask& active, const MgdaOptions& opt) {
    const std::size_t T = Mt.n;
    std::size_t count = 0;
    for (unsigned char a : active) {
        count += a ? 1 : 0;
    }
    const double n_active = static_cast<double>(std::max<std::size_t>(count, 1));
    Vec x(T), Mx(T), v(T, 1.0), Mv(T);
    for (std::size_t i = 0; i < T; ++i) {
        x[i] = (active[i] ? 1.0 : 0.0) / n_active;
    }
    for (int it = 0; it < opt.power_iters; ++it) {
        matvec_t(Mt, v, Mv);
        const double nrm = std::max(std::sqrt(dot(Mv.data(), Mv.data(), T)), opt.division_floor);
        for (std::size_t i = 0; i < T; ++i) {
            v[i] = Mv[i] / nrm;
        }
    }
    matvec_t(Mt, v, Mv);
    const double lip = opt.lipschitz_safety * std::max(dot(v.data(), Mv.data(), T), opt.division_floor);

    matvec_t(Mt, x, Mx);
    double fx = dot(x.data(), Mx.data(), T);
    double t = 1.0;
    Vec y = x, My = Mx, z(T), x_new(T), Mx_new(T);
    std::vector<std::size_t> order;  // active indices, by decreasing z after each projection
    for (std::size_t i = 0; i < T; ++i) {
        if (active[i]) {
            order.push_back(i);
        }
    }
    for (int it = 0; it < opt.apg_iters; ++it) {
        for (std::size_t i = 0; i < T; ++i) {
            z[i] = y[i] - (2.0 * My[i]) / lip;
        }
        project_simplex(z, active, order, x_new);
        matvec_t(Mt, x_new, Mx_new);
        const double f_new = dot(x_new.data(), Mx_new.data(), T);
        const bool restart = f_new > fx;
        const double t_new = (1.0 + std::sqrt(1.0 + 4.0 * t * t)) / 2.0;
        const double momentum = restart ? 0.0 : (t - 1.0) / t_new;
        for (std::size_t i = 0; i < T; ++i) {
            y[i] = x_new[i] + momentum * (x_new[i] - x[i]);
            My[i] = Mx_new[i] + momentum * (Mx_new[i] - Mx[i]);
        }
        t = restart ? 1.0 : t_new;
        x.swap(x_new);
        Mx.swap(Mx_new);
        fx = f_new;
    }
    return x;
}

// Solves the square system K s = rhs in place (Gaussian elimination with partial pivoting, the
// first largest |pivot| as LAPACK's getrf picks it).  A zero pivot is not an error (as with
// torch.linalg.solve_ex): the result is then inf/NaN.
inline void lu_solve(Mat& K, Vec& rhs) {
    const std::size_t n = K.n;
    for (std::size_t c = 0; c < n; ++c) {
        std::size_t p = c;
        double best = std::fabs(K(c, c));
        for (std::size_t r = c + 1; r < n; ++r) {
            if (std::fabs(K(r, c)) > best) {
                best = std::fabs(K(r, c));
                p = r;
            }
        }
        if (p != c) {
            std::swap_ranges(K.row(c), K.row(c) + n, K.row(p));
            std::swap(rhs[c], rhs[p]);
        }
        const double piv = K(c, c);
        for (std::size_t r = c + 1; r < n; ++r) {
            const double f = K(r, c) / piv;
            if (f != 0.0) {
                axpy(-f, K.row(c) + c + 1, K.row(r) + c + 1, n - c - 1);
                rhs[r] -= f * rhs[c];
            }
        }
    }
    for (std::size_t i = n; i-- > 0;) {
        rhs[i] = (rhs[i] - dot(K.row(i) + i + 1, rhs.data() + i + 1, n - i - 1)) / K(i, i);
    }
}

// Affine minimiser over the corral S (reference: _affine_min_norm, the CPU branch):
//
//     argmin y^T M y  s.t.  sum_{t in S} y_t = 1,  y_t = 0 off S,
//
// from the KKT system of the support  [M_SS + rho I   1] [y_S]   [0]
//                                     [1^T            0] [ mu] = [1],
// rho = ridge * max_t M_tt (keeps it regular when the corral is numerically affinely dependent).
inline void affine_min_norm(const Mat& M, const Mask& support, double ridge,
                            std::vector<std::size_t>& idx, Vec& y) {
    idx.clear();
    for (std::size_t t = 0; t < M.n; ++t) {
        if (support[t]) {
            idx.push_back(t);
        }
    }
    const std::size_t k = idx.size();
    Mat K(k + 1);
    for (std::size_t a = 0; a < k; ++a) {
        const double* Ma = M.row(idx[a]);
        double* Ka = K.row(a);
        for (std::size_t b = 0; b < k; ++b) {
            Ka[b] = Ma[idx[b]];
        }
        Ka[a] += ridge;
        Ka[k] = 1.0;
        K(k, a) = 1.0;
    }
    Vec rhs(k + 1, 0.0);
    rhs[k] = 1.0;
    lu_solve(K, rhs);
    std::fill(y.begin(), y.end(), 0.0);
    for (std::size_t a = 0; a < k; ++a) {
        y[idx[a]] = rhs[a];
    }
}

// The corral of Wolfe's algorithm with a Cholesky factor for its affine minimiser, updated in
// O(k^2) per added or dropped point instead of an O(k^3) solve per minor cycle.
//
// With B = M_SS + rho I positive definite, the KKT condition B y_S = -mu 1 of the affine
// minimiser gives
//
//     y_S = B^{-1} 1 / (1^T B^{-1} 1),
//
// the point the bordered system defines (its solution is unique).  B = R^T R (R upper triangular,
// rows contiguous) is kept for the members in insertion order:
//   * adding j appends the column r = R^{-T} B_Sj, r_jj = sqrt(B_jj + rho - |r|^2);
//   * dropping member p deletes column p of R, which leaves R upper Hessenberg from row p on,
//     and restores the triangle with Givens rotations of rows (p, p+1), ..., (k-2, k-1) (an
//     orthogonal transformation from the left leaves R^T R unchanged); the last row is then 0.
// Cholesky is backward stable, so y is the exact minimiser for a Gram matrix perturbed at the
// rounding level, as with the bordered solve.  (Wolfe 1976 factors B + 1 1^T, positive definite
// for any affinely independent corral; the shift 1 1^T would swamp the entries of small-norm
// gradients, so B is used and the bordered system is the fallback.)  B is singular when the
// corral is linearly dependent (T > D, duplicates, 0 in its affine hull; rho only keeps it off
// exact singularity): if a pivot is not > 0 the factor is rebuilt at the next solve, and if that
// fails too the caller solves the bordered system (affine_min_norm) as the reference does.
class Corral {
public:
    Corral(const Mat& M, double ridge) : M_(M), ridge_(ridge), R_(M.n) {
        members_.reserve(M.n);
        r_.reserve(M.n);
        z_.reserve(M.n);
    }

    const std::vector<std::size_t>& members() const { return members_; }

    void add(std::size_t j) {
        members_.push_back(j);
        if (valid_) {
            valid_ = append_column(members_.size() - 1);
        }
    }

    void drop(std::size_t j) {
        const auto it = std::find(members_.begin(), members_.end(), j);
        const auto p = static_cast<std::size_t>(it - members_.begin());
        members_.erase(it);
        if (!valid_) {
            return;
        }
        const std::size_t k = members_.size();  // columns after the deletion; rows 0..k
        for (std::size_t i = 0; i <= k; ++i) {    // delete column p (row i is 0 before column i)
            double* Ri = R_.row(i);
            const std::size_t from = std::max(p, i == 0 ? 0 : i - 1);
            std::copy(Ri + from + 1, Ri + k + 1, Ri + from);
        }
        for (std::size_t i = p; i < k; ++i) {  // zero R[i + 1][i] (rotate rows i, i + 1)
            double* Ri = R_.row(i);
            double* Rn = R_.row(i + 1);
            const double a = Ri[i], b = Rn[i];
            const double r = std::sqrt(a * a + b * b);  // |a|, |b| <= ~1: no overflow
            if (!(r > 0.0)) {
                valid_ = false;
                return;
            }
            const double cs = a / r, sn = b / r;
            for (std::size_t c = i + 1; c < k; ++c) {
                const double u = Ri[c], v = Rn[c];
                Ri[c] = cs * u + sn * v;
                Rn[c] = cs * v - sn * u;
            }
            Ri[i] = r;
            Rn[i] = 0.0;
        }
    }

    // y = the affine minimiser over the corral (zero off it); false if B cannot be factorised.
    bool solve(Vec& y) {
        const std::size_t k = members_.size();
        if (!valid_) {
            valid_ = true;
            for (std::size_t a = 0; a < k && valid_; ++a) {
                valid_ = append_column(a);
            }
            if (!valid_) {
                return false;
            }
        }
        z_.assign(k, 1.0);
        forward(z_.data(), k);                 // R^T u = 1
        for (std::size_t i = k; i-- > 0;) {  // R z = u
            const double* Ri = R_.row(i);
            z_[i] = (z_[i] - dot(Ri + i + 1, z_.data() + i + 1, k - i - 1)) / Ri[i];
        }
        double s = 0.0;
        for (double v : z_) {
            s += v;
        }
        if (!(s > 0.0) || !std::isfinite(s)) {  // 1^T B^{-1} 1 > 0 for B positive definite
            valid_ = false;
            return false;
        }
        std::fill(y.begin(), y.end(), 0.0);
        for (std::size_t a = 0; a < k; ++a) {
            y[members_[a]] = z_[a] / s;
        }
        return true;
    }

private:
    // x <- R^{-T} x for the leading n x n block (forward substitution by rows of R).
    void forward(double* x, std::size_t n) const {
        for (std::size_t s = 0; s < n; ++s) {
            const double* Rs = R_.row(s);
            x[s] /= Rs[s];
            axpy(-x[s], Rs + s + 1, x + s + 1, n - s - 1);
        }
    }

    // Column a of R from columns 0..a-1 (member a's column of B); false if the pivot is not > 0.
    bool append_column(std::size_t a) {
        const double* Ma = M_.row(members_[a]);
        r_.resize(a);
        for (std::size_t b = 0; b < a; ++b) {
            r_[b] = Ma[members_[b]];
        }
        forward(r_.data(), a);
        const double d = Ma[members_[a]] + ridge_ - dot(r_.data(), r_.data(), a);
        if (!(d > 0.0)) {
            return false;
        }
        for (std::size_t b = 0; b < a; ++b) {
            R_(b, a) = r_[b];
        }
        double* Ra = R_.row(a);
        std::fill(Ra, Ra + a, 0.0);
        Ra[a] = std::sqrt(d);
        return true;
    }

    const Mat& M_;
    double ridge_;
    Mat R_;  // the leading k x k block is used
    std::vector<std::size_t> members_;
    Vec r_, z_;
    bool valid_ = true;
};

// Wolfe's (1976) minimum-norm-point algorithm on the convex hull, in Gram form, warm-started
// with the support of `start` (reference: _wolfe_min_norm, as it runs on the CPU).
//
// State: a corral S and lambda on the simplex supported on S (x = sum_t lambda_t g_t).
//   Major cycle: w = M lambda (w_t = <x, g_t>); stop when min_{t not in S} w_t >=
//     lambda^T M lambda - tol max_t M_tt (the KKT conditions hold: x is the minimum-norm point),
//     else add argmin_{t not in S} w_t to S.
//   Minor cycle: y = affine minimiser over S; if y > 0 on S, lambda = y; otherwise move lambda
//     towards y by the largest theta in [0, 1] keeping lambda >= 0 (theta = min over y_t <= 0 of
//     lambda_t / (lambda_t - y_t)), drop the blocking coordinates (and any <= drop_tol) from S and
//     repeat the minor cycle.
// The warm start makes the first iteration a minor cycle from `start` (any feasible lambda may
// start one).  lambda is renormalised to sum 1 after every iteration.  The affine minimiser comes
// from the Corral's updated factor (the reference solves the bordered system afresh each time:
// the same point, O(k^2) instead of O(k^3) per iteration); the bordered system is the fallback.
inline Vec wolfe_min_norm(const Mat& M, const Mat& Mt, const Mask& active, long max_iter,
                          const MgdaOptions& opt, const Vec& start) {
    const std::size_t T = M.n;
    double gmax = 0.0, dmax = 0.0;
    for (std::size_t t = 0; t < T; ++t) {
        if (active[t]) {
            gmax = std::max(gmax, M(t, t));
        }
        dmax = std::max(dmax, M(t, t));
    }
    const double ridge = opt.ridge * std::max(dmax, opt.division_floor);
    const double smax = *std::max_element(start.begin(), start.end());

    Mask support(T, 0);
    Vec lam(T, 0.0);
    bool in_minor = false;
    for (std::size_t t = 0; t < T; ++t) {
        support[t] = active[t] && start[t] > opt.support_rel * smax;
        lam[t] = support[t] ? start[t] : 0.0;
        in_minor = in_minor || support[t];
    }
    auto normalise = [&]() {
        const double s = std::max(sum(lam), opt.division_floor);
        for (double& v : lam) {
            v /= s;
        }
    };
    normalise();

    Corral corral(M, ridge);
    for (std::size_t t = 0; t < T; ++t) {
        if (support[t]) {
            corral.add(t);
        }
    }
    Vec w(T), y(T), ratio(T);
    std::vector<std::size_t> idx;
    idx.reserve(T);
    for (long it = 0; it < max_iter; ++it) {
        // ---- major cycle (skipped while a minor cycle is pending) ----
        if (!in_minor) {
            matvec_t(Mt, lam, w);
            const double obj = dot(lam.data(), w.data(), T);
            std::size_t j = T;
            double cand = kBig;
            for (std::size_t t = 0; t < T; ++t) {
                if (active[t] && !support[t] && (j == T || w[t] < cand)) {
                    cand = w[t];
                    j = t;
                }
            }
            if (j == T) {
                cand = kBig;
            }
            if (cand >= obj - opt.tol * gmax) {  // optimal: done
                normalise();
                break;
            }
            support[j] = 1;
            corral.add(j);
        }
        // ---- minor cycle step ----
        if (!corral.solve(y)) {
            affine_min_norm(M, support, ridge, idx, y);
        }
        bool all_inside = true;
        double theta = kBig;
        for (std::size_t t = 0; t < T; ++t) {
            const bool dec = support[t] && y[t] <= 0.0;
            all_inside = all_inside && (y[t] > 0.0 || !support[t]);
            ratio[t] = dec ? lam[t] / std::max(lam[t] - y[t], opt.division_floor) : kBig;
            theta = std::min(theta, ratio[t]);
        }
        if (all_inside) {
            for (std::size_t t = 0; t < T; ++t) {
                lam[t] = std::max(y[t], 0.0);
            }
            in_minor = false;
        } else {
            theta = std::min(std::max(theta, 0.0), 1.0);
            for (std::size_t t = 0; t < T; ++t) {
                const bool dec = support[t] && y[t] <= 0.0;
                double lp = lam[t] + theta * (y[t] - lam[t]);
                const bool blocking = dec && ratio[t] <= theta;
                const bool drop = support[t] && (blocking || lp <= opt.drop_tol);
                if (drop) {
                    lp = 0.0;
                    support[t] = 0;
                    corral.drop(t);
                }
                lam[t] = lp;
            }
            in_minor = true;
        }
        normalise();
    }
    return lam;
}

}  // namespace detail

// IMTL-G weights (Liu et al. 2021 §3.1, eq. 1 and "IMTL-G"; Appendix B.1 eq. 9-12).
//
// The aggregated gradient g = sum_t alpha_t g_t has equal projections onto every unit gradient
// u_t = g_t / |g_t| (eq. 1) and sum_t alpha_t = 1.  In Gram space, with n_t = sqrt(G_tt) and the
// unit-gradient Gram C = N^{-1} G N^{-1}:
//
//     g . u_t = (G alpha)_t / n_t = const  <=>  G alpha ~ n  <=>  C beta = 1, alpha_t ~ beta_t / n_t,
//
// normalised to sum 1; beta = C^+ 1 by the filtered pseudo-inverse (psd_pinv_solve).  Inactive
// tasks get n_t = 1 and an identity row/column in C, and weight 0.
MTL_FAST_SOLVER_ENTRY inline void imtl_g(const double* G, std::size_t T, double* out,
                                             const ImtlGOptions& opt) {
    using namespace detail;
    const Mask active = active_tasks(G, T);
    Vec n(T), b(T);
    for (std::size_t t = 0; t < T; ++t) {
        n[t] = active[t] ? std::sqrt(std::max(nan_to_num(G[t * T + t]), 0.0)) : 1.0;
        b[t] = active[t] ? 1.0 : 0.0;
    }
    // C = N^{-1} G N^{-1}
    const Mat C = masked(G, T, active, [&](std::size_t i, std::size_t j) { return n[i] * n[j]; });
    const Vec beta = psd_pinv_solve(C, b, opt.pinv);
    Vec alpha(T);
    for (std::size_t t = 0; t < T; ++t) {
        alpha[t] = active[t] ? beta[t] / n[t] : 0.0;
    }
    normalise_sum(alpha, opt.sum_rel_tol);
    std::copy(alpha.begin(), alpha.end(), out);
}

// MGDA weights: the minimum-norm point of the convex hull of the gradients (Sener & Koltun 2018,
// eq. 3 / the MGDA-UB subproblem), exactly:
//
//     min_alpha  alpha^T G alpha   s.t.  alpha >= 0,  sum_t alpha_t = 1,
//
// characterised by the KKT conditions (G alpha)_t >= alpha^T G alpha for all t, with equality
// where alpha_t > 0.  Solved on M = G / max_{t active} G_tt (inactive tasks masked to identity
// rows and given weight 0) by Wolfe's algorithm warm-started by accelerated projected gradient.
MTL_FAST_SOLVER_ENTRY inline void mgda(const double* G, std::size_t T, double* out,
                                           const MgdaOptions& opt) {
    using namespace detail;
    const Mask active = active_tasks(G, T);
    double scale = 0.0;
    for (std::size_t t = 0; t < T; ++t) {
        if (active[t]) {
            scale = std::max(scale, G[t * T + t]);
        }
    }
    scale = std::max(scale, kTiny);
    const Mat M = masked(G, T, active, [scale](std::size_t, std::size_t) { return scale; });
    // M^T for the matrix-vector products (M itself when G is symmetric, as a Gram matrix is).
    const bool symmetric = is_symmetric(G, T);
    const Mat Mt_copy = symmetric ? Mat(0) : transposed(M);
    const Mat& Mt = symmetric ? M : Mt_copy;
    const Vec start = apg_simplex(Mt, active, opt);
    const Vec lam = wolfe_min_norm(M, Mt, active, opt.max_iter, opt, start);
    for (std::size_t t = 0; t < T; ++t) {
        out[t] = active[t] ? lam[t] : 0.0;
    }
}

}  // namespace solvers
}  // namespace mtl_fast
