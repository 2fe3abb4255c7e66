// Native CPU passes over the T task gradients (the rows of a virtual T x D matrix J, each read in
// place through a pointer array; nothing is stacked or copied):
//
//   gram:     G = J J^T  (G_ab = <g_a, g_b>), float32 products summed per lane over a block of
//             columns, the block sums reduced in float64 across blocks (the accuracy contract of
//             mtl_fast/reference/passes.py: the error does not grow with D); only the upper
//             triangle is computed (T^2 D / 2 multiply-adds, like SYRK) in register tiles, then
//             mirrored, so G is exactly symmetric.  float64 gradients accumulate in float64.
//   combine:  out (+)= sum_t alpha_t g_t (Liu et al. 2021, eq. 2), float32 accumulation (float64
//             for float64 gradients) over column chunks kept in cache; tasks with alpha_t == 0
//             are skipped, never multiplied (their gradient may be NaN).
//
// The arithmetic is deterministic for a given instruction set: the columns are split into a
// number of chunks that depends on D and T only (never on the thread count) and the chunks'
// partial Gram matrices are summed in a fixed order.
//
// Runtime dispatch: one translation unit per instruction set (cpu_passes_avx512.cpp,
// cpu_passes_avx2.cpp, compiled with their own target flags by setup.py, and the portable
// cpu_passes_portable.cpp) instantiates the kernels of cpu_passes_impl.h; cpu_passes.cpp picks the
// best one the running CPU supports (or the one set_isa forces).  bf16 and fp16 rows are read as
// 16-bit values and widened in registers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mtl_fast {
namespace cpu {

enum class Elem : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

struct GramArgs {
    const void* const* rows;  // T pointers to D elements each (any alignment)
    std::size_t T;
    std::size_t D;
    Elem elem;
    double* G;                 // T x T float64 output (row-major), fully written
    double* scratch;           // gram_plan(...).chunks * T * T doubles when chunks > 1
    int num_threads;           // >= 1
};

// How the columns are cut: `block` columns are summed in float32 per lane (a multiple of 64, so
// every instruction set's vector width divides it; smaller for large T so that the T rows of a
// block stay in the L2 cache), and `chunks` contiguous runs of blocks are the units of parallel
// work, each with its own partial float64 Gram matrix (a function of T and D only).
struct GramPlan {
    std::size_t block;
    std::size_t blocks_per_chunk;
    std::size_t chunks;
};

static inline GramPlan gram_plan(std::size_t T, std::size_t D, std::size_t elem_bytes) {
    std::size_t block = 1024;
    while (block > 128 && T * block * elem_bytes > (std::size_t{192} << 10)) {
        block /= 2;
    }
    const std::size_t nblocks = (D + block - 1) / block;
    // About 32 Ki columns per chunk, at most 64 chunks and at most 8 Mi partial entries.
    std::size_t chunks = (D + 32767) / 32768;
    if (chunks > 64) chunks = 64;
    while (chunks > 1 && chunks * T * T > (std::size_t{8} << 20)) chunks /= 2;
    if (chunks < 1) chunks = 1;
    if (chunks > nblocks) chunks = nblocks;
    const std::size_t per = (nblocks + chunks - 1) / chunks;
    return GramPlan{block, per, (nblocks + per - 1) / per};
}

struct CombineArgs {
    const void* const* rows;
    std::size_t T;
    std::size_t D;
    Elem elem;
    const std::size_t* kept;   // indices of the tasks with a non-zero weight
    const double* weights;     // their weights (num_kept entries)
    std::size_t num_kept;
    void* out;                 // D elements of out_elem
    Elem out_elem;
    bool accumulate;           // out += sum (else out = sum)
    int num_threads;
    bool stream = false;       // float32 out, not accumulated: streaming (non-temporal) stores
};

//: Outputs of at least this many bytes are written with streaming stores (float32, not
//: accumulated): they do not fit the caches, so reading them first (write-allocate) is waste.
constexpr std::size_t COMBINE_STREAM_BYTES = std::size_t{8} << 20;

using GramFn = void (*)(const GramArgs&);
using CombineFn = void (*)(const CombineArgs&);

struct Kernels {
    const char* name;
    GramFn gram;
    CombineFn combine;
};

// Each returns nullptr when its instruction set was not compiled in (another compiler or
// architecture); the portable one always exists.
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_portable();

// Everything below is `static inline` (internal linkage): each instruction-set translation unit gets
// its own copy, so the linker can never hand a portable caller a copy compiled for AVX-512.  For the
// same reason the kernels' translation units use no standard-library templates (the dispatcher,
// compiled with the baseline flags, allocates their scratch memory).

// Scalar conversions (round to nearest even, NaN kept).
static inline float bf16_to_float(std::uint16_t h) {
    const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

static inline std::uint16_t float_to_bf16(float f) {
    std::uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
}

static inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t em = h & 0x7fffu;
    std::uint32_t u;
    if (em >= 0x7c00u) {  // Inf / NaN
        u = sign | 0x7f800000u | ((em & 0x3ffu) << 13);
    } else if (em >= 0x0400u) {  // normal: rebias the exponent (15 -> 127)
        u = sign | ((em << 13) + (112u << 23));
    } else {  // zero or subnormal: em * 2^-24 is exact in float
        const float v = static_cast<float>(em) * 5.9604644775390625e-08f;
        __builtin_memcpy(&u, &v, 4);
        u |= sign;
    }
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

static inline std::uint16_t float_to_f16(float f) {
    std::uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    u &= 0x7fffffffu;
    std::uint32_t h;
    if (u >= 0x7f800000u) {  // Inf / NaN
        h = 0x7c00u | (u > 0x7f800000u ? 0x0200u : 0u);
    } else if (u >= 0x477ff000u) {  // rounds to >= 65520: overflow to Inf
        h = 0x7c00u;
    } else if (u < 0x38800000u) {  // below 2^-14: a half subnormal (or zero)
        // Adding 0.5 aligns the value's bits to the half subnormal grid; the float addition rounds
        // to nearest even, then the low bits are the half's mantissa.
        float a;
        __builtin_memcpy(&a, &u, 4);
        a += 0.5f;
        std::uint32_t ua;
        __builtin_memcpy(&ua, &a, 4);
        h = ua - 0x3f000000u;
    } else {  // normal: rebias, round to nearest even on the 13 dropped bits
        const std::uint32_t odd = (u >> 13) & 1u;
        u += 0xc8000fffu + odd;  // (15 - 127) << 23 plus the rounding bias, modulo 2^32
        h = u >> 13;
    }
    return static_cast<std::uint16_t>(h | sign);
}

}  // namespace cpu
}  // namespace mtl_fast
