// Kernels that check the GPU emulator's thread blocks (emulator_block.h)
// against what a GPU does: shared memory behind __syncthreads, the warp
// shuffles and votes, and mma.sync's fragment layouts. Two of them are
// deliberately wrong (a missing barrier, a mis-mapped fragment): the tests
// require that their results come out wrong, so that the checks are known to
// catch such mistakes. Compiled after the kernel headers (src/gpu/kernels/),
// by the emulator (C++) and by NVRTC (tests/gpu_nvrtc.rs in the root crate).
//
// Buffers: inputs in `act`, `params` and `aux`, outputs in `logits`.

// Each block reverses its blockDim.x values through shared memory.
SN_KERNEL(check_reverse) {
    __shared__ real s[256];
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = a.act[base + t];
    __syncthreads();
    a.logits[base + t] = s[blockDim.x - 1 - t];
}
SN_EMU_COOP(check_reverse)

// The same without the barrier: a thread may read a slot before its owner
// has written it. Wrong on purpose.
SN_KERNEL(check_reverse_without_barrier) {
    __shared__ real s[256];
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = a.act[base + t];
    a.logits[base + t] = s[blockDim.x - 1 - t];
}
SN_EMU_COOP(check_reverse_without_barrier)

// Per thread, 6 outputs: the warp's sum by butterfly (__shfl_xor_sync), the
// warp's sum by halving (__shfl_down_sync; meaningful in lane 0), lane 5's
// value (__shfl_sync), the previous lane's value (__shfl_up_sync; its own in
// lane 0), whether its own value is positive by the warp's ballot, and
// whether any and all lanes' values are positive.
SN_KERNEL(check_warp) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    const real v = a.act[i];
    real butterfly = v, halving = v;
    for (int o = 16; o > 0; o /= 2) butterfly += __shfl_xor_sync(0xffffffffu, butterfly, o);
    for (unsigned o = 16; o > 0; o /= 2) halving += __shfl_down_sync(0xffffffffu, halving, o);
    const real from5 = __shfl_sync(0xffffffffu, v, 5);
    const real previous = __shfl_up_sync(0xffffffffu, v, 1);
    const unsigned ballot = __ballot_sync(0xffffffffu, v > 0);
    const int any = __any_sync(0xffffffffu, v > 0), all = __all_sync(0xffffffffu, v > 0);
    real* out = a.logits + 6 * (size_t)i;
    out[0] = butterfly;
    out[1] = halving;
    out[2] = from5;
    out[3] = previous;
    out[4] = (real)((ballot >> lane) & 1u);
    out[5] = (real)(any + 2 * all);
}
SN_EMU_COOP(check_warp)

// Warp w of block b multiplies tile t = 8 b + w (blocks of 256 threads):
// A (16 x 8, row-major) at act + 128 t, B (8 x 8, row-major) at params + 64 t,
// C (16 x 8) at aux + 128 t; D = A B + C to logits + 128 t.
SN_DEVICE void load_mma_tile(const Args& a, int mismapped) {
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const size_t tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const real* A = a.act + 128 * tile;
    const real* B = a.params + 64 * tile;
    const real* C = a.aux + 128 * tile;
    real fa[4] = {A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    if (mismapped) {
        // Rows and columns of a1 and a2 exchanged. Wrong on purpose.
        fa[1] = A[g * 8 + t + 4];
        fa[2] = A[(g + 8) * 8 + t];
    }
    const real fb[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    const real fc[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t],
                        C[(g + 8) * 8 + 2 * t + 1]};
    real d[4];
    sn_mma_16x8x8(d, fa, fb, fc);
    real* D = a.logits + 128 * tile;
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

SN_KERNEL(check_mma) { load_mma_tile(a, 0); }
SN_EMU_COOP(check_mma)

SN_KERNEL(check_mma_mismapped) { load_mma_tile(a, 1); }
SN_EMU_COOP(check_mma_mismapped)

// The batched form the tiled convolutions use, sn_mma_tiles<2, 3>: warp w of
// block b computes tile t = 8 b + w, D = A B + C with A (32 x 8) at
// act + 256 t, B (8 x 24) at params + 192 t, C and D (32 x 24) at aux and
// logits + 768 t, all row-major: two 16-row by three 8-column mma tiles.
SN_KERNEL(check_mma_tiles) {
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const size_t tile = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const real* A = a.act + 256 * tile;
    const real* B = a.params + 192 * tile;
    const real* C = a.aux + 768 * tile;
    real* D = a.logits + 768 * tile;
    real fa[2][4], fb[3][2], acc[2][3][4];
    for (int i = 0; i < 2; ++i) {
        const int r = 16 * i + g;
        fa[i][0] = A[r * 8 + t], fa[i][1] = A[(r + 8) * 8 + t];
        fa[i][2] = A[r * 8 + t + 4], fa[i][3] = A[(r + 8) * 8 + t + 4];
    }
    for (int j = 0; j < 3; ++j) fb[j][0] = B[t * 24 + 8 * j + g], fb[j][1] = B[(t + 4) * 24 + 8 * j + g];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            for (int e = 0; e < 4; ++e)
                acc[i][j][e] = C[(16 * i + g + 8 * (e / 2)) * 24 + 8 * j + 2 * t + e % 2];
    sn_mma_tiles<2, 3>(acc, fa, fb);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            for (int e = 0; e < 4; ++e)
                D[(16 * i + g + 8 * (e / 2)) * 24 + 8 * j + 2 * t + e % 2] = acc[i][j][e];
}
SN_EMU_COOP(check_mma_tiles)

// Half of each warp waits at the block's barrier, the other half at a warp
// shuffle: neither can complete (a deadlock on a GPU).
SN_KERNEL(check_deadlock) {
    if (threadIdx.x % 32 < 16) {
        __syncthreads();
    } else {
        a.logits[threadIdx.x] = __shfl_sync(0xffffffffu, (real)1, 0);
    }
}
SN_EMU_COOP(check_deadlock)

// A barrier in a kernel declared with SN_EMU (threads run one after another).
SN_KERNEL(check_barrier_not_cooperative) {
    __shared__ real s[256];
    s[threadIdx.x] = 1;
    __syncthreads();
    a.logits[threadIdx.x] = s[0];
}
SN_EMU(check_barrier_not_cooperative)
