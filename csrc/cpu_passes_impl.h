// The Gram and combine kernels of cpu_passes.h, written once over an instruction-set traits class
// `I` and included by each instruction-set translation unit inside its own namespace (the
// instantiations never leave that unit; see cpu_passes.h on internal linkage).
//
// `I` provides float vectors (F, W lanes) and double vectors (Dv, WD lanes):
//   fzero, fset1, ffma(a, b, c) = a*b + c, fload (float*), fload_bf16, fload_f16 (uint16_t*,
//   widened in registers), fstore, fsum (the lanes summed in float64), and the same d* operations
//   on doubles; TILE, the side of the register tile of G.
//
// Gram: for each block of columns, every upper-triangle tile (rows i0.., j0..) keeps TILE x TILE
// vector accumulators in registers over the block (float32 per lane), then adds their lane sums
// to the chunk's float64 partial G.  A diagonal tile loads its rows once and skips the accumulators
// below the diagonal.  The columns beyond the last full vector are summed in float64.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_passes.h"

// Inside namespace mtl_fast::cpu::<isa> (opened by the including file).

template <class I, Elem E>
struct Lane;

template <class I>
struct Lane<I, Elem::F32> {
    using T = float;
    using Acc = float;
    using R = typename I::F;
    static constexpr int W = I::W;
    static R load(const T* p) { return I::fload(p); }
    static R zero() { return I::fzero(); }
    static R set1(Acc x) { return I::fset1(x); }
    static R fma(R a, R b, R c) { return I::ffma(a, b, c); }
    static R load_acc(const Acc* p) { return I::fload(p); }
    static void store(Acc* p, R x) { I::fstore(p, x); }
    static double sum(R x) { return I::fsum(x); }
    static Acc scalar(T x) { return x; }
};

template <class I>
struct Lane<I, Elem::BF16> : Lane<I, Elem::F32> {
    using T = std::uint16_t;
    static typename I::F load(const T* p) { return I::fload_bf16(p); }
    static float scalar(T x) { return bf16_to_float(x); }
};

template <class I>
struct Lane<I, Elem::F16> : Lane<I, Elem::F32> {
    using T = std::uint16_t;
    static typename I::F load(const T* p) { return I::fload_f16(p); }
    static float scalar(T x) { return f16_to_float(x); }
};

template <class I>
struct Lane<I, Elem::F64> {
    using T = double;
    using Acc = double;
    using R = typename I::Dv;
    static constexpr int W = I::WD;
    static R load(const T* p) { return I::dload(p); }
    static R zero() { return I::dzero(); }
    static R set1(Acc x) { return I::dset1(x); }
    static R fma(R a, R b, R c) { return I::dfma(a, b, c); }
    static R load_acc(const Acc* p) { return I::dload(p); }
    static void store(Acc* p, R x) { I::dstore(p, x); }
    static double sum(R x) { return I::dsum(x); }
    static Acc scalar(T x) { return x; }
};

static inline std::size_t min_size(std::size_t a, std::size_t b) { return a < b ? a : b; }

// One register tile: rows i0..i0+RI and j0..j0+RJ over the columns [c0, c0 + nv), nv a multiple of
// the vector width; adds the products to Gp (T x T, upper triangle).  DIAG: i0 == j0, RI == RJ.
template <class L, int RI, int RJ, bool DIAG>
void gram_tile(const typename L::T* const* rows, std::size_t T, std::size_t i0, std::size_t j0,
               std::size_t c0, std::size_t nv, double* Gp) {
    using R = typename L::R;
    const typename L::T* a[RI];
    const typename L::T* b[RJ];
    for (int i = 0; i < RI; ++i) a[i] = rows[i0 + i] + c0;
    for (int j = 0; j < RJ; ++j) b[j] = rows[j0 + j] + c0;
    R acc[RI][RJ];
#pragma GCC unroll 8
    for (int i = 0; i < RI; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < RJ; ++j) acc[i][j] = L::zero();
    }
    for (std::size_t c = 0; c < nv; c += L::W) {
        R x[RI];
#pragma GCC unroll 8
        for (int i = 0; i < RI; ++i) x[i] = L::load(a[i] + c);
        if constexpr (DIAG) {
#pragma GCC unroll 8
            for (int i = 0; i < RI; ++i) {
#pragma GCC unroll 8
                for (int j = i; j < RJ; ++j) acc[i][j] = L::fma(x[i], x[j], acc[i][j]);
            }
        } else {
            // One operand of the second row group at a time: RI * RJ accumulators, RI + 1
            // operands in registers (a 5 x 5 tile fits the 32 AVX-512 registers).
#pragma GCC unroll 8
            for (int j = 0; j < RJ; ++j) {
                const R y = L::load(b[j] + c);
#pragma GCC unroll 8
                for (int i = 0; i < RI; ++i) acc[i][j] = L::fma(x[i], y, acc[i][j]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RI; ++i) {
#pragma GCC unroll 8
        for (int j = 0; j < RJ; ++j) {
            if (!DIAG || j >= i) Gp[(i0 + i) * T + (j0 + j)] += L::sum(acc[i][j]);
        }
    }
}

template <class L>
using TileFn = void (*)(const typename L::T* const*, std::size_t, std::size_t, std::size_t,
                        std::size_t, std::size_t, double*);

template <class L, int RI, int RJ>
TileFn<L> tile_fn(bool diag) {
    if constexpr (RI == RJ) {
        if (diag) return &gram_tile<L, RI, RJ, true>;
    }
    return &gram_tile<L, RI, RJ, false>;
}

// The tile kernel for an ri x rj tile (1 <= ri, rj <= R <= 5).
template <class L, int R>
TileFn<L> pick_tile(int ri, int rj, bool diag) {
    static_assert(R >= 1 && R <= 5, "tile side must be 1..5");
    const int key = ri * 8 + rj;
#define MTL_TILE_CASE(A, B) \
    case (A) * 8 + (B):     \
        if constexpr ((A) <= R && (B) <= R) return tile_fn<L, A, B>(diag); \
        break;
    switch (key) {
        MTL_TILE_CASE(1, 1) MTL_TILE_CASE(1, 2) MTL_TILE_CASE(1, 3) MTL_TILE_CASE(1, 4)
        MTL_TILE_CASE(2, 1) MTL_TILE_CASE(2, 2) MTL_TILE_CASE(2, 3) MTL_TILE_CASE(2, 4)
        MTL_TILE_CASE(3, 1) MTL_TILE_CASE(3, 2) MTL_TILE_CASE(3, 3) MTL_TILE_CASE(3, 4)
        MTL_TILE_CASE(4, 1) MTL_TILE_CASE(4, 2) MTL_TILE_CASE(4, 3) MTL_TILE_CASE(4, 4)
        MTL_TILE_CASE(1, 5) MTL_TILE_CASE(2, 5) MTL_TILE_CASE(3, 5) MTL_TILE_CASE(4, 5)
        MTL_TILE_CASE(5, 1) MTL_TILE_CASE(5, 2) MTL_TILE_CASE(5, 3) MTL_TILE_CASE(5, 4)
        MTL_TILE_CASE(5, 5)
        default:
            break;
    }
#undef MTL_TILE_CASE
    return nullptr;
}

// The upper triangle of the Gram matrix of the columns [col0, col1), added to Gp.
template <class L, int R>
void gram_columns(const typename L::T* const* rows, std::size_t T, std::size_t col0,
                  std::size_t col1, std::size_t block, double* Gp) {
    for (std::size_t b0 = col0; b0 < col1; b0 += block) {
        const std::size_t n = min_size(block, col1 - b0);
        const std::size_t nv = n - n % static_cast<std::size_t>(L::W);
        if (T > static_cast<std::size_t>(R) && b0 + block < col1) {
            // The tiles visit the rows in turn, so the hardware prefetchers see short bursts on
            // T streams: ask for the next block of every row now (into L2), while this block's
            // tiles compute.
            const std::size_t next = min_size(block, col1 - b0 - block) * sizeof(typename L::T);
            for (std::size_t t = 0; t < T; ++t) {
                const char* p = reinterpret_cast<const char*>(rows[t] + b0 + block);
                for (std::size_t off = 0; off < next; off += 64) __builtin_prefetch(p + off, 0, 2);
            }
        }
        if (nv > 0) {
            for (std::size_t i0 = 0; i0 < T; i0 += R) {
                const int ri = static_cast<int>(min_size(R, T - i0));
                for (std::size_t j0 = i0; j0 < T; j0 += R) {
                    const int rj = static_cast<int>(min_size(R, T - j0));
                    pick_tile<L, R>(ri, rj, i0 == j0)(rows, T, i0, j0, b0, nv, Gp);
                }
            }
        }
        for (std::size_t i = 0; nv < n && i < T; ++i) {  // the last partial vector, in float64
            for (std::size_t j = i; j < T; ++j) {
                double s = 0.0;
                for (std::size_t c = b0 + nv; c < b0 + n; ++c) {
                    s += static_cast<double>(L::scalar(rows[i][c])) *
                         static_cast<double>(L::scalar(rows[j][c]));
                }
                Gp[i * T + j] += s;
            }
        }
    }
}

template <class I, Elem E>
void gram_kernel(const GramArgs& a) {
    using L = Lane<I, E>;
    using T_ = typename L::T;
    const auto rows = reinterpret_cast<const T_* const*>(a.rows);
    const std::size_t T = a.T;
    const GramPlan plan = gram_plan(T, a.D, sizeof(T_));
    const std::size_t span = plan.block * plan.blocks_per_chunk;
    double* parts = plan.chunks > 1 ? a.scratch : a.G;
    for (std::size_t k = 0; k < plan.chunks * T * T; ++k) parts[k] = 0.0;
    const long long chunks = static_cast<long long>(plan.chunks);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(a.num_threads) if (chunks > 1)
#endif
    for (long long c = 0; c < chunks; ++c) {
        const std::size_t col0 = static_cast<std::size_t>(c) * span;
        const std::size_t col1 = min_size(a.D, col0 + span);
        gram_columns<L, I::TILE>(rows, T, col0, col1, plan.block, parts + c * T * T);
    }
    for (std::size_t i = 0; i < T; ++i) {
        for (std::size_t j = i; j < T; ++j) {
            double s = parts[i * T + j];
            for (std::size_t c = 1; c < plan.chunks; ++c) s += parts[c * T * T + i * T + j];
            a.G[i * T + j] = s;
            a.G[j * T + i] = s;
        }
    }
}

// out[k] (+)= acc[k] for k < n, computed in the wider of the two types, rounded once to out's.
// Scalar: the float64 accumulators of float64 rows, and float64 outputs.
template <class Acc>
void emit_scalar(const CombineArgs& a, std::size_t c0, const Acc* acc, std::size_t n) {
    switch (a.out_elem) {
        case Elem::F32: {
            float* o = static_cast<float*>(a.out) + c0;
            for (std::size_t k = 0; k < n; ++k) {
                o[k] = a.accumulate ? static_cast<float>(o[k] + acc[k]) : static_cast<float>(acc[k]);
            }
            break;
        }
        case Elem::F64: {
            double* o = static_cast<double*>(a.out) + c0;
            for (std::size_t k = 0; k < n; ++k) {
                o[k] = a.accumulate ? o[k] + static_cast<double>(acc[k]) : static_cast<double>(acc[k]);
            }
            break;
        }
        case Elem::BF16: {
            std::uint16_t* o = static_cast<std::uint16_t*>(a.out) + c0;
            for (std::size_t k = 0; k < n; ++k) {
                const float v = a.accumulate ? static_cast<float>(bf16_to_float(o[k]) + acc[k])
                                             : static_cast<float>(acc[k]);
                o[k] = float_to_bf16(v);
            }
            break;
        }
        case Elem::F16: {
            std::uint16_t* o = static_cast<std::uint16_t*>(a.out) + c0;
            for (std::size_t k = 0; k < n; ++k) {
                const float v = a.accumulate ? static_cast<float>(f16_to_float(o[k]) + acc[k])
                                             : static_cast<float>(acc[k]);
                o[k] = float_to_f16(v);
            }
            break;
        }
    }
}

// The same for float32 accumulators, whole vectors in registers (the same arithmetic: out is
// widened to float32, added, rounded once), the tail by emit_scalar.
template <class I>
void emit_f32(const CombineArgs& a, std::size_t c0, const float* acc, std::size_t n) {
    constexpr std::size_t W = static_cast<std::size_t>(I::W);
    const std::size_t nv = n - n % W;
    switch (a.out_elem) {
        case Elem::F32: {
            float* o = static_cast<float*>(a.out) + c0;
            if (a.stream && reinterpret_cast<std::uintptr_t>(o) % (W * sizeof(float)) == 0) {
                // Streaming stores: the output is not read first (no write-allocate), then
                // fenced so the chunk is visible before the thread moves on.
                for (std::size_t k = 0; k < nv; k += W) I::fstream(o + k, I::fload(acc + k));
                I::fence();
                break;
            }
            for (std::size_t k = 0; k < nv; k += W) {
                typename I::F v = I::fload(acc + k);
                if (a.accumulate) v = I::fadd(I::fload(o + k), v);
                I::fstore(o + k, v);
            }
            break;
        }
        case Elem::BF16: {
            std::uint16_t* o = static_cast<std::uint16_t*>(a.out) + c0;
            for (std::size_t k = 0; k < nv; k += W) {
                typename I::F v = I::fload(acc + k);
                if (a.accumulate) v = I::fadd(I::fload_bf16(o + k), v);
                I::fstore_bf16(o + k, v);
            }
            break;
        }
        case Elem::F16: {
            std::uint16_t* o = static_cast<std::uint16_t*>(a.out) + c0;
            for (std::size_t k = 0; k < nv; k += W) {
                typename I::F v = I::fload(acc + k);
                if (a.accumulate) v = I::fadd(I::fload_f16(o + k), v);
                I::fstore_f16(o + k, v);
            }
            break;
        }
        case Elem::F64:
            return emit_scalar<float>(a, c0, acc, n);
    }
    if (nv < n) emit_scalar<float>(a, c0 + nv, acc + nv, n - nv);
}

//: Columns per combine chunk: the float32 accumulator (8 KiB; 16 KiB for float64 rows) stays
//: in the L1 cache while the rows stream through it.
constexpr std::size_t COMBINE_CHUNK = 2048;
//: Kept rows summed per pass over a chunk, in registers: each pass reads the accumulator once
//: (not at all for the first pass) for up to this many rows streamed from memory.
constexpr int COMBINE_GROUP = 8;

// acc[0:nv) = (first ? 0 : acc) + sum_{r < N} w[r] * g[r][0:nv), one row after the other per lane
// (acc = fma(w_r, g_r, acc), the order of a row-by-row sum, so the result does not depend on the
// grouping); nv is a multiple of the vector width.
template <class L, int N>
void combine_group(const typename L::T* const* g, const typename L::Acc* w, std::size_t nv,
                   bool first, typename L::Acc* acc) {
    using R = typename L::R;
    R wv[N];
#pragma GCC unroll 8
    for (int r = 0; r < N; ++r) wv[r] = L::set1(w[r]);
    const typename L::T* p[N];
#pragma GCC unroll 8
    for (int r = 0; r < N; ++r) p[r] = g[r];
    for (std::size_t k = 0; k < nv; k += L::W) {
        R s = first ? L::zero() : L::load_acc(acc + k);
#pragma GCC unroll 8
        for (int r = 0; r < N; ++r) s = L::fma(wv[r], L::load(p[r] + k), s);
        L::store(acc + k, s);
    }
}

template <class L>
using GroupFn = void (*)(const typename L::T* const*, const typename L::Acc*, std::size_t, bool,
                         typename L::Acc*);

template <class L>
GroupFn<L> pick_group(int n) {
    switch (n) {
        case 1: return &combine_group<L, 1>;
        case 2: return &combine_group<L, 2>;
        case 3: return &combine_group<L, 3>;
        case 4: return &combine_group<L, 4>;
        case 5: return &combine_group<L, 5>;
        case 6: return &combine_group<L, 6>;
        case 7: return &combine_group<L, 7>;
        default: return &combine_group<L, 8>;
    }
}

template <class I, Elem E>
void combine_kernel(const CombineArgs& a) {
    using L = Lane<I, E>;
    using T_ = typename L::T;
    using Acc = typename L::Acc;
    const auto rows = reinterpret_cast<const T_* const*>(a.rows);
    const long long chunks = static_cast<long long>((a.D + COMBINE_CHUNK - 1) / COMBINE_CHUNK);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(a.num_threads) if (a.num_threads > 1 && chunks > 1)
#endif
    for (long long ch = 0; ch < chunks; ++ch) {
        alignas(64) Acc acc[COMBINE_CHUNK];
        const std::size_t c0 = static_cast<std::size_t>(ch) * COMBINE_CHUNK;
        const std::size_t n = min_size(COMBINE_CHUNK, a.D - c0);
        const std::size_t nv = n - n % static_cast<std::size_t>(L::W);
        if (a.num_kept == 0) {
            for (std::size_t k = 0; k < n; ++k) acc[k] = Acc(0);
        }
        for (std::size_t r0 = 0; r0 < a.num_kept; r0 += COMBINE_GROUP) {
            const int m = static_cast<int>(min_size(COMBINE_GROUP, a.num_kept - r0));
            const T_* g[COMBINE_GROUP];
            Acc w[COMBINE_GROUP];
            for (int r = 0; r < m; ++r) {
                g[r] = rows[a.kept[r0 + r]] + c0;
                w[r] = static_cast<Acc>(a.weights[r0 + r]);
            }
            if (nv > 0) pick_group<L>(m)(g, w, nv, r0 == 0, acc);
            for (std::size_t k = nv; k < n; ++k) {  // the last partial vector
                Acc s = r0 == 0 ? Acc(0) : acc[k];
                for (int r = 0; r < m; ++r) s += w[r] * L::scalar(g[r][k]);
                acc[k] = s;
            }
        }
        if constexpr (E == Elem::F64) {
            emit_scalar<Acc>(a, c0, acc, n);
        } else {
            emit_f32<I>(a, c0, acc, n);
        }
    }
}

template <class I>
void gram_dispatch(const GramArgs& a) {
    switch (a.elem) {
        case Elem::F32: return gram_kernel<I, Elem::F32>(a);
        case Elem::F64: return gram_kernel<I, Elem::F64>(a);
        case Elem::BF16: return gram_kernel<I, Elem::BF16>(a);
        case Elem::F16: return gram_kernel<I, Elem::F16>(a);
    }
}

template <class I>
void combine_dispatch(const CombineArgs& a) {
    switch (a.elem) {
        case Elem::F32: return combine_kernel<I, Elem::F32>(a);
        case Elem::F64: return combine_kernel<I, Elem::F64>(a);
        case Elem::BF16: return combine_kernel<I, Elem::BF16>(a);
        case Elem::F16: return combine_kernel<I, Elem::F16>(a);
    }
}
