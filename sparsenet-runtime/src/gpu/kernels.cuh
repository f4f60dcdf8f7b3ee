// sparsenet GPU kernel templates.
//
// `sparsenet!` emits, for every node of a network's plan, a small struct of
// compile-time constants (channel counts, concat sources and where they live,
// spatial sizes, strides, parameter offsets) and one `extern "C"` kernel per
// pass that instantiates a template below with it. NVRTC compiles the whole
// file once per network. Every kernel takes the same argument, `Args`, so the
// host-side launch sequence is a plain table.
//
// The same file also compiles as ordinary C++ (`-DSPARSENET_EMULATE`): the
// CUDA built-ins become thread-locals set by a host loop over blocks and
// threads. That is the CPU stand-in the tests run against the CPU model. A
// kernel whose threads never wait for one another runs thread after thread
// (SN_EMU); one that cooperates (shared memory with __syncthreads, warp
// shuffles and votes, mma.sync) runs its threads as fibers that meet where
// the GPU's would (SN_EMU_COOP, emulator_block.h). Atomics are not emulated.
//
// Memory:
// - `act`: the activation arena. Buffer b lives at `act + OFF_b * n`, NCHW.
//   Offsets are per image, fixed by the plan, so one arena serves any batch.
// - `gact`: the gradient arena, planned by liveness in the backward pass, and
//   the scratch for a node's input gradient (`dz`) at its end.
// - `aux`: per-channel values independent of the batch: batch statistics of
//   buffers that a BatchNorm reads, and each node's folded BatchNorm
//   (scale, shift, mean, 1/std, and backward's two channel sums).

// The element type: float on the GPU; the emulator also builds a double
// version, which must match the CPU path's f64 model to rounding level (a
// check of the kernels' logic free of float noise).
#ifndef SN_REAL
#define SN_REAL float
#endif
typedef SN_REAL real;

#ifdef SPARSENET_EMULATE
#include <cmath>
using std::exp;
using std::log;
using std::sqrt;
struct sn_dim3 { unsigned x, y, z; };
static thread_local sn_dim3 threadIdx, blockIdx, blockDim, gridDim;
// Per block: one host thread runs one block at a time (emulator_block.h).
#define __shared__ static thread_local
#include "sparsenet_emulator_block.h"
#define SN_DEVICE static inline
#define SN_KERNEL(name) static void name(const Args a)
#define SN_NEG_INF (-INFINITY)
#define SN_NO_UNROLL
#define SN_UNROLL_4
#else
#define SN_NEG_INF (__int_as_float(0xff800000u))
// cvt.rna.tf32.f32: to TF32 (10 explicit mantissa bits), to nearest, ties
// away from zero; what the tensor cores read of an f32.
__device__ __forceinline__ static unsigned sn_tf32_bits(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ static float sn_tf32(float x) { return __uint_as_float(sn_tf32_bits(x)); }
// One warp's D = A B + C on a 16x8x8 tile in TF32 with f32 accumulation; the
// fragment layout is spelled out beside the emulator's version
// (emulator_block.h), which tests check against a plain product.
__device__ __forceinline__ static void sn_mma_16x8x8(float d[4], const float a[4], const float b[2],
                                                     const float c[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(sn_tf32_bits(a[0])), "r"(sn_tf32_bits(a[1])), "r"(sn_tf32_bits(a[2])),
          "r"(sn_tf32_bits(a[3])), "r"(sn_tf32_bits(b[0])), "r"(sn_tf32_bits(b[1])),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
}
// Loops whose trip count grows with the network stay rolled: unrolling them
// multiplies code size and NVRTC time for little gain in these kernels.
#define SN_NO_UNROLL _Pragma("unroll 1")
// The tiled GEMMs' loaders: four loads in flight per thread, a quarter of
// the code of a full unroll (these kernels are instantiated per layer).
#define SN_UNROLL_4 _Pragma("unroll 4")
#define SN_DEVICE __device__ __forceinline__ static
#define SN_KERNEL(name) extern "C" __global__ void name(const Args a)
#endif

typedef long long i64;

// ---- storage of activations and their gradients --------------------------
//
// `stored` is the element type of the activation and gradient arenas and of
// d loss / d logits. With SN_BF16 (Precision::Bf16) it is bfloat16: every
// value is rounded to it when stored (to nearest, ties to even) and widened
// back to `real` when loaded, so all arithmetic (products, BatchNorm, sums)
// stays in `real`; parameters, gradients of parameters, statistics and the
// logits stay `real` too. Otherwise it is `real` and ld/st are identities.
// The conversions are written with integer operations, so the device and the
// emulator round the same values the same way, to the bit.
#ifndef SN_BF16
#define SN_BF16 0
#endif
#ifdef SPARSENET_EMULATE
SN_DEVICE unsigned sn_f2u(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
SN_DEVICE float sn_u2f(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
#else
SN_DEVICE unsigned sn_f2u(float f) { return __float_as_uint(f); }
SN_DEVICE float sn_u2f(unsigned u) { return __uint_as_float(u); }
#endif
#if SN_BF16
struct sn_bf16 {
    unsigned short bits;
};
typedef sn_bf16 stored;
SN_DEVICE real ld(sn_bf16 v) { return (real)sn_u2f((unsigned)v.bits << 16); }
SN_DEVICE sn_bf16 st(real v) {
    const unsigned u = sn_f2u((float)v);
    sn_bf16 b;
    // NaN stays a (quiet) NaN; rounding must not carry it into infinity.
    if ((u & 0x7fffffffu) > 0x7f800000u) b.bits = (unsigned short)((u >> 16) | 0x40u);
    else b.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return b;
}
#else
typedef real stored;
SN_DEVICE real ld(real v) { return v; }
SN_DEVICE real st(real v) { return v; }
#endif

struct Args {
    stored* act;
    stored* gact;
    real* aux;
    real* params;
    real* grads;
    real* state;
    real* velocity;
    real* logits;
    stored* dlogits;
    int* labels;
    // Per image: the loss, then 1 where the prediction was right.
    real* losses;
    // learning rate, momentum, weight decay, nesterov (0/1), label smoothing.
    const real* hyper;
    // Partial sums of the split reductions (double whatever `real` is).
    double* partials;
    int n;
    int train;
    // A dataset on the device (GpuModel::stage_batch): its images as stored
    // (u8, [len, C, H, W]) and labels, the batch's picks (per image: dataset
    // index, dy, dx, flip) and the normalisation table (256 per channel).
    const unsigned char* images;
    const int* dataset_labels;
    const int* picks;
    const real* lut;
};

// Reductions over the batch (BatchNorm statistics and their backward sums,
// weight gradients) run as two kernels, so that enough threads share the
// work: the first writes one partial per (output, chunk) into `partials`,
// the second combines each output's partials in a fixed order
// (deterministic results).
//
// Channel reductions split a channel's N*H*W values into SN_CHUNKS chunks;
// weight gradients split the batch's positions into a per-layer number of
// chunks (split-K of a tiled GEMM, ConvBackwardWeight).
#define SN_CHUNKS 64

// The [begin, end) range of chunk p when `total` items split into `chunks`.
SN_DEVICE void chunk_range(i64 total, int chunks, int p, i64& begin, i64& end) {
    const i64 len = (total + chunks - 1) / chunks;
    begin = p * len < total ? p * len : total;
    end = begin + len < total ? begin + len : total;
}

// In emulation every kernel also gets a C entry point that runs one block:
// the host runs blocks in parallel (they never share data), threads in order.
#ifdef SPARSENET_EMULATE
// Each kernel's entry point runs one block and returns null or what went
// wrong. SN_EMU runs the block's threads one after another, each to its end:
// right for kernels whose threads never wait for each other, and cheap.
// SN_EMU_COOP runs each thread as a fiber that gives way at __syncthreads and
// at warp collectives (emulator_block.h): for kernels that cooperate.
#define SN_EMU_ENTRY(name, runner)                                                          \
    static void emu_body_##name(const void* a) { name(*(const Args*)a); }                   \
    extern "C" const char* emu_##name(const Args* a, unsigned b, unsigned grid, unsigned block) { \
        return runner(emu_body_##name, a, b, grid, block);                                  \
    }
#define SN_EMU(name) SN_EMU_ENTRY(name, sn_run_block_plain)
#define SN_EMU_COOP(name) SN_EMU_ENTRY(name, sn_run_block)
#else
#define SN_EMU(name)
#define SN_EMU_COOP(name)
#endif

#define SN_FOR_EACH(i, total) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (i64)gridDim.x * blockDim.x)

// Element i of an NCHW tensor with C channels and H x W planes, unflattened.
struct Nchw {
    int img, c, y, x;
};

SN_DEVICE Nchw nchw(i64 i, int C, int H, int W) {
    Nchw e;
    e.x = (int)(i % W);
    e.y = (int)((i / W) % H);
    e.c = (int)((i / ((i64)W * H)) % C);
    e.img = (int)(i / ((i64)W * H * C));
    return e;
}

// The input batch (the first activation) and its labels from the dataset
// on the device: image i is dataset image picks[4i], read at row y + dy and
// column (flip ? W-1-x : x) + dx, a pixel outside the image reading as 0;
// then the normalisation table. The CPU pipeline's arithmetic (a table
// lookup, data/transform.rs apply_lut), so equal to it to the bit.
template <int C, int H, int W>
SN_DEVICE void augment_input(const Args& a) {
    SN_FOR_EACH(i, (i64)a.n * C * H * W) {
        const Nchw e = nchw(i, C, H, W);
        const int* p = a.picks + 4 * e.img;
        const int sy = e.y + p[1];
        const int sx = (p[3] ? W - 1 - e.x : e.x) + p[2];
        int v = 0;
        if (sy >= 0 && sy < H && sx >= 0 && sx < W)
            v = a.images[((i64)p[0] * C + e.c) * (H * W) + sy * W + sx];
        a.act[i] = st(a.lut[e.c * 256 + v]);
        if (e.c == 0 && e.y == 0 && e.x == 0) a.labels[e.img] = a.dataset_labels[p[0]];
    }
}

// ---- reading the virtual concatenation -----------------------------------

// Source s's plane (image img, channel c) in the activation arena.
template <class L>
SN_DEVICE const stored* src_plane(const Args& a, int s, int img, int c) {
    return a.act + L::off(s) * a.n + ((i64)img * L::ch(s) + c) * (L::H * L::W);
}

// Concatenated channel cg -> (source, channel within it).
template <class L>
SN_DEVICE void locate(int cg, int& s, int& c) {
    s = 0;
    while (s + 1 < L::S && cg >= L::cbeg(s + 1)) ++s;
    c = cg - L::cbeg(s);
}

template <class L>
SN_DEVICE real pre_apply(const Args& a, int cg, real v) {
    if (!L::PRE) return v;
    real y = a.aux[L::PRE_AUX + cg] * v + a.aux[L::PRE_AUX + L::CIN + cg];
    // `<=` so that NaN passes through, as on the CPU (fmaxf would drop it).
    return (L::RELU && y <= (real)0) ? (real)0 : y;
}

// Where a node's output gradient lives: the logits' for the head.
template <class L>
SN_DEVICE const stored* out_grad(const Args& a) {
    return L::OUT_GRAD < 0 ? a.dlogits : a.gact + L::OUT_GRAD * a.n;
}

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

#ifndef SPARSENET_EMULATE
// One warp's acc[mt][nt] += A_mt B_nt over MT x NT tiles of 16x8x8 (the
// emulator's version gathers the warp's fragments once for all of them).
template <int MT, int NT>
SN_DEVICE void sn_mma_tiles(float acc[MT][NT][4], const float af[MT][4], const float bf[NT][2]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) sn_mma_16x8x8(acc[i][j], af[i], bf[j], acc[i][j]);
}
#endif

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

template <class L>
SN_DEVICE void avg_pool_forward(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HO * WO) {
        const Nchw e = nchw(i, L::CIN, HO, WO);
        const int ox = e.x, oy = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        const stored* plane = src_plane<L>(a, s, img, c);
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx)
                acc += pre_apply<L>(a, cg, ld(plane[(oy * L::STRIDE + ky) * L::W + ox * L::STRIDE + kx]));
        a.act[L::OUT * a.n + i] = st(acc * ((real)1 / (K * K)));
    }
}

// Index (within the plane) of the first maximum of one max-pool window, or -1.
template <class L>
SN_DEVICE int max_pool_argmax(const Args& a, int cg, const stored* plane, int oy, int ox, real& best) {
    best = (real)SN_NEG_INF;
    int at = -1;
    for (int ky = 0; ky < L::K; ++ky) {
        const int iy = oy * L::STRIDE - L::PAD + ky;
        if (iy < 0 || iy >= L::H) continue;
        for (int kx = 0; kx < L::K; ++kx) {
            const int ix = ox * L::STRIDE - L::PAD + kx;
            if (ix < 0 || ix >= L::W) continue;
            const real v = pre_apply<L>(a, cg, ld(plane[iy * L::W + ix]));
            // A NaN is the window's maximum (as in PyTorch): never skipped.
            if (v > best || v != v) {
                best = v;
                at = iy * L::W + ix;
                if (v != v) return at;
            }
        }
    }
    return at;
}

template <class L>
SN_DEVICE void max_pool_forward(const Args& a) {
    constexpr int HO = L::HO, WO = L::WO;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HO * WO) {
        const Nchw e = nchw(i, L::CIN, HO, WO);
        const int ox = e.x, oy = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        real best;
        max_pool_argmax<L>(a, cg, src_plane<L>(a, s, img, c), oy, ox, best);
        a.act[L::OUT * a.n + i] = st(best);
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

// Global average of the transformed channel cg of one image.
template <class L>
SN_DEVICE real gap_feature(const Args& a, int img, int cg) {
    int s, c;
    locate<L>(cg, s, c);
    const stored* plane = src_plane<L>(a, s, img, c);
    real sum = (real)0;
    SN_NO_UNROLL for (int p = 0; p < L::H * L::W; ++p) sum += pre_apply<L>(a, cg, ld(plane[p]));
    return sum * ((real)1 / (L::H * L::W));
}

// Global average pool and the dense classifier: one thread per logit.
template <class L>
SN_DEVICE void gap_dense_forward(const Args& a) {
    SN_FOR_EACH(i, (i64)a.n * L::CLASSES) {
        const int k = (int)(i % L::CLASSES);
        const int img = (int)(i / L::CLASSES);
        real acc = (real)0;
        SN_NO_UNROLL for (int cg = 0; cg < L::CIN; ++cg)
            acc += gap_feature<L>(a, img, cg) * a.params[L::WEIGHT + (i64)k * L::CIN + cg];
        a.logits[i] = acc + a.params[L::BIAS + k];
    }
}

// ---- loss -------------------------------------------------------------------

// Softmax cross-entropy with label smoothing, as the CPU loss: per image the
// loss, whether the (first) argmax is the label, and d loss / d logits of the
// batch mean.
template <int CLASSES>
SN_DEVICE void softmax_cross_entropy(const Args& a) {
    SN_FOR_EACH(img, a.n) {
        const real* row = a.logits + img * CLASSES;
        stored* g = a.dlogits + img * CLASSES;
        const int label = a.labels[img];
        const real eps = a.hyper[4];
        int best = 0;
        real mx = row[0];
        for (int j = 1; j < CLASSES; ++j)
            if (row[j] > mx) {
                mx = row[j];
                best = j;
            }
        // The exponentials are summed here and recomputed below (the same
        // values), so that d loss / d logits may be stored narrower.
        real sum = (real)0;
        SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) sum += exp(row[j] - mx);
        const real lse = mx + log(sum);
        real loss = ((real)1 - eps) * (lse - row[label]);
        const real off = eps / CLASSES;
        if (eps > (real)0) {
            real smooth = (real)0;
            SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) smooth += lse - row[j];
            loss += off * smooth;
        }
        const real on = ((real)1 - eps) + off;
        const real inv_n = (real)1 / a.n;
        SN_NO_UNROLL for (int j = 0; j < CLASSES; ++j) {
            const real p = exp(row[j] - mx) / sum;
            g[j] = st((p - (j == label ? on : off)) * inv_n);
        }
        a.losses[img] = loss;
        a.losses[a.n + img] = best == label ? (real)1 : (real)0;
    }
}

// ---- backward ---------------------------------------------------------------

// dz = d loss / d (transformed, concatenated input) of a convolution: the
// transposed convolution, one thread per input element. For the strided
// convolutions (an ImageNet stem); stride 1 takes ConvBackwardData.
template <class L>
SN_DEVICE void conv_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const Nchw e = nchw(i, L::CIN, H, W);
        const int x = e.x, y = e.y, cg = e.c, img = e.img;
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y + L::PAD - ky;
            if (ty < 0 || ty % L::STRIDE != 0) continue;
            const int oy = ty / L::STRIDE;
            if (oy >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x + L::PAD - kx;
                if (tx < 0 || tx % L::STRIDE != 0) continue;
                const int ox = tx / L::STRIDE;
                if (ox >= WO) continue;
                SN_NO_UNROLL for (int co = 0; co < L::COUT; ++co)
                    acc += ld(dy[(((i64)img * L::COUT + co) * HO + oy) * WO + ox]) *
                           a.params[L::WEIGHT + (((i64)co * L::CIN + cg) * K + ky) * K + kx];
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc);
    }
}

template <class L>
SN_DEVICE void avg_pool_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const int x = (int)(i % W);
        const int y = (int)((i / W) % H);
        const i64 plane = i / ((i64)W * H);  // img * CIN + cg
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y - ky;
            if (ty < 0 || ty % L::STRIDE != 0 || ty / L::STRIDE >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x - kx;
                if (tx < 0 || tx % L::STRIDE != 0 || tx / L::STRIDE >= WO) continue;
                acc += ld(dy[(plane * HO + ty / L::STRIDE) * WO + tx / L::STRIDE]);
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc * ((real)1 / (K * K)));
    }
}

template <class L>
SN_DEVICE void max_pool_backward_input(const Args& a) {
    constexpr int K = L::K, HO = L::HO, WO = L::WO, H = L::H, W = L::W;
    const stored* dy = out_grad<L>(a);
    SN_FOR_EACH(i, (i64)a.n * L::CIN * H * W) {
        const Nchw e = nchw(i, L::CIN, H, W);
        const int x = e.x, y = e.y, cg = e.c, img = e.img;
        int s, c;
        locate<L>(cg, s, c);
        const stored* plane = src_plane<L>(a, s, img, c);
        real acc = (real)0;
        for (int ky = 0; ky < K; ++ky) {
            const int ty = y + L::PAD - ky;
            if (ty < 0 || ty % L::STRIDE != 0 || ty / L::STRIDE >= HO) continue;
            for (int kx = 0; kx < K; ++kx) {
                const int tx = x + L::PAD - kx;
                if (tx < 0 || tx % L::STRIDE != 0 || tx / L::STRIDE >= WO) continue;
                const int oy = ty / L::STRIDE, ox = tx / L::STRIDE;
                real best;
                if (max_pool_argmax<L>(a, cg, plane, oy, ox, best) == y * W + x)
                    acc += ld(dy[(((i64)img * L::CIN + cg) * HO + oy) * WO + ox]);
            }
        }
        a.gact[L::DZ * a.n + i] = st(acc);
    }
}

template <class L>
SN_DEVICE void gap_dense_backward_input(const Args& a) {
    constexpr int HW = L::H * L::W;
    SN_FOR_EACH(i, (i64)a.n * L::CIN * HW) {
        const Nchw e = nchw(i, L::CIN, 1, HW);
        const int cg = e.c, img = e.img;
        real acc = (real)0;
        SN_NO_UNROLL for (int k = 0; k < L::CLASSES; ++k)
            acc += ld(a.dlogits[img * L::CLASSES + k]) * a.params[L::WEIGHT + (i64)k * L::CIN + cg];
        a.gact[L::DZ * a.n + i] = st(acc * ((real)1 / HW));
    }
}

// Dense weight and bias gradients: one thread per weight, then per bias.
template <class L>
SN_DEVICE void gap_dense_backward_weight(const Args& a) {
    constexpr i64 NW = (i64)L::CLASSES * L::CIN;
    SN_FOR_EACH(i, NW + L::CLASSES) {
        if (i >= NW) {
            const int k = (int)(i - NW);
            real sum = (real)0;
            SN_NO_UNROLL for (int img = 0; img < a.n; ++img) sum += ld(a.dlogits[img * L::CLASSES + k]);
            a.grads[L::BIAS + k] = sum;
            continue;
        }
        const int cg = (int)(i % L::CIN);
        const int k = (int)(i / L::CIN);
        real sum = (real)0;
        SN_NO_UNROLL for (int img = 0; img < a.n; ++img)
            sum += ld(a.dlogits[img * L::CLASSES + k]) * gap_feature<L>(a, img, cg);
        a.grads[L::WEIGHT + i] = sum;
    }
}

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

// ---- optimiser ----------------------------------------------------------------

// SGD with momentum, optional Nesterov and weight decay, as the CPU optimiser.
template <int LEN>
SN_DEVICE void sgd_step(const Args& a) {
    const real lr = a.hyper[0], mom = a.hyper[1], wd = a.hyper[2];
    const bool nesterov = a.hyper[3] != (real)0;
    real* p = a.params;
    SN_FOR_EACH(i, LEN) {
        real g = a.grads[i];
        if (wd != (real)0) g = g + wd * p[i];
        const real v = mom * a.velocity[i] + g;
        a.velocity[i] = v;
        p[i] = p[i] - lr * (nesterov ? g + mom * v : v);
    }
}
