// The GPU emulator's thread blocks: what lets kernels that cooperate within
// a block (shared memory, __syncthreads, warp shuffles and votes, mma.sync)
// run on the CPU. Included by kernels/emulate.cuh in the emulator's C++
// build only (`-DSPARSENET_EMULATE`); NVRTC never sees it. Needs `real` and the
// thread-local `threadIdx`, `blockIdx`, `blockDim`, `gridDim` declared first.
//
// Each thread of a block runs as a fiber on the host thread that runs the
// block: it keeps its own stack (its registers, in CUDA terms) and gives the
// host thread back at every point where a GPU thread would wait for others:
// __syncthreads() (every thread of the block), and the warp collectives
// (shuffles, votes, mma.sync: the 32 lanes of its warp). A scheduler resumes
// the threads in turn and releases a barrier when every live thread it
// concerns has reached it, so a kernel that relies on a missing barrier reads
// stale shared memory here as it would on a GPU, and a barrier that some
// threads never reach is reported as a deadlock instead of hanging.
//
// The switch between fibers saves and restores the callee-saved registers
// and the stack pointer only (x86-64 System V): a call to sn_switch is an
// ordinary function call for the compiler, so everything else is saved by
// the caller already. Shared memory is `static thread_local` storage: one
// host thread runs one block at a time and all of that block's fibers.
#include <sys/mman.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" void sn_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .type sn_switch, @function
sn_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sn_switch, .-sn_switch
)");

enum SnWait : int { SN_RUNNABLE = 0, SN_AT_BARRIER = 1, SN_AT_WARP = 2, SN_DONE = 3 };

// Bytes one lane can offer to a warp collective (the fragments of a warp's
// mma tiles: at most 2 x 8 tiles of 16x8x8 in double, 192 bytes).
#define SN_XCH_BYTES 256

struct SnThread {
    void* sp;
    int wait;
    unsigned warp_ops;  // warp collectives this thread has entered
};

struct SnBlockRun {
    static constexpr size_t STACK = 64 << 10;
    static constexpr size_t GUARD = 4 << 10;
    std::vector<SnThread> threads;
    std::vector<char*> stacks;
    void* sched_sp = nullptr;
    unsigned current = 0, nthreads = 0;
    void (*body)(const void*) = nullptr;
    const void* args = nullptr;
    // Two exchange areas per warp, used alternately by successive collectives:
    // a lane can be at most one collective ahead of the slowest lane of its
    // warp, so the area it writes is never one another lane still reads.
    std::vector<unsigned char> xch;
    const char* error = nullptr;

    unsigned char* slot(unsigned warp, unsigned phase, unsigned lane) {
        return &xch[(((size_t)warp * 2 + phase) * 32 + lane) * SN_XCH_BYTES];
    }

    ~SnBlockRun() {
        for (char* s : stacks) munmap(s, STACK + GUARD);
    }

    void reserve(unsigned n) {
        while (stacks.size() < n) {
            void* p = mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { std::fprintf(stderr, "sparsenet emulator: no memory for thread stacks\n"); std::abort(); }
            // A guard page below each stack: an overflow faults instead of
            // writing another thread's stack.
            mprotect(p, GUARD, PROT_NONE);
            stacks.push_back((char*)p);
        }
        threads.resize(n);
        xch.assign((size_t)((n + 31) / 32) * 2 * 32 * SN_XCH_BYTES, 0);
    }
};

static thread_local SnBlockRun* sn_run = nullptr;

// Where a fiber starts: runs the kernel body as its thread, then never
// returns (the scheduler does not resume a finished thread).
static void sn_fiber_entry() {
    SnBlockRun* r = sn_run;
    r->body(r->args);
    r->threads[r->current].wait = SN_DONE;
    sn_switch(&r->threads[r->current].sp, r->sched_sp);
    __builtin_unreachable();
}

// A fresh fiber's stack: the first switch to it "returns" into the entry.
static void* sn_fiber_stack(char* stack_base) {
    uintptr_t top = (uintptr_t)(stack_base + SnBlockRun::GUARD + SnBlockRun::STACK);
    top &= ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                      // keeps (rsp + 8) % 16 == 0 at the entry
    *--sp = (void*)&sn_fiber_entry;       // the return address sn_switch pops
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    return sp;
}

// What went wrong in a kernel launched without fibers (SN_EMU: each thread
// run to its end in turn) that waited for other threads all the same.
static thread_local const char* sn_plain_error = nullptr;
static const char* const SN_NOT_COOPERATIVE =
    "the kernel waits for other threads (__syncthreads, a warp collective or mma.sync) but is "
    "declared with SN_EMU, which runs each thread to its end in turn: declare it with SN_EMU_COOP";

// Gives the host thread back to the scheduler until this thread may go on.
static inline void sn_yield(int wait) {
    SnBlockRun* r = sn_run;
    if (!r) {
        sn_plain_error = SN_NOT_COOPERATIVE;
        return;
    }
    r->threads[r->current].wait = wait;
    sn_switch(&r->threads[r->current].sp, r->sched_sp);
}

// Runs block `b` of a launch: every thread from its start to its end,
// switching between them where they wait for each other. Returns null, or
// what went wrong (a deadlock, a collective over a partial warp).
static const char* sn_run_block(void (*body)(const void*), const void* args, unsigned b,
                                unsigned grid, unsigned block) {
    static thread_local SnBlockRun run;
    SnBlockRun* r = &run;
    sn_run = r;
    r->reserve(block);
    r->nthreads = block;
    r->body = body;
    r->args = args;
    r->error = nullptr;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    blockIdx = {b, 0, 0};
    for (unsigned t = 0; t < block; ++t) r->threads[t] = {sn_fiber_stack(r->stacks[t]), SN_RUNNABLE, 0};
    unsigned done = 0;
    bool reverse = false;
    while (done < block) {
        bool ran = false;
        // Alternate the order in which waiting threads resume, so that a
        // kernel relying on one order of threads between barriers fails.
        for (unsigned i = 0; i < block; ++i) {
            const unsigned t = reverse ? block - 1 - i : i;
            SnThread& th = r->threads[t];
            if (th.wait != SN_RUNNABLE) continue;
            r->current = t;
            threadIdx = {t, 0, 0};
            sn_switch(&r->sched_sp, th.sp);
            ran = true;
            if (th.wait == SN_DONE) ++done;
            if (r->error) return r->error;
        }
        reverse = !reverse;
        if (done == block) break;
        // __syncthreads: released when every thread that has not exited waits.
        unsigned at_barrier = 0;
        for (unsigned t = 0; t < block; ++t) at_barrier += r->threads[t].wait == SN_AT_BARRIER;
        if (at_barrier == block - done) {
            for (unsigned t = 0; t < block; ++t)
                if (r->threads[t].wait == SN_AT_BARRIER) r->threads[t].wait = SN_RUNNABLE;
            continue;
        }
        // Warp collectives: released when all 32 lanes wait at the same one.
        bool released = false;
        for (unsigned w = 0; w * 32 < block; ++w) {
            const unsigned first = w * 32, end = first + 32 < block ? first + 32 : block;
            unsigned waiting = 0;
            for (unsigned t = first; t < end; ++t) waiting += r->threads[t].wait == SN_AT_WARP;
            if (waiting == 0) continue;
            if (end - first != 32) return "a warp collective in a block whose size is not a multiple of 32";
            if (waiting != 32) continue;
            const unsigned op = r->threads[first].warp_ops;
            for (unsigned t = first; t < end; ++t)
                if (r->threads[t].warp_ops != op)
                    return "the lanes of a warp wait at different warp collectives";
            for (unsigned t = first; t < end; ++t) r->threads[t].wait = SN_RUNNABLE;
            released = true;
        }
        if (!ran && !released) {
            unsigned at_warp = 0;
            for (unsigned t = 0; t < block; ++t) at_warp += r->threads[t].wait == SN_AT_WARP;
            static thread_local char msg[256];
            std::snprintf(msg, sizeof msg,
                          "deadlock in block %u: %u of %u threads wait at __syncthreads, %u at a warp "
                          "collective whose other lanes never come, %u have exited",
                          b, at_barrier, block, at_warp, done);
            return msg;
        }
    }
    return nullptr;
}

static inline void __syncthreads() { sn_yield(SN_AT_BARRIER); }

// Runs block `b` without fibers: each thread from its start to its end, in
// turn (the kernels that never wait for one another; 100x cheaper than
// fibers). Returns null, or SN_NOT_COOPERATIVE if a thread waited after all.
static const char* sn_run_block_plain(void (*body)(const void*), const void* args, unsigned b,
                                      unsigned grid, unsigned block) {
    sn_run = nullptr;
    sn_plain_error = nullptr;
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    blockIdx = {b, 0, 0};
    for (unsigned t = 0; t < block && !sn_plain_error; ++t) {
        threadIdx = {t, 0, 0};
        body(args);
    }
    return sn_plain_error;
}

// Every lane of the calling thread's warp offers `n` bytes; returns the
// warp's 32 offers, `SN_XCH_BYTES` apart, valid until the next collective.
static inline const unsigned char* sn_warp_exchange(const void* mine, size_t n) {
    SnBlockRun* r = sn_run;
    if (!r) {
        static thread_local unsigned char nothing[32 * SN_XCH_BYTES];
        sn_plain_error = SN_NOT_COOPERATIVE;
        return nothing;
    }
    const unsigned t = r->current;
    SnThread& th = r->threads[t];
    const unsigned phase = th.warp_ops & 1;
    std::memcpy(r->slot(t / 32, phase, t % 32), mine, n);
    th.warp_ops++;
    sn_yield(SN_AT_WARP);
    return r->slot(t / 32, phase, 0);
}

static inline void sn_full_mask(unsigned mask) {
    if (mask != 0xffffffffu && sn_run) {
        sn_run->error = "a warp collective with a partial mask (the emulator supports full warps only)";
        sn_yield(SN_AT_WARP);
    }
}

template <typename V>
static inline V sn_lane_value(const unsigned char* all, unsigned lane) {
    V v;
    std::memcpy(&v, all + (size_t)lane * SN_XCH_BYTES, sizeof v);
    return v;
}

template <typename V>
static inline V __shfl_sync(unsigned mask, V v, int src, int width = 32) {
    sn_full_mask(mask);
    const unsigned lane = threadIdx.x % 32, w = (unsigned)width;
    const unsigned char* all = sn_warp_exchange(&v, sizeof v);
    return sn_lane_value<V>(all, (lane / w) * w + ((unsigned)src % w));
}

template <typename V>
static inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
    sn_full_mask(mask);
    const unsigned lane = threadIdx.x % 32, w = (unsigned)width;
    const unsigned char* all = sn_warp_exchange(&v, sizeof v);
    const unsigned src = lane ^ (unsigned)lane_mask;
    return sn_lane_value<V>(all, src / w == lane / w ? src : lane);
}

template <typename V>
static inline V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
    sn_full_mask(mask);
    const unsigned lane = threadIdx.x % 32, w = (unsigned)width;
    const unsigned char* all = sn_warp_exchange(&v, sizeof v);
    return sn_lane_value<V>(all, lane % w + delta < w ? lane + delta : lane);
}

template <typename V>
static inline V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
    sn_full_mask(mask);
    const unsigned lane = threadIdx.x % 32, w = (unsigned)width;
    const unsigned char* all = sn_warp_exchange(&v, sizeof v);
    return sn_lane_value<V>(all, lane % w >= delta ? lane - delta : lane);
}

static inline unsigned __ballot_sync(unsigned mask, int predicate) {
    sn_full_mask(mask);
    const int p = predicate != 0;
    const unsigned char* all = sn_warp_exchange(&p, sizeof p);
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= (unsigned)(sn_lane_value<int>(all, l) != 0) << l;
    return bits;
}

static inline int __all_sync(unsigned mask, int p) { return __ballot_sync(mask, p) == 0xffffffffu; }
static inline int __any_sync(unsigned mask, int p) { return __ballot_sync(mask, p) != 0; }

// cvt.rna.tf32.f32: rounds to TF32 (10 explicit mantissa bits) to nearest,
// ties away from zero, as the tensor cores' inputs are. The double build
// keeps every bit: it checks the kernels' logic, free of rounding.
static inline real sn_tf32(real x) {
    if constexpr (sizeof(real) == 4) {
        uint32_t u;
        std::memcpy(&u, &x, 4);
        if ((u & 0x7f800000u) != 0x7f800000u) {  // finite
            u += 0x1000u;
            u &= 0xffffe000u;
        }
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    } else {
        return x;
    }
}

// One warp's D = A B + C on a 16x8x8 tile (mma.sync.aligned.m16n8k8.row.col
// .f32.tf32.tf32.f32), each lane holding the fragments the PTX ISA lays
// down: with g = lane / 4 and t = lane % 4,
//   a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}      (A: 16 x 8)
//   b = {B[t][g], B[t+4][g]}                                (B: 8 x 8)
//   c = {C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]}    (C, D: 16 x 8)
// Here the warp's fragments are gathered, the tile multiplied with the
// inputs rounded to TF32 (float build) and summed in k order, and each lane
// takes its part of D.
static inline void sn_mma_16x8x8(real d[4], const real a[4], const real b[2], const real c[4]) {
    struct Frag { real a[4], b[2], c[4]; } mine;
    static_assert(sizeof(Frag) <= SN_XCH_BYTES, "mma fragments fit the exchange slot");
    for (int i = 0; i < 4; ++i) mine.a[i] = a[i], mine.c[i] = c[i];
    mine.b[0] = b[0], mine.b[1] = b[1];
    const unsigned char* all = sn_warp_exchange(&mine, sizeof mine);
    real A[16][8], B[8][8], C[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const Frag f = sn_lane_value<Frag>(all, l);
        const unsigned g = l / 4, t = l % 4;
        A[g][t] = f.a[0], A[g + 8][t] = f.a[1], A[g][t + 4] = f.a[2], A[g + 8][t + 4] = f.a[3];
        B[t][g] = f.b[0], B[t + 4][g] = f.b[1];
        C[g][2 * t] = f.c[0], C[g][2 * t + 1] = f.c[1];
        C[g + 8][2 * t] = f.c[2], C[g + 8][2 * t + 1] = f.c[3];
    }
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const unsigned row = g + 8 * (i / 2), col = 2 * t + i % 2;
        real acc = C[row][col];
        for (int k = 0; k < 8; ++k) acc += sn_tf32(A[row][k]) * sn_tf32(B[k][col]);
        d[i] = acc;
    }
}

// A warp's acc[i][j] += A_i B_j over MT x NT tiles of 16x8x8, each tile as
// sn_mma_16x8x8 with C = acc[i][j] (on the device: that many mma.sync in a
// row). One exchange carries every lane's A and B fragments, so the lanes
// switch once, not MT*NT times. A lane's C is its own acc, never exchanged.
template <int MT, int NT>
static inline void sn_mma_tiles(real acc[MT][NT][4], const real af[MT][4], const real bf[NT][2]) {
    struct Frags { real a[MT][4], b[NT][2]; } mine;
    static_assert(sizeof(Frags) <= SN_XCH_BYTES, "mma fragments fit the exchange slot");
    for (int i = 0; i < MT; ++i)
        for (int e = 0; e < 4; ++e) mine.a[i][e] = af[i][e];
    for (int j = 0; j < NT; ++j) mine.b[j][0] = bf[j][0], mine.b[j][1] = bf[j][1];
    const unsigned char* all = sn_warp_exchange(&mine, sizeof mine);
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    // A_i[row][k] is element (row / 8) + 2 (k / 4) of lane (row % 8) * 4 + k % 4's
    // a[i]; B_j[k][col] is element k / 4 of lane col * 4 + k % 4's b[j].
    real A[MT][2][8], B[NT][8][2];
    auto elem = [all](unsigned from, size_t index) {
        real v;
        std::memcpy(&v, all + (size_t)from * SN_XCH_BYTES + index * sizeof(real), sizeof v);
        return v;
    };
    for (int k = 0; k < 8; ++k) {
        for (int i = 0; i < MT; ++i)
            for (int h = 0; h < 2; ++h) A[i][h][k] = sn_tf32(elem(g * 4 + k % 4, i * 4 + h + 2 * (k / 4)));
        for (int j = 0; j < NT; ++j)
            for (int c = 0; c < 2; ++c)
                B[j][k][c] = sn_tf32(elem((2 * t + c) * 4 + k % 4, MT * 4 + j * 2 + k / 4));
    }
    for (int i = 0; i < MT; ++i)
        for (int j = 0; j < NT; ++j)
            for (int e = 0; e < 4; ++e) {
                real v = acc[i][j][e];
                for (int k = 0; k < 8; ++k) v += A[i][e / 2][k] * B[j][k][e % 2];
                acc[i][j][e] = v;
            }
}
