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

namespace mtl_fast {
namespace graddrop {

enum class Elem : int { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

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

template <class Acc>
inline Acc load(const void* p, Elem e, std::size_t i) {
    switch (e) {
        case Elem::F32:
            return static_cast<Acc>(static_cast<const float*>(p)[i]);
        case Elem::F64:
            return static_cast<Acc>(static_cast<const double*>(p)[i]);
        case Elem::BF16:
            return static_cast<Acc>(bf16_to_float(static_cast<const std::uint16_t*>(p)[i]));
        default:
            return static_cast<Acc>(f16_to_float(static_cast<const std::uint16_t*>(p)[i]));
    }
}

template <class Acc>
inline void store(void* p, Elem e, std::size_t i, Acc v) {
    switch (e) {
        case Elem::F32:
            static_cast<float*>(p)[i] = static_cast<float>(v);
            break;
        case Elem::F64:
            static_cast<double*>(p)[i] = static_cast<double>(v);
            break;
        case Elem::BF16:
            static_cast<std::uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v));
            break;
        default:
            static_cast<std::uint16_t*>(p)[i] = float_to_f16(static_cast<float>(v));
    }
}

// sgn(a) * x, exactly (sgn in {-1, 0, 1}; NaN -> 0).
template <class Acc>
inline Acc signed_by(Acc x, Acc a) {
    return a > 0 ? x : (a < 0 ? -x : Acc(0));
}

struct Rows {
    const void* const* rows;  // T pointers to D contiguous elements
    std::size_t T;
    std::size_t D;
    Elem elem;
};

// S (T x F, row-major, Acc) of the rows seen as [B, F]; `signs` (B x F elements of `sign_elem`)
// may be null (sgn = 1).
template <class Acc>
void sums(const Rows& r, const Acc* alpha, std::size_t B, const void* signs, Elem sign_elem,
          Acc* S, int num_threads) {
    const std::size_t F = r.D / B;
    const std::size_t block = 256;
    const auto blocks = static_cast<long long>((F + block - 1) / block);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (long long k = 0; k < blocks; ++k) {
        const std::size_t f0 = static_cast<std::size_t>(k) * block;
        const std::size_t f1 = f0 + block < F ? f0 + block : F;
        Acc acc[256];
        for (std::size_t t = 0; t < r.T; ++t) {
            Acc* s = S + t * F;
            if (alpha[t] == 0) {
                for (std::size_t f = f0; f < f1; ++f) s[f] = 0;
                continue;
            }
            for (std::size_t f = f0; f < f1; ++f) acc[f - f0] = 0;
            for (std::size_t b = 0; b < B; ++b) {
                const std::size_t base = b * F;
                for (std::size_t f = f0; f < f1; ++f) {
                    Acc x = load<Acc>(r.rows[t], r.elem, base + f);
                    if (signs != nullptr) x = signed_by(x, load<Acc>(signs, sign_elem, base + f));
                    acc[f - f0] += x;
                }
            }
            for (std::size_t f = f0; f < f1; ++f) s[f] = alpha[t] * acc[f - f0];
        }
    }
}

struct CombineArgs {
    const void* sums;      // T x F Acc, or null: the per-element rule
    std::size_t F;         // columns of sums (D for the per-element rule)
    const void* signs;     // D elements of sign_elem, or null (per-element rule only)
    Elem sign_elem;
    const void* uniform;   // F Acc values
    void* out;             // D elements of out_elem
    Elem out_elem;
    bool accumulate;
    double eps;
    int num_threads;
};

template <class Acc>
void combine(const Rows& r, const Acc* alpha, const Acc* leak, const CombineArgs& a) {
    const Acc* S = static_cast<const Acc*>(a.sums);
    const Acc* U = static_cast<const Acc*>(a.uniform);
    const Acc eps = static_cast<Acc>(a.eps);
    const std::size_t D = r.D;
    const std::size_t block = 1024;
    const auto blocks = static_cast<long long>((D + block - 1) / block);
#pragma omp parallel for schedule(static) num_threads(a.num_threads) if (a.num_threads > 1)
    for (long long k = 0; k < blocks; ++k) {
        const std::size_t d0 = static_cast<std::size_t>(k) * block;
        const std::size_t d1 = d0 + block < D ? d0 + block : D;
        Acc num[1024], den[1024], acc[1024];
        for (std::size_t d = d0; d < d1; ++d) num[d - d0] = den[d - d0] = acc[d - d0] = 0;
        // S_t at element d (0 for a skipped task).
        auto s_of = [&](std::size_t t, std::size_t d) -> Acc {
            if (S != nullptr) return S[t * a.F + d % a.F];
            Acc h = alpha[t] * load<Acc>(r.rows[t], r.elem, d);
            if (a.signs != nullptr) h = signed_by(h, load<Acc>(a.signs, a.sign_elem, d));
            return h;
        };
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            for (std::size_t d = d0; d < d1; ++d) {
                const Acc s = s_of(t, d);
                num[d - d0] += s;
                den[d - d0] += std::abs(s);
            }
        }
        for (std::size_t d = d0; d < d1; ++d) {
            num[d - d0] = Acc(0.5) * (Acc(1) + num[d - d0] / (den[d - d0] + eps));  // P
        }
        for (std::size_t t = 0; t < r.T; ++t) {
            if (alpha[t] == 0) continue;
            const Acc lk = leak[t];
            for (std::size_t d = d0; d < d1; ++d) {
                const Acc s = s_of(t, d);
                const Acc P = num[d - d0];
                const Acc u = U[S != nullptr ? d % a.F : d];
                const bool kept = (P > u && s > 0) || (P < u && s < 0);
                const Acc m = lk + (Acc(1) - lk) * (kept ? Acc(1) : Acc(0));
                acc[d - d0] += (alpha[t] * m) * load<Acc>(r.rows[t], r.elem, d);
            }
        }
        for (std::size_t d = d0; d < d1; ++d) {
            if (a.accumulate) {
                // out + v in double, rounded once to float (exact for a float out: double
                // rounding of a sum of two floats is innocuous), then to out's type.
                store<double>(a.out, a.out_elem, d,
                              load<double>(a.out, a.out_elem, d) +
                                  static_cast<double>(acc[d - d0]));
            } else {
                store<Acc>(a.out, a.out_elem, d, acc[d - d0]);
            }
        }
    }
}

}  // namespace graddrop
}  // namespace mtl_fast
