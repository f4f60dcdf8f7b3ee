// sparsenet GPU kernel templates: what every op family shares (this header),
// one header per op family, and the two builds' shims (emulate.cuh).
//
// `sparsenet!` emits, for every node of a network's plan, a small struct of
// compile-time constants (channel counts, concat sources and where they live,
// spatial sizes, strides, parameter offsets) and one `extern "C"` kernel per
// pass that instantiates a template of these headers with it. The headers
// and the generated part are concatenated into one translation unit
// (GpuProgram::full_source, in the order of KERNEL_HEADERS in
// gpu/program.rs; each header builds on those before it), which NVRTC
// compiles once per network. Every kernel takes the same argument, `Args`,
// so the host-side launch sequence is a plain table.
//
// The same source also compiles as ordinary C++ (`-DSPARSENET_EMULATE`): the
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
