// Running mean / variance of K independent float64 streams (Welford 1962; Chan et al. 1979).
//
// Pure C++17, no Python: the pybind11 bindings live in welford.cpp.  Per stream k the state is
// (count n, mean, m2).  One update with value x (n <- n + 1, delta = x - mean_old):
//
//   plain (decay unset), Groenendijk et al. 2021 eq. 7-8:
//       mean = mean_old + delta / n
//       m2   = m2_old + delta * (x - mean)                 var = m2 / n
//   decay d in [0, 1], fixed mean factor alpha = 1 - d (first observation: mean = x, m2 = 0):
//       mean = mean_old + alpha * delta
//       decay_variance = true  (West 1979, exponentially weighted):
//           m2 = d * (m2_old + alpha * delta * delta)      var = m2   (m2 *is* the variance)
//       decay_variance = false (Welford's m2 around the decayed mean):
//           m2 = m2_old + delta * (x - mean)               var = m2 / n
//
// Chan's merge (plain accumulators only), n = na + nb, delta = mean_b - mean_a:
//       mean = mean_a + delta * nb / n,   m2 = m2_a + m2_b + delta^2 * na * nb / n
//
// Not thread-safe: one accumulator must not be mutated from two threads at once.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

// Keep a*b + c as two roundings (no fused multiply-add), so the results are bit-identical to the
// torch twin (mtl_fast.running_stats.TorchRunningStats) on FMA targets too.  GCC ignores this
// pragma in C++; it needs -ffp-contract=off on the command line (baseline x86-64 has no FMA).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

namespace mtl_fast {

class Welford {
public:
    // Throws std::invalid_argument for num_streams < 1 or a decay outside [0, 1].
    Welford(std::int64_t num_streams, std::optional<double> decay, bool decay_variance,
            bool skip_nonfinite)
        : decay_(decay),
          decay_variance_(decay_variance),
          skip_nonfinite_(skip_nonfinite) {
        if (num_streams < 1) {
            throw std::invalid_argument("num_streams must be >= 1, got " +
                                        std::to_string(num_streams));
        }
        if (decay_ && !(*decay_ >= 0.0 && *decay_ <= 1.0)) {  // also rejects NaN
            throw std::invalid_argument("decay must be None or a number in [0, 1], got " +
                                        std::to_string(*decay_));
        }
        if (decay_) {
            d_ = *decay_;
            alpha_ = 1.0 - d_;
        }
        const auto k = static_cast<std::size_t>(num_streams);
        count_.assign(k, 0);
        mean_.assign(k, 0.0);
        m2_.assign(k, 0.0);
        last_nonfinite_.assign(k, 0);
    }

    std::size_t num_streams() const { return count_.size(); }
    const std::optional<double>& decay() const { return decay_; }
    bool decay_variance() const { return decay_variance_; }
    bool skip_nonfinite() const { return skip_nonfinite_; }
    const std::vector<std::int64_t>& count() const { return count_; }
    const std::vector<double>& mean() const { return mean_; }
    const std::vector<double>& m2() const { return m2_; }
    const std::vector<std::uint8_t>& last_nonfinite() const { return last_nonfinite_; }

    // One step for the streams selected by `mask` (all if null); x and mask have num_streams()
    // entries.  Records in last_nonfinite() which selected entries of x are NaN/Inf and returns
    // their number.  With skip_nonfinite those streams are left untouched; otherwise a non-zero
    // return means nothing was updated (the caller raises).  Does not allocate or throw.
    std::size_t update(const double* x, const std::uint8_t* mask) {
        const std::size_t k_n = count_.size();
        std::size_t bad = 0;
        for (std::size_t k = 0; k < k_n; ++k) {
            const bool b = (mask == nullptr || mask[k] != 0) && !std::isfinite(x[k]);
            last_nonfinite_[k] = b ? 1 : 0;
            bad += b ? 1 : 0;
        }
        if (bad != 0 && !skip_nonfinite_) {
            return bad;
        }
        for (std::size_t k = 0; k < k_n; ++k) {
            if ((mask == nullptr || mask[k] != 0) && last_nonfinite_[k] == 0) {
                step(k, x[k]);
            }
        }
        return bad;
    }

    // Chan et al. (1979) pairwise combination; `other` may be *this.
    void merge(const Welford& other) {
        if (other.num_streams() != num_streams()) {
            throw std::invalid_argument("merge: num_streams differ (" +
                                        std::to_string(num_streams()) + " vs " +
                                        std::to_string(other.num_streams()) + ")");
        }
        if (decay_ || other.decay_) {
            throw std::invalid_argument(
                "merge is defined only for plain Welford accumulators (decay=None); "
                "exponentially weighted statistics depend on the order of the observations");
        }
        for (std::size_t k = 0; k < count_.size(); ++k) {
            const std::int64_t nb = other.count_[k];
            const std::int64_t na = count_[k];
            if (nb == 0) {
                continue;
            }
            const double mean_b = other.mean_[k];
            const double m2_b = other.m2_[k];
            if (na == 0) {
                count_[k] = nb;
                mean_[k] = mean_b;
                m2_[k] = m2_b;
                continue;
            }
            const std::int64_t n = na + nb;
            const double fa = static_cast<double>(na);
            const double fb = static_cast<double>(nb);
            const double fn = static_cast<double>(n);
            const double delta = mean_b - mean_[k];
            mean_[k] += delta * (fb / fn);
            m2_[k] = m2_[k] + m2_b + delta * delta * (fa * fb / fn);
            count_[k] = n;
        }
    }

    // Back to the initial state (count 0, mean 0, m2 0) for the streams in `mask` (all if null).
    void reset(const std::uint8_t* mask) {
        for (std::size_t k = 0; k < count_.size(); ++k) {
            if (mask == nullptr || mask[k] != 0) {
                count_[k] = 0;
                mean_[k] = 0.0;
                m2_[k] = 0.0;
                last_nonfinite_[k] = 0;
            }
        }
    }

    // Replace the state (arrays of num_streams() entries).  Validates everything first and throws
    // std::invalid_argument (leaving the state unchanged) on a negative count, a non-finite mean
    // or m2, a negative m2, or a stream with count 0 whose mean or m2 is not 0.
    void set_state(const std::int64_t* count, const double* mean, const double* m2) {
        for (std::size_t k = 0; k < count_.size(); ++k) {
            const std::string where = " (stream " + std::to_string(k) + ")";
            if (count[k] < 0) {
                throw std::invalid_argument("state: negative count" + where);
            }
            if (!std::isfinite(mean[k]) || !std::isfinite(m2[k])) {
                throw std::invalid_argument("state: non-finite mean or m2" + where);
            }
            if (m2[k] < 0.0) {
                throw std::invalid_argument("state: negative m2" + where);
            }
            if (count[k] == 0 && (mean[k] != 0.0 || m2[k] != 0.0)) {
                throw std::invalid_argument("state: count 0 with a non-zero mean or m2" + where);
            }
        }
        for (std::size_t k = 0; k < count_.size(); ++k) {
            count_[k] = count[k];
            mean_[k] = mean[k];
            m2_[k] = m2[k];
            last_nonfinite_[k] = 0;
        }
    }

    // Population variance: m2 / n (0 at n = 0), or m2 itself for the exponentially weighted mode.
    double var(std::size_t k) const {
        if (ew_variance()) {
            return m2_[k];
        }
        return count_[k] == 0 ? 0.0 : m2_[k] / static_cast<double>(count_[k]);
    }

    // Unbiased variance, 0 where it is undefined (n <= 1).  Plain and decay_variance=false:
    // m2 / (n - 1).  Exponentially weighted: var / (1 - sum_i w_i^2) (reliability weights), with
    // 1 - sum_i w_i^2 = 2 d (1 - d^(2(n-1))) / (1 + d); 0 for d = 0 or d = 1 (one effective point).
    double sample_var(std::size_t k) const {
        const std::int64_t n = count_[k];
        if (n <= 1) {
            return 0.0;
        }
        if (!ew_variance()) {
            return m2_[k] / static_cast<double>(n - 1);
        }
        if (d_ <= 0.0 || d_ >= 1.0) {
            return 0.0;
        }
        const double p = -std::expm1(2.0 * static_cast<double>(n - 1) * std::log(d_));
        return m2_[k] * (1.0 + d_) / (2.0 * d_ * p);
    }

private:
    bool ew_variance() const { return decay_.has_value() && decay_variance_; }

    void step(std::size_t k, double x) {
        const std::int64_t n = ++count_[k];
        if (n == 1) {
            mean_[k] = x;
            m2_[k] = 0.0;
            return;
        }
        const double delta = x - mean_[k];
        if (!decay_) {
            mean_[k] += delta / static_cast<double>(n);
            m2_[k] += delta * (x - mean_[k]);
        } else if (decay_variance_) {
            mean_[k] += alpha_ * delta;
            m2_[k] = d_ * (m2_[k] + alpha_ * delta * delta);
        } else {
            mean_[k] += alpha_ * delta;
            m2_[k] += delta * (x - mean_[k]);
        }
    }

    std::optional<double> decay_;
    double d_ = 0.0;      // *decay_ when set
    double alpha_ = 1.0;  // 1 - d_
    bool decay_variance_;
    bool skip_nonfinite_;
    std::vector<std::int64_t> count_;
    std::vector<double> mean_;
    std::vector<double> m2_;
    std::vector<std::uint8_t> last_nonfinite_;
};

}  // namespace mtl_fast
