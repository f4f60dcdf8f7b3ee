// The two builds of these headers: NVRTC compiles them for the device, and
// the emulator compiles them as C++ with -DSPARSENET_EMULATE (gpu/emulator.rs).
// Everything that differs between the two is here (every
// `#ifdef SPARSENET_EMULATE` of the kernels, with its device-side branch),
// so the other headers are plain CUDA. Comes first: the rest build on
// SN_DEVICE, SN_KERNEL and `real`.

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

#ifdef SPARSENET_EMULATE
SN_DEVICE unsigned sn_f2u(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
SN_DEVICE float sn_u2f(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
#else
SN_DEVICE unsigned sn_f2u(float f) { return __float_as_uint(f); }
SN_DEVICE float sn_u2f(unsigned u) { return __uint_as_float(u); }
#endif

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
