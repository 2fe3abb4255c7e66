// The kernels of cpu_passes_impl.h for any CPU: "vectors" are small arrays the compiler may map to
// whatever SIMD the baseline target has (SSE2 on x86-64, NEON on arm64), 2 x 2 register tiles.
// Compiled with the extension's common flags (-ffp-contract=off: a multiply and an add, never
// fused, so the results do not depend on the compiler's contraction choices).
#include "cpu_passes.h"

namespace mtl_fast {
namespace cpu {
namespace portable {

template <class S, int N>
struct Vec {
    S v[N];
};

struct Isa {
    static constexpr int W = 8;
    static constexpr int WD = 4;
    static constexpr int TILE = 2;
    using F = Vec<float, W>;
    using Dv = Vec<double, WD>;

    template <class V, class S>
    static V set(S x) {
        V r;
        for (auto& e : r.v) e = x;
        return r;
    }
    template <class V>
    static V mul_add(const V& a, const V& b, const V& c) {
        V r;
        for (unsigned k = 0; k < sizeof(r.v) / sizeof(r.v[0]); ++k) r.v[k] = a.v[k] * b.v[k] + c.v[k];
        return r;
    }
    template <class V, class P, class Conv>
    static V load_with(const P* p, Conv conv) {
        V r;
        for (unsigned k = 0; k < sizeof(r.v) / sizeof(r.v[0]); ++k) r.v[k] = conv(p[k]);
        return r;
    }
    template <class V>
    static double lanes_sum(const V& x) {
        double s = 0.0;
        for (auto e : x.v) s += static_cast<double>(e);
        return s;
    }

    static F fzero() { return set<F>(0.0f); }
    static F fset1(float x) { return set<F>(x); }
    static F ffma(const F& a, const F& b, const F& c) { return mul_add(a, b, c); }
    static F fload(const float* p) { return load_with<F>(p, [](float x) { return x; }); }
    static F fload_bf16(const std::uint16_t* p) { return load_with<F>(p, bf16_to_float); }
    static F fload_f16(const std::uint16_t* p) { return load_with<F>(p, f16_to_float); }
    static void fstore(float* p, const F& x) {
        for (int k = 0; k < W; ++k) p[k] = x.v[k];
    }
    static double fsum(const F& x) { return lanes_sum(x); }
    static void fstream(float* p, const F& x) { fstore(p, x); }  // plain stores here
    static void fence() {}
    static F fadd(const F& a, const F& b) {
        F r;
        for (int k = 0; k < W; ++k) r.v[k] = a.v[k] + b.v[k];
        return r;
    }
    static void fstore_bf16(std::uint16_t* p, const F& x) {
        for (int k = 0; k < W; ++k) p[k] = float_to_bf16(x.v[k]);
    }
    static void fstore_f16(std::uint16_t* p, const F& x) {
        for (int k = 0; k < W; ++k) p[k] = float_to_f16(x.v[k]);
    }
    static Dv dzero() { return set<Dv>(0.0); }
    static Dv dset1(double x) { return set<Dv>(x); }
    static Dv dfma(const Dv& a, const Dv& b, const Dv& c) { return mul_add(a, b, c); }
    static Dv dload(const double* p) { return load_with<Dv>(p, [](double x) { return x; }); }
    static void dstore(double* p, const Dv& x) {
        for (int k = 0; k < WD; ++k) p[k] = x.v[k];
    }
    static double dsum(const Dv& x) { return lanes_sum(x); }
};

#include "cpu_passes_impl.h"

const Kernels kKernels{"portable", &gram_dispatch<Isa>, &combine_dispatch<Isa>};

}  // namespace portable

const Kernels* kernels_portable() { return &portable::kKernels; }

}  // namespace cpu
}  // namespace mtl_fast
