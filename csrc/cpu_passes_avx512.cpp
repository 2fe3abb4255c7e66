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
    static constexpr int TILE = 5;
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
    static void fstream(float* p, F x) { _mm512_stream_ps(p, x); }  // p aligned to the vector
    static void fence() { _mm_sfence(); }
    static F fadd(F a, F b) { return _mm512_add_ps(a, b); }
    // Round to nearest even; NaN stays a (quiet) NaN, as float_to_bf16.
    static void fstore_bf16(std::uint16_t* p, F x) {
        const __m512i u = _mm512_castps_si512(x);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        const __m512i rounded =
            _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
        const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(
            _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
        const __m512i h = _mm512_mask_blend_epi32(nan, rounded, quiet);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(h));
    }
    static void fstore_f16(std::uint16_t* p, F x) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                            _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
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
