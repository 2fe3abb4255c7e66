// The kernels of cpu_passes_impl.h for AVX-512F (16 float / 8 double lanes, 4 x 4 register tiles).
// setup.py compiles this file alone with -mavx512f -mavx2 -mfma -mf16c; the dispatcher
// (cpu_passes.cpp) calls it only on CPUs that report AVX-512F.  Compiled without those flags (another
// compiler or architecture) it defines kernels_avx512() returning nullptr.
#include "cpu_passes.h"

#if defined(__AVX512F__) && defined(__FMA__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 conversion intrinsics trip a false -Wmaybe-uninitialized inside OpenMP regions.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace mtl_fast {
namespace cpu {
namespace avx512 {

struct Isa {
    using F = __m512;
    using Dv = __m512d;
    static constexpr int W = 16;
    static constexpr int WD = 8;
    static constexpr int TILE = 4;
    static F fzero() { return _mm512_setzero_ps(); }
    static F fset1(float x) { return _mm512_set1_ps(x); }
    static F ffma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    static F fload(const float* p) { return _mm512_loadu_ps(p); }
    static F fload_bf16(const std::uint16_t* p) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    static F fload_f16(const std::uint16_t* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static void fstore(float* p, F x) { _mm512_storeu_ps(p, x); }
    static double fsum(F x) {
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
        const __m512d hi = _mm512_cvtps_pd(
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
    }
    static Dv dzero() { return _mm512_setzero_pd(); }
    static Dv dset1(double x) { return _mm512_set1_pd(x); }
    static Dv dfma(Dv a, Dv b, Dv c) { return _mm512_fmadd_pd(a, b, c); }
    static Dv dload(const double* p) { return _mm512_loadu_pd(p); }
    static void dstore(double* p, Dv x) { _mm512_storeu_pd(p, x); }
    static double dsum(Dv x) { return _mm512_reduce_add_pd(x); }
};

#include "cpu_passes_impl.h"

const Kernels kKernels{"avx512", &gram_dispatch<Isa>, &combine_dispatch<Isa>};

}  // namespace avx512

const Kernels* kernels_avx512() { return &avx512::kKernels; }

}  // namespace cpu
}  // namespace mtl_fast

#else

namespace mtl_fast {
namespace cpu {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace cpu
}  // namespace mtl_fast

#endif
