// GradDrop's sign-dropout combination on the CPU (Chen et al. 2020, Algorithm 1): the native
// mirror of mtl_fast/reference/graddrop.py, with the same order of operations.
//
//   sums:    S[t][f] = alpha_t * sum_b sgn(A[b][f]) g_t[b][f] for the rows seen as [B, F]
//            (the batch rule); rows with alpha_t == 0 are not read and get S_t = 0.
//   combine: per element, P = 1/2 (1 + sum_t S_t / (sum_t |S_t| + eps)) (IEEE division),
//            M_t = [P > U][S_t > 0] + [P < U][S_t < 0] and
//            out (+)= sum_t (l_t + (1 - l_t) M_t) alpha_t g_t,
//            with S from `sums` (F columns, shared by the B batch rows) or, for the per-element
//            rule, S_t = sgn(A) alpha_t g_t formed here.
//
// Accumulation in Acc = float (double for float64 rows), task by task in the order t = 0..T-1;
// the translation unit is compiled without floating-point contraction (setup.py), so given the
// same S the masks and sums are those of the reference exactly.  Elements are read as float32,
// float64, bfloat16 or float16 and widened in registers; the result is rounded once (round to
// nearest even) to out's type.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_passes.h"

namespace mtl_fast {
namespace graddrop {

// The element types of the other CPU passes (cpu_passes.h; names parsed by cpu::elem_of).
using Elem = cpu::Elem;

inline float bf16_to_float(std::uint16_t h) {
    const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline std::uint16_t float_to_bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<std::uint16_t>(u >> 16);
}

inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1Fu;
    const std::uint32_t man = h & 0x3FFu;
    float f;
    if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
        f = std::ldexp(static_cast<float>(man), -24);
        return sign ? -f : f;
    }
    std::uint32_t u;
    if (exp == 0x1Fu) {
        u = sign | 0x7F800000u | (man << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    std::memcpy(&f, &u, 4);
    return f;
}

inline std::uint16_t float_to_f16(float f) {
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    const std::uint32_t sign = (x >> 16) & 0x8000u;
    const std::uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);  // NaN
    if (ax >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: Inf
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal half, round(|f| * 2^24) (exact scaling)
        float af;
        std::memcpy(&af, &ax, 4);
        const auto m = static_cast<std::uint32_t>(std::nearbyint(af * 16777216.0f));
        return static_cast<std::uint16_t>(sign | m);
    }
    std::uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7FFFFFu) >> 13);
    const std::uint32_t rest = ax & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;  // may carry into the exponent
    return static_cast<std::uint16_t>(sign | h);
}

// Element types as stored: float, double and the two 16-bit formats (their bits).
struct Bf16 {
    std::uint16_t bits;
};
struct Half {
    std::uint16_t bits;
};

template <class Acc>
inline Acc widen(float v) {
    return static_cast<Acc>(v);
}
template <class Acc>
inline Acc widen(double v) {
    return static_cast<Acc>(v);
}
template <class Acc>
inline Acc widen(Bf16 v) {
    return static_cast<Acc>(bf16_to_float(v.bits));
}
template <class Acc>
inline Acc widen(Half v) {
    return static_cast<Acc>(f16_to_float(v.bits));
}

// Calls f(E{}) with E the storage type of `e`.
template <class F>
inline void with_elem(Elem e, F&& f) {
    switch (e) {
        case Elem::F32:
            f(float{});
            break;
        case Elem::F64:
            f(double{});
            break;
        case Elem::BF16:
            f(Bf16{});
            break;
        default:
            f(Half{});
    }
}

inline void put(float* o, double v) { *o = static_cast<float>(v); }
inline void put(double* o, double v) { *o = v; }
inline void put(Bf16* o, double v) { o->bits = float_to_bf16(static_cast<float>(v)); }
inline void put(Half* o, double v) { o->bits = float_to_f16(static_cast<float>(v)); }

// out[i0 + j] = acc[j] (or out + acc, computed in double and rounded once to float, then to
// out's type: exact for a float out, since double rounding of a sum of two floats is
// innocuous), for j < n.
template <class Acc>
inline void emit_block(void* out, Elem e, std::size_t i0, const Acc* acc, std::size_t n,
                       bool accumulate) {
    with_elem(e, [&](auto tag) {
        using O = decltype(tag);
        O* o = static_cast<O*>(out) + i0;
        if (!accumulate) {
            if constexpr (std::is_same_v<O, Acc>) {
                for (std::size_t j = 0; j < n; ++j) o[j] = acc[j];
            } else {
                for (std::size_t j = 0; j < n; ++j) put(o + j, static_cast<double>(acc[j]));
            }
            return;
        }
        for (std::size_t j = 0; j < n; ++j) {
            put(o + j, widen<double>(o[j]) + static_cast<double>(acc[j]));
        }
    });
}

struct Rows {
    const void* const* rows;  // T pointers to D contiguous elements
    std::size_t T;
    std::size_t D;
    Elem elem;
};

// S (T x F, row-major, Acc) of the rows seen as [B, F]; `signs` (B x F int8 in {-1, 0, 1}) may
// be null (sgn = 1).  Parallel over blocks of columns; each block reads the B rows of its
// columns for every task, so the sums of a block are in the order b = 0..B-1.
template <class Acc, class E>
void sums_typed(const Rows& r, const Acc* alpha, std::size_t B, const std::int8_t* signs, Acc* S,
                int num_threads) {
    const std::size_t F = r.D / B;
    constexpr std::size_t block = 256;
    const auto blocks = static_cast<long long>((F + block - 1) / block);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (long long k = 0; k < blocks; ++k) {
        const std::size_t f0 = static_cast<std::size_t>(k) * block;
        const std::size_t n = f0 + block < F ? block : F - f0;
        Acc acc[block];
        for (std::size_t t = 0; t < r.T; ++t) {
            Acc* s = S + t * F + f0;
            if (alpha[t] == 0) {
                for (std::size_t j = 0; j < n; ++j) s[j] = 0;
                continue;
            }
            const E* g = static_cast<const E*>(r.rows[t]);
            for (std::size_t j = 0; j < n; ++j) acc[j] = 0;
            for (std::size_t b = 0; b < B; ++b) {
                const E* gb = g + b * F + f0;
                if (signs != nullptr) {
                    const std::int8_t* ab = signs + b * F + f0;
                    for (std::size_t j = 0; j < n; ++j) {
                        acc[j] += widen<Acc>(gb[j]) * static_cast<Acc>(ab[j]);
                    }
                } else {
                    for (std::size_t j = 0; j < n; ++j) acc[j] += widen<Acc>(gb[j]);
                }
            }
            for (std::size_t j = 0; j < n; ++j) s[j] = alpha[t] * acc[j];
        }
    }
}

template <class Acc>
void sums(const Rows& r, const Acc* alpha, std::size_t B, const std::int8_t* signs, Acc* S,
          int num_threads) {
    with_elem(r.elem, [&](auto e) {
        sums_typed<Acc, decltype(e)>(r, alpha, B, signs, S, num_threads);
    });
}

struct CombineArgs {
    const void* sums;           // T x F Acc, or null: the per-element rule
    std::size_t F;              // columns of sums (D for the per-element rule)
    const std::int8_t* signs;   // D int8 in {-1, 0, 1}, or null (per-element rule only)
    const void* uniform;        // F Acc values
    void* out;                  // D elements of out_elem
    Elem out_elem;
    bool accumulate;
    double eps;
    int num_threads;
};

template <class Acc>
inline Acc purity(Acc num, Acc den, Acc eps) {
    return Acc(0.5) * (Acc(1) + num / (den + eps));
}

template <class Acc>
inline Acc mask_weight(Acc alpha, Acc leak, Acc P, Acc u, Acc s) {
    const bool kept = ((P > u) & (s > 0)) | ((P < u) & (s < 0));
    return alpha * (leak + (Acc(1) - leak) * static_cast<Acc>(kept));
}

// The batch rule: the masks depend on the column only, so the factors w[t][f] =
// alpha_t (l_t + (1 - l_t) M_t[f]) are formed once (T x F), then out[b][f] = sum_t w[t][f]
// g_t[b][f], parallel over the batch rows.
template <class Acc, class E>
void combine_batch(const Rows& r, const Acc* alpha, const Acc* leak, const CombineArgs& a) {
    const Acc* S = static_cast<const Acc*>(a.sums);
    const Acc* U = static_cast<const Acc*>(a.uniform);
    const Acc eps = static_cast<Acc>(a.eps);
    const std::size_t F = a.F;
    const std::size_t B = r.D / F;
    std::vector<Acc> w(r.T * F, Acc(0));
    for (std::size_t f = 0; f < F; ++f) {
        Acc num = 0, den = 0;
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            num += S[t * F + f];
            den += std::abs(S[t * F + f]);
        }
        const Acc P = purity(num, den, eps);
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            w[t * F + f] = mask_weight(alpha[t], leak[t], P, U[f], S[t * F + f]);
        }
    }
    constexpr std::size_t block = 1024;
    const std::size_t per_row = (F + block - 1) / block;
    const auto blocks = static_cast<long long>(B * per_row);
#pragma omp parallel for schedule(static) num_threads(a.num_threads) if (a.num_threads > 1)
    for (long long k = 0; k < blocks; ++k) {
        const std::size_t b = static_cast<std::size_t>(k) / per_row;
        const std::size_t f0 = (static_cast<std::size_t>(k) % per_row) * block;
        const std::size_t n = f0 + block < F ? block : F - f0;
        Acc acc[block];
        for (std::size_t j = 0; j < n; ++j) acc[j] = 0;
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            const E* g = static_cast<const E*>(r.rows[t]) + b * F + f0;
            const Acc* wt = w.data() + t * F + f0;
            for (std::size_t j = 0; j < n; ++j) acc[j] += wt[j] * widen<Acc>(g[j]);
        }
        emit_block<Acc>(a.out, a.out_elem, b * F + f0, acc, n, a.accumulate);
    }
}

// The per-element rule: S_t = sgn(A) alpha_t g_t per element, formed twice (for P, then for the
// masks) from the rows, which the second loop reads from the cache.
template <class Acc, class E>
void combine_elementwise(const Rows& r, const Acc* alpha, const Acc* leak, const CombineArgs& a) {
    const Acc* U = static_cast<const Acc*>(a.uniform);
    const Acc eps = static_cast<Acc>(a.eps);
    const std::size_t D = r.D;
    constexpr std::size_t block = 1024;
    const auto blocks = static_cast<long long>((D + block - 1) / block);
#pragma omp parallel for schedule(static) num_threads(a.num_threads) if (a.num_threads > 1)
    for (long long k = 0; k < blocks; ++k) {
        const std::size_t d0 = static_cast<std::size_t>(k) * block;
        const std::size_t n = d0 + block < D ? block : D - d0;
        Acc num[block], den[block], acc[block], sg[block];
        for (std::size_t j = 0; j < n; ++j) {
            num[j] = den[j] = acc[j] = 0;
            sg[j] = a.signs != nullptr ? static_cast<Acc>(a.signs[d0 + j]) : Acc(1);
        }
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            const E* g = static_cast<const E*>(r.rows[t]) + d0;
            for (std::size_t j = 0; j < n; ++j) {
                const Acc s = sg[j] * (alpha[t] * widen<Acc>(g[j]));
                num[j] += s;
                den[j] += std::abs(s);
            }
        }
        for (std::size_t j = 0; j < n; ++j) num[j] = purity(num[j], den[j], eps);
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            const E* g = static_cast<const E*>(r.rows[t]) + d0;
            for (std::size_t j = 0; j < n; ++j) {
                const Acc x = widen<Acc>(g[j]);
                const Acc s = sg[j] * (alpha[t] * x);
                acc[j] += mask_weight(alpha[t], leak[t], num[j], U[d0 + j], s) * x;
            }
        }
        emit_block<Acc>(a.out, a.out_elem, d0, acc, n, a.accumulate);
    }
}

template <class Acc>
void combine(const Rows& r, const Acc* alpha, const Acc* leak, const CombineArgs& a) {
    with_elem(r.elem, [&](auto e) {
        using E = decltype(e);
        if (a.sums != nullptr) {
            combine_batch<Acc, E>(r, alpha, leak, a);
        } else {
            combine_elementwise<Acc, E>(r, alpha, leak, a);
        }
    });
}

}  // namespace graddrop
}  // namespace mtl_fast
