// BatchNorm: batch statistics, folding into a scale and shift (applied by
// the readers of concat.cuh), a stored BatchNorm output, and backward.

// ---- forward ----------------------------------------------------------------

// Per-channel mean and biased variance of one buffer over (N, H, W).
// First kernel: per (channel, chunk), the count, mean and sum of squared
// deviations of the chunk (two passes over it, in double).
template <int OFF, int C, int HW>
SN_DEVICE void batch_stats_partial(const Args& a) {
    SN_FOR_EACH(i, (i64)C * SN_CHUNKS) {
        const int c = (int)(i / SN_CHUNKS), p = (int)(i % SN_CHUNKS);
        const stored* base = a.act + (i64)OFF * a.n;
        i64 b, e;
        chunk_range((i64)a.n * HW, SN_CHUNKS, p, b, e);
        double sum = 0.0;
        SN_NO_UNROLL for (i64 k = b; k < e; ++k) sum += ld(base[((k / HW) * C + c) * HW + k % HW]);
        const double cnt = (double)(e - b);
        const double mean = cnt > 0 ? sum / cnt : 0.0;
        double m2 = 0.0;
        SN_NO_UNROLL for (i64 k = b; k < e; ++k) {
            const double d = ld(base[((k / HW) * C + c) * HW + k % HW]) - mean;
            m2 += d * d;
        }
        double* out = a.partials + 3 * i;
        out[0] = cnt;
        out[1] = mean;
        out[2] = m2;
    }
}

// Second kernel: per channel, combines its chunks in order (Chan et al.'s
// pairwise update) into the mean and biased variance.
template <int C, int AUX>
SN_DEVICE void batch_stats_final(const Args& a) {
    SN_FOR_EACH(c, C) {
        double cnt = 0.0, mean = 0.0, m2 = 0.0;
        SN_NO_UNROLL for (int p = 0; p < SN_CHUNKS; ++p) {
            const double* q = a.partials + 3 * (c * SN_CHUNKS + p);
            if (q[0] == 0.0) continue;
            const double n_ab = cnt + q[0];
            const double delta = q[1] - mean;
            mean += delta * q[0] / n_ab;
            m2 += q[2] + delta * delta * cnt * q[0] / n_ab;
            cnt = n_ab;
        }
        a.aux[AUX + c] = (real)mean;
        a.aux[AUX + C + c] = (real)(m2 / cnt);
    }
}

// Folds a node's BatchNorm into scale/shift (and keeps mean, 1/std for
// backward); in training mode from the sources' batch statistics, updating
// the running statistics as the CPU path does, else from the running ones.
template <class L>
SN_DEVICE void bn_fold(const Args& a) {
    SN_FOR_EACH(cg, L::CIN) {
        int s, c;
        locate<L>((int)cg, s, c);
        real* run_mean = a.state + L::RUNNING + cg;
        real* run_var = a.state + L::RUNNING + L::CIN + cg;
        real mean, var;
        if (a.train) {
            mean = a.aux[L::stats(s) + c];
            var = a.aux[L::stats(s) + L::ch(s) + c];
            const real m = L::MOMENTUM, one_m = L::ONE_MINUS_MOMENTUM;
            const i64 count = (i64)a.n * L::H * L::W;
            real correction = (real)1;
            if (L::UNBIASED && count > 1) correction = (real)((double)count / (double)(count - 1));
            *run_mean = m * *run_mean + one_m * mean;
            *run_var = m * *run_var + one_m * var * correction;
        } else {
            mean = *run_mean;
            var = *run_var;
        }
        const real inv_std = (real)1 / sqrt(var + L::EPS);
        const real scale = a.params[L::GAMMA + cg] * inv_std;
        a.aux[L::PRE_AUX + cg] = scale;
        a.aux[L::PRE_AUX + L::CIN + cg] = a.params[L::GAMMA + L::CIN + cg] - mean * scale;
        a.aux[L::PRE_AUX + 2 * L::CIN + cg] = mean;
        a.aux[L::PRE_AUX + 3 * L::CIN + cg] = inv_std;
    }
}

// Stores the transform of the input (a BatchNorm whose output is a buffer).
template <class L>
SN_DEVICE void affine_forward(const Args& a) {
    constexpr int HW = L::H * L::W;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HW) {
        const Nchw e = nchw(i, L::CIN, 1, HW);
        const int p = e.x, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        a.act[L::OUT * a.n + i] = st(pre_apply<L>(a, cg, ld(src_plane<L>(a, s, img, c)[p])));
    }
}

// ---- backward ---------------------------------------------------------------

// The gradient reaching the BatchNorm's output through the ReLU.
template <class L>
SN_DEVICE real relu_masked(const Args& a, int cg, real x, real g) {
    if (L::RELU && a.aux[L::PRE_AUX + cg] * x + a.aux[L::PRE_AUX + L::CIN + cg] <= (real)0) return (real)0;
    return g;
}

// BatchNorm backward, first half: per channel, sum(da) and sum(da * xhat),
// which are also the beta and gamma gradients. First kernel: per (channel,
// chunk of its N*H*W values), the two sums of the chunk.
template <class L>
SN_DEVICE void bn_backward_sums_partial(const Args& a) {
    constexpr int HW = L::H * L::W;
    const stored* dz = a.gact + L::DZ * a.n;
    SN_FOR_EACH(i, (i64)L::CIN * SN_CHUNKS) {
        const int cg = (int)(i / SN_CHUNKS), p = (int)(i % SN_CHUNKS);
        int s, c;
        locate<L>(cg, s, c);
        const real mean = a.aux[L::PRE_AUX + 2 * L::CIN + cg];
        i64 b, e;
        chunk_range((i64)a.n * HW, SN_CHUNKS, p, b, e);
        double sum_da = 0.0, sum_da_xc = 0.0;
        SN_NO_UNROLL for (i64 k = b; k < e; ++k) {
            const int img = (int)(k / HW), q = (int)(k % HW);
            const real x = ld(src_plane<L>(a, s, img, c)[q]);
            const real da = relu_masked<L>(a, cg, x, ld(dz[((i64)img * L::CIN + cg) * HW + q]));
            sum_da += da;
            sum_da_xc += (double)(da * (x - mean));
        }
        a.partials[2 * i] = sum_da;
        a.partials[2 * i + 1] = sum_da_xc;
    }
}

// Second kernel: per channel, the chunks' sums in order.
template <class L>
SN_DEVICE void bn_backward_sums_final(const Args& a) {
    SN_FOR_EACH(cg, L::CIN) {
        double sum_da = 0.0, sum_da_xc = 0.0;
        SN_NO_UNROLL for (int p = 0; p < SN_CHUNKS; ++p) {
            sum_da += a.partials[2 * (cg * SN_CHUNKS + p)];
            sum_da_xc += a.partials[2 * (cg * SN_CHUNKS + p) + 1];
        }
        const double sum_da_xhat = sum_da_xc * (double)a.aux[L::PRE_AUX + 3 * L::CIN + cg];
        a.aux[L::PRE_AUX + 4 * L::CIN + cg] = (real)sum_da;
        a.aux[L::PRE_AUX + 5 * L::CIN + cg] = (real)sum_da_xhat;
        a.grads[L::GAMMA + cg] = (real)sum_da_xhat;
        a.grads[L::GAMMA + L::CIN + cg] = (real)sum_da;
    }
}

// The sources' gradients from dz (through BN and ReLU where the node has
// them). A source's first contributor in backward order writes, the others
// add: every element of a source gets exactly one contribution per node.
template <class L>
SN_DEVICE void backward_to_sources(const Args& a) {
    constexpr int HW = L::H * L::W;
    const stored* dz = a.gact + L::DZ * a.n;
    const real m = (real)a.n * HW;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HW) {
        const Nchw e = nchw(i, L::CIN, 1, HW);
        const int p = e.x, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        if (L::grad(s) < 0) continue;
        real d = ld(dz[i]);
        if (L::PRE) {
            const real x = ld(src_plane<L>(a, s, img, c)[p]);
            const real da = relu_masked<L>(a, cg, x, d);
            const real scale = a.aux[L::PRE_AUX + cg];
            if (a.train) {
                const real mean = a.aux[L::PRE_AUX + 2 * L::CIN + cg];
                const real inv_std = a.aux[L::PRE_AUX + 3 * L::CIN + cg];
                const real mean_da = a.aux[L::PRE_AUX + 4 * L::CIN + cg] / m;
                const real mean_da_xhat = a.aux[L::PRE_AUX + 5 * L::CIN + cg] / m;
                d = scale * (da - mean_da - (x - mean) * inv_std * mean_da_xhat);
            } else {
                d = scale * da;
            }
        }
        stored* dx = a.gact + L::grad(s) * a.n + ((i64)img * L::ch(s) + c) * HW + p;
        if (L::first(s)) *dx = st(d);
        else *dx = st(ld(*dx) + d);
    }
}
