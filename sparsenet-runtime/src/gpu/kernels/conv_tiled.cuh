// ---- tiled implicit GEMM -------------------------------------------------------
//
// The convolutions as matrix products computed tile by tile in shared memory:
// C[m][n] = sum_k A[m][k] B[k][n], where a row m is an output position
// (image, y, x), a column n an output channel, and k runs over (input
// channel, filter tap). A is never stored: each thread loads its row's k
// values straight from where the concatenation's sources live, applying the
// folded BatchNorm-ReLU in registers (the implicit GEMM). A problem type
// (ConvForward, ConvBackwardData below) says what A, B and the output are.
//
// A block is SN_TILE_THREADS threads (4 warps) computing a SN_TILE_M x 8*NT
// tile of C; each warp owns 32 rows (two 16-row mma tiles) by all 8*NT
// columns. The K loop stages SN_TILE_K values of A and B per step in shared
// memory. The product of a warp's tiles is mma.sync m16n8k8 in TF32 with f32
// accumulation when SN_TF32 is 1 (tensor cores), else FFMA in the same
// accumulator layout, so both share the loaders and the epilogue.

// Set by the host per compiled program (GpuProgram::full_source).
#ifndef SN_TF32
#define SN_TF32 0
#endif

#define SN_TILE_M 128
#define SN_TILE_K 16
#define SN_TILE_THREADS 128

// One k-step of 8 for the calling warp: rows wm0 .. wm0+31 of the block tile
// by all 8*NT columns. `As` is [k][row] with row stride LDA, `Bs` [k][col]
// with stride LDB; lane (g = lane/4, t = lane%4) owns, per (mt, nt), rows
// wm0+16mt+g and +8, columns 8nt+2t and +1 (the mma accumulator layout).
template <int NT, int LDA, int LDB>
SN_DEVICE void warp_tile_step(real acc[2][NT][4], const real* As, const real* Bs, int kk, int wm0) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#if SN_TF32
    real af[2][4], bf[NT][2];
    for (int mt = 0; mt < 2; ++mt) {
        const int r = wm0 + mt * 16 + g;
        af[mt][0] = As[(kk + t) * LDA + r];
        af[mt][1] = As[(kk + t) * LDA + r + 8];
        af[mt][2] = As[(kk + t + 4) * LDA + r];
        af[mt][3] = As[(kk + t + 4) * LDA + r + 8];
    }
    for (int nt = 0; nt < NT; ++nt) {
        bf[nt][0] = Bs[(kk + t) * LDB + nt * 8 + g];
        bf[nt][1] = Bs[(kk + t + 4) * LDB + nt * 8 + g];
    }
    sn_mma_tiles<2, NT>(acc, af, bf);
#else
    for (int k = kk; k < kk + 8; ++k) {
        real av[2][2], bv[NT][2];
        for (int mt = 0; mt < 2; ++mt)
            for (int h = 0; h < 2; ++h) av[mt][h] = As[k * LDA + wm0 + mt * 16 + g + 8 * h];
        for (int nt = 0; nt < NT; ++nt)
            for (int j = 0; j < 2; ++j) bv[nt][j] = Bs[k * LDB + nt * 8 + 2 * t + j];
        for (int mt = 0; mt < 2; ++mt)
            for (int nt = 0; nt < NT; ++nt)
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] += av[mt][i / 2] * bv[nt][i % 2];
    }
#endif
}

// The block loop of a tiled GEMM problem P (see ConvForward for what P
// provides). P::SPLITS > 1 splits the K range into that many fixed chunks
// (split-K), each block computing one chunk's partial product, which P
// stores apart for a later fixed-order sum (deterministic). Blocks take
// tiles grid-stride, so any grid size is correct; the launch asks for at
// least one block per tile.
template <class P, int NT>
SN_DEVICE void tiled_gemm(const Args& a) {
    constexpr int BM = SN_TILE_M, KC = SN_TILE_K, COT = 8 * NT;
    // Row strides padded by 8 so that the fragment reads of a warp (rows g,
    // k rows t) fall in 32 different banks.
    constexpr int LDA = BM + 8, LDB = COT + 8;
    constexpr int CT = (P::N + COT - 1) / COT;
    __shared__ real As[KC * LDA];
    __shared__ real Bs[KC * LDB];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const i64 M = P::rows(a), KD = P::kdim(a);
    const i64 tiles = (M + BM - 1) / BM * CT * P::SPLITS;
    SN_NO_UNROLL for (i64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int split = (int)(tile % P::SPLITS);
        const i64 rest = tile / P::SPLITS;
        const int n0 = (int)(rest % CT) * COT;
        const i64 m0 = rest / CT * BM;
        i64 kbeg, kend;
        chunk_range(KD, P::SPLITS, split, kbeg, kend);
        const bool loads = m0 + tid < M;
        const typename P::Row row = P::row(a, loads ? m0 + tid : m0);
        real acc[2][NT][4];
        for (int mt = 0; mt < 2; ++mt)
            for (int nt = 0; nt < NT; ++nt)
                for (int i = 0; i < 4; ++i) acc[mt][nt][i] = (real)0;
        SN_NO_UNROLL for (i64 k0 = kbeg; k0 < kend; k0 += KC) {
            if (loads) P::load_a(a, row, k0, kend, As + tid, LDA);
            else
                for (int j = 0; j < KC; ++j) As[j * LDA + tid] = (real)0;
            // B with k fastest across threads: consecutive weights in memory.
            for (int e = tid; e < KC * COT; e += SN_TILE_THREADS) {
                const int j = e % KC, nn = e / KC;
                const i64 k = k0 + j;
                const int n = n0 + nn;
                Bs[j * LDB + nn] = (k < kend && n < P::N) ? P::b(a, k, n) : (real)0;
            }
            __syncthreads();
            for (int kk = 0; kk < KC; kk += 8) warp_tile_step<NT, LDA, LDB>(acc, As, Bs, kk, warp * 32);
            __syncthreads();
        }
        for (int mt = 0; mt < 2; ++mt)
            for (int h = 0; h < 2; ++h) {
                const i64 m = m0 + warp * 32 + mt * 16 + g + 8 * h;
                if (m >= M) continue;
                const typename P::Row r = P::row(a, m);
                for (int nt = 0; nt < NT; ++nt)
                    for (int j = 0; j < 2; ++j) {
                        const int n = n0 + nt * 8 + 2 * t + j;
                        if (n < P::N) P::store(a, r, n, split, acc[mt][nt][2 * h + j]);
                    }
            }
    }
}

// The forward convolution of node L: rows are output positions, columns
// output channels, k = (concatenated input channel) * K*K + filter tap, the
// order of the weights' rows, so B is the weight matrix as stored.
//
// What a problem P provides: N (columns), SPLITS, rows(a) and kdim(a) (M and
// K for the batch), a Row type and row(a, m) (what a row's loads and stores
// need), load_a(a, row, k0, kend, dst, ld) (the row's values of k0 .. k0 +
// SN_TILE_K - 1, zero from kend on, to dst[j * ld]), b(a, k, n) and
// store(a, row, n, split, value).
template <class L>
struct ConvForward {
    static constexpr int KK = L::K * L::K;
    static constexpr int KDIM = L::CIN * KK, N = L::COUT, SPLITS = 1;
    struct Row {
        int img, y, x;
    };
    SN_DEVICE i64 rows(const Args& a) { return (i64)a.n * L::HO * L::WO; }
    SN_DEVICE i64 kdim(const Args&) { return KDIM; }
    SN_DEVICE Row row(const Args&, i64 m) {
        Row r;
        r.x = (int)(m % L::WO);
        r.y = (int)((m / L::WO) % L::HO);
        r.img = (int)(m / ((i64)L::WO * L::HO));
        return r;
    }
    // Row r's values of k0 .. k0+SN_TILE_K-1 (zero past the end and in the
    // padding, which is zero after BN-ReLU as in the CPU path). Walks the
    // channels and their sources incrementally instead of locating each k.
    SN_DEVICE void load_a(const Args& a, const Row& r, i64 k0, i64, real* dst, int lda) {
        int cg = (int)(k0 / KK), tap = (int)(k0 % KK), s = 0, c = 0;
        if (cg < L::CIN) locate<L>(cg, s, c);
        const stored* plane = cg < L::CIN ? src_plane<L>(a, s, r.img, c) : nullptr;
        SN_UNROLL_4 for (int j = 0; j < SN_TILE_K; ++j) {
            real x = (real)0;
            if (cg < L::CIN) {
                const int iy = r.y * L::STRIDE - L::PAD + tap / L::K;
                const int ix = r.x * L::STRIDE - L::PAD + tap % L::K;
                if (iy >= 0 && iy < L::H && ix >= 0 && ix < L::W) x = pre_apply<L>(a, cg, ld(plane[iy * L::W + ix]));
            }
            dst[j * lda] = x;
            if (++tap == KK) {
                tap = 0;
                if (++cg < L::CIN) {
                    if (s + 1 < L::S && cg >= L::cbeg(s + 1)) ++s, c = 0;
                    else ++c;
                    plane = src_plane<L>(a, s, r.img, c);
                }
            }
        }
    }
    SN_DEVICE real b(const Args& a, i64 k, int n) { return a.params[L::WEIGHT + (i64)n * KDIM + k]; }
    SN_DEVICE void store(const Args& a, const Row& r, int n, int, real v) {
        if (L::BIAS >= 0) v += a.params[L::BIAS + n];
        a.act[L::OUT * a.n + (((i64)r.img * L::COUT + n) * L::HO + r.y) * L::WO + r.x] = st(v);
    }
};

// The data gradient of a stride-1 convolution, dz = d loss / d(transformed
// input): the convolution of the output gradient with the flipped filter.
// Rows are input positions, columns input channels, k = output channel *
// K*K + tap.
template <class L>
struct ConvBackwardData {
    static_assert(L::STRIDE == 1, "the tiled data gradient is for stride-1 convolutions");
    static constexpr int KK = L::K * L::K;
    static constexpr int KDIM = L::COUT * KK, N = L::CIN, SPLITS = 1;
    struct Row {
        int img, y, x;
    };
    SN_DEVICE i64 rows(const Args& a) { return (i64)a.n * L::H * L::W; }
    SN_DEVICE i64 kdim(const Args&) { return KDIM; }
    SN_DEVICE Row row(const Args&, i64 m) {
        Row r;
        r.x = (int)(m % L::W);
        r.y = (int)((m / L::W) % L::H);
        r.img = (int)(m / ((i64)L::W * L::H));
        return r;
    }
    SN_DEVICE void load_a(const Args& a, const Row& r, i64 k0, i64, real* dst, int lda) {
        const stored* dy = out_grad<L>(a) + (i64)r.img * L::COUT * L::HO * L::WO;
        int co = (int)(k0 / KK), tap = (int)(k0 % KK);
        SN_UNROLL_4 for (int j = 0; j < SN_TILE_K; ++j) {
            real x = (real)0;
            if (co < L::COUT) {
                const int oy = r.y + L::PAD - tap / L::K, ox = r.x + L::PAD - tap % L::K;
                if (oy >= 0 && oy < L::HO && ox >= 0 && ox < L::WO) x = ld(dy[((i64)co * L::HO + oy) * L::WO + ox]);
            }
            dst[j * lda] = x;
            if (++tap == KK) tap = 0, ++co;
        }
    }
    SN_DEVICE real b(const Args& a, i64 k, int n) {
        return a.params[L::WEIGHT + ((k / KK) * L::CIN + n) * KK + k % KK];
    }
    SN_DEVICE void store(const Args& a, const Row& r, int n, int, real v) {
        a.gact[L::DZ * a.n + (((i64)r.img * L::CIN + n) * L::H + r.y) * L::W + r.x] = st(v);
    }
};

// The weight (and bias) gradient of a convolution: rows are the weight
// matrix's columns, (input channel, tap), plus one row of ones for the bias;
// columns output channels; k runs over the batch's output positions, split
// into SPLITS_ fixed chunks whose partial products go to `partials`
// ([split][row][column], double) for conv_weight_grad_final to sum in order.
template <class L, int SPLITS_>
struct ConvBackwardWeight {
    static constexpr int KK = L::K * L::K, HWO = L::HO * L::WO;
    static constexpr int WROWS = L::CIN * KK, ROWS = WROWS + (L::BIAS >= 0 ? 1 : 0);
    static constexpr int N = L::COUT, SPLITS = SPLITS_;
    struct Row {
        int m, s, c, cg, ky, kx;
    };
    SN_DEVICE i64 rows(const Args&) { return ROWS; }
    SN_DEVICE i64 kdim(const Args& a) { return (i64)a.n * HWO; }
    SN_DEVICE Row row(const Args&, i64 m) {
        Row r;
        r.m = (int)m;
        r.cg = (int)(m / KK);
        r.ky = (int)(m % KK) / L::K;
        r.kx = (int)(m % KK) % L::K;
        r.s = r.c = 0;
        if (m < WROWS) locate<L>(r.cg, r.s, r.c);
        return r;
    }
    // The row's input values at output positions k0 .. k0+SN_TILE_K-1 (the
    // transformed input under this tap), 1 for the bias row, 0 from kend.
    SN_DEVICE void load_a(const Args& a, const Row& r, i64 k0, i64 kend, real* dst, int lda) {
        int img = (int)(k0 / HWO), pix = (int)(k0 % HWO);
        SN_UNROLL_4 for (int j = 0; j < SN_TILE_K; ++j) {
            real x = (real)0;
            if (k0 + j < kend) {
                if (r.m >= WROWS) {
                    x = (real)1;
                } else {
                    const int iy = pix / L::WO * L::STRIDE - L::PAD + r.ky;
                    const int ix = pix % L::WO * L::STRIDE - L::PAD + r.kx;
                    if (iy >= 0 && iy < L::H && ix >= 0 && ix < L::W)
                        x = pre_apply<L>(a, r.cg, ld(src_plane<L>(a, r.s, img, r.c)[iy * L::W + ix]));
                }
            }
            dst[j * lda] = x;
            if (++pix == HWO) pix = 0, ++img;
        }
    }
    SN_DEVICE real b(const Args& a, i64 k, int n) {
        return ld(out_grad<L>(a)[((k / HWO) * L::COUT + n) * HWO + k % HWO]);
    }
    SN_DEVICE void store(const Args& a, const Row& r, int n, int split, real v) {
        a.partials[((i64)split * ROWS + r.m) * N + n] = v;
    }
};

// Second kernel of the weight gradient: per weight (then bias), the sum of
// its split-K partials in split order.
template <class L, int SPLITS>
SN_DEVICE void conv_weight_grad_final(const Args& a) {
    typedef ConvBackwardWeight<L, SPLITS> P;
    SN_FOR_EACH(i, (i64)P::ROWS * P::N) {
        const int m = (int)(i % P::ROWS), n = (int)(i / P::ROWS);
        double sum = 0.0;
        SN_NO_UNROLL for (int s = 0; s < SPLITS; ++s) sum += a.partials[((i64)s * P::ROWS + m) * P::N + n];
        if (m < P::WROWS) a.grads[L::WEIGHT + (i64)n * P::WROWS + m] = (real)sum;
        else a.grads[L::BIAS + n] = (real)sum;
    }
}
