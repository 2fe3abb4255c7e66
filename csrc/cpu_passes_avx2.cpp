// The kernels of cpu_passes_impl.h for AVX2 + FMA + F16C (8 float / 4 double lanes, 3 x 3 register
// tiles: 9 accumulators and 6 operands fit the 16 vector registers).  setup.py compiles this file
// alone with -mavx2 -mfma -mf16c; the dispatcher (cpu_passes.cpp) calls it only on CPUs reporting
// all three.  Compiled without those flags it defines kernels_avx2() returning nullptr.
#include "cpu_passes.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

namespace mtl_fast {
namespace cpu {
namespace avx2 {

struct Isa {
    using F = __m256;
    using Dv = __m256d;
    static constexpr int W = 8;
    static constexpr int WD = 4;
    static constexpr int TILE = 3;
    static F fzero() { return _mm256_setzero_ps(); }
    static F fset1(float x) { return _mm256_set1_ps(x); }
    static F ffma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static F fload(const float* p) { return _mm256_loadu_ps(p); }
    static F fload_bf16(const std::uint16_t* p) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    static F fload_f16(const std::uint16_t* p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
    static void fstore(float* p, F x) { _mm256_storeu_ps(p, x); }
    static void fstream(float* p, F x) { _mm256_stream_ps(p, x); }  // p aligned to the vector
    static void fence() { _mm_sfence(); }
    static F fadd(F a, F b) { return _mm256_add_ps(a, b); }
    // Round to nearest even; NaN stays a (quiet) NaN, as float_to_bf16.
    static void fstore_bf16(std::uint16_t* p, F x) {
        const __m256i u = _mm256_castps_si256(x);
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rounded =
            _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
        const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
        // |x| > Inf as signed integers (the sign bit is cleared, so the comparison is exact).
        const __m256i nan = _mm256_cmpgt_epi32(
            _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
        const __m256i h = _mm256_blendv_epi8(rounded, quiet, nan);
        // 8 x 32-bit values < 2^16 -> 8 x 16-bit: pack within the 128-bit lanes, then gather.
        const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(h, h), 0x08);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
    }
    static void fstore_f16(std::uint16_t* p, F x) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                         _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    static double dsum(Dv x) {
        const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
        return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
    }
    static double fsum(F x) {
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
        const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
        return dsum(_mm256_add_pd(lo, hi));
    }
    static Dv dzero() { return _mm256_setzero_pd(); }
    static Dv dset1(double x) { return _mm256_set1_pd(x); }
    static Dv dfma(Dv a, Dv b, Dv c) { return _mm256_fmadd_pd(a, b, c); }
    static Dv dload(const double* p) { return _mm256_loadu_pd(p); }
    static void dstore(double* p, Dv x) { _mm256_storeu_pd(p, x); }
};

#include "cpu_passes_impl.h"

const Kernels kKernels{"avx2", &gram_dispatch<Isa>, &combine_dispatch<Isa>};

}  // namespace avx2

const Kernels* kernels_avx2() { return &avx2::kKernels; }

}  // namespace cpu
}  // namespace mtl_fast

#else

namespace mtl_fast {
namespace cpu {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace mtl_fast

#endif
