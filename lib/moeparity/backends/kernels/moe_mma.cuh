// Tensor-core matvec for Q4_K and Q6_K in f32 mode: exact integer dot products on int8 tensor
// cores (mma.sync u8 × s8 → s32) against activations in block fixed point. The arithmetic is
// stated in backends/intdot.py, which emulates it bit for bit.
//
// x_fixed turns each activation row into X = rint(x/σ) per 256 values (|X| ≤ 2^22) and splits X
// into signed digits, X = D0 + 2^8·D1 + 2^16·D2 (+ 2^24·D3, always 0: kept so that the one- to
// four-member column maps stay whole 4-digit sets), stored as the MMA's B fragments:
// per (row t, superblock s) 1 KB, [L/2][32-block pair][L%2][lane-quad position tq][16 bytes], the 16
// bytes being, for blocks 2p and 2p+1, digits L of elements 4tq..4tq+3 and 16+4tq..16+4tq+3 (b0, b1
// of mma.m16n8k32; b0 also serves as the k16 operand). A warp's 16-byte load of one MMA's fragments
// then reads 128 contiguous bytes per member.
//
// mma_tiles<tile>_<Q> copies the experts' weights into the kernels' layout: per expert, per tile (the
// launch's work item: 16 or 32 rows), per superblock s, per 16-row group, the group rows' s-th
// blocks (rows past R: zeros), arranged by the format's struct (Q4_K: the blocks back to back; Q6_K:
// by field, with 16-byte pieces swizzled so that the 8 rows a warp instruction reads hit distinct
// banks). A stage of a warp's ring (an item's superblock) is then one contiguous read, and an item
// one contiguous run; in the file's row-major order a stage was one read per row at the row stride,
// which the H100 served 10–20 % slower (session 5).
//
// moe_mma<n>: work items are MT 16-row tiles (the MMA's M) of one group (an expert and ≤ n members);
// each warp streams its share of items superblock by superblock through its own cp.async ring in
// shared memory. Lane (g, tq) = (lane/4, lane%4) reads its A fragment of rows g and g+8 from the
// ring: elements 4tq..4tq+3 and 16+4tq..16+4tq+3 of each 32 weights. Per weight group NK MMAs
// (1, 2 or 3) cover 2, 4 or 8 members' digits (see Cols); the digit dots are scaled by the
// group's integer scale into int32 sums, and per superblock the lanes join the four digit sums of
// each (row, member) pair into the exact int64 I. A warp holds a row's whole sum, so no reduction
// order but intdot's exists.
#pragma once
#include "decode.cuh"
#include "common.cuh"

#define MMA_XBITS 22               // intdot.XBITS
#define MMA_EMIN (-96)             // intdot.EMIN

__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }   // e in [-126, 127]

// Programmatic dependent launch (cuda.py launches moe_mma* so, backends/pdl.py): x_fixed lets the
// matvec start at once, and the matvec waits for x_fixed's output only after its first weight
// copies are in flight; gate+up lets moe_ffn's down x_fixed start, which waits for the act. Without
// such a launch both instructions are no-ops.
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Tuning builds only (-DMMA_TRACE=n, benchmarks/gpu_trace.py): per warp, %globaltimer at points k of
// its life into mma_trace / xf_trace (8 slots a warp; slot 7: the SM), to see where a launch's time goes.
#ifdef MMA_TRACE
__device__ unsigned long long mma_trace[MMA_TRACE], xf_trace[MMA_TRACE];
#define TRACE(buf, w, k)                                                                                        \
    do {                                                                                                        \
        if (threadIdx.x % 32 == 0 && 8 * (w) + 7 < MMA_TRACE) {                                               \
            unsigned long long t_;                                                                              \
            unsigned sm_;                                                                                       \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                                             \
            asm("mov.u32 %0, %%smid;" : "=r"(sm_));                                                            \
            buf[8 * (w) + (k)] = t_;                                                                            \
            buf[8 * (w) + 7] = sm_;                                                                             \
        }                                                                                                       \
    } while (0)
#else
#define TRACE(buf, w, k) ((void)0)
#endif

// One warp per 256-value superblock s of activation row t (8 per block of 256 threads). Lane
// (b, tq) = (lane/4, lane%4) converts elements 4tq..4tq+3 and 16+4tq..16+4tq+3 of 32-block b: the
// two 4-byte words of each digit L that its B-fragment slot holds, stored as one 8-byte write.
// mins ≠ 0 (formats with a min term): also Mx, the block's sum of X times σ, per 32-block.
// moe_ffn launches the down's x_fixed by PDL after gate+up (which triggers at its start), so that its
// blocks are resident and the down's matvec can take each SM gate+up leaves: it waits here for the
// act; an ordinary launch passes the wait at once.
extern "C" __global__ void __launch_bounds__(256) x_fixed(const float* __restrict__ X, int n_in, int mins, int n_rows,
                                                          u8* __restrict__ dig, float* __restrict__ sig,
                                                          float* __restrict__ mxs) {
    pdl_trigger();
    pdl_wait();
    const int S = n_in / 256, w = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32, b = lane / 4, tq = lane % 4;
    TRACE(xf_trace, w, 0);
    if (w >= n_rows * S) return;
    const int t = w / S, s = w % S;
    const float* xs = X + (long long)t * n_in + s * 256 + 32 * b + 4 * tq;
    const float4 v0 = *(const float4*)xs, v1 = *(const float4*)(xs + 16);
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    bool fin = true;
    float m = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) { fin = fin && isfinite(v[k]); m = fmaxf(m, fabsf(v[k])); }
    const bool bad = __any_sync(0xffffffffu, !fin);
    for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    int E;
    frexpf(bad ? 0.f : m, &E);
    E = max(E, MMA_EMIN);
    const float up = pow2f(MMA_XBITS - E), sg = bad ? __int_as_float(0x7fc00000) : pow2f(E - MMA_XBITS);
    unsigned wd[4][2] = {};
    int sum = 0;                                         // (|X| ≤ 2^22: 32 of them fit)
#pragma unroll
    for (int k = 0; k < 8; k++) {
        int r = bad ? 0 : __float2int_rn(v[k] * up);
        sum += r;
#pragma unroll
        for (int L = 0; L < 4; L++) {
            const int dd = ((r + 128) & 255) - 128;
            wd[L][k / 4] |= (unsigned)(dd & 255) << (8 * (k % 4));
            r = (r - dd) >> 8;
        }
    }
    u8* o = dig + ((long long)t * S + s) * 1024 + (b >> 1) * 128 + tq * 16 + (b & 1) * 8;
#pragma unroll
    for (int L = 0; L < 4; L++) *(uint2*)(o + (L >> 1) * 512 + (L & 1) * 64) = make_uint2(wd[L][0], wd[L][1]);
    if (mins) {                                          // block b's sum: its four lanes' (exact)
        for (int k = 1; k < 4; k <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
        if (tq == 0) mxs[((long long)t * S + s) * 8 + b] = __int2float_rn(sum) * sg;
    }
    if (lane == 0) sig[t * S + s] = sg;
    TRACE(xf_trace, w, 1);
}

__device__ __forceinline__ void mma32(int* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, uint2 b) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y), "r"(0));
}
__device__ __forceinline__ void mma16(int* d, unsigned a0, unsigned a1, unsigned b) {      // (signed A: Q6_K)
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(a0), "r"(a1), "r"(b), "r"(0));
}
// byte k of w, zero- or sign-extended, in one PRMT (k a compile-time constant after unrolling; the
// selector's high bit replicates the byte's sign: PTX prmt.b32's default mode)
__device__ __forceinline__ int ubyte(unsigned w, int k) {
    int r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(w), "r"(0x4440 | k));
    return r;
}
__device__ __forceinline__ int sbyte(unsigned w, int k) {
    int r;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(r) : "r"(w), "r"(0x8880 | 0x1110 * k | k));
    return r;
}
// (a & c) | (b & ~c), then (t & m) ^ x: one LOP3 each
__device__ __forceinline__ unsigned merge(unsigned a, unsigned b, unsigned c) {
    unsigned r;
    asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ unsigned and_xor(unsigned t, unsigned m, unsigned x) {
    unsigned r;
    asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(r) : "r"(t), "r"(m), "r"(x));
    return r;
}

// Per-format ring depth and layout.
#ifndef MMA_NB_Q4_K
#define MMA_NB_Q4_K 3
#endif
#ifndef MMA_NB_Q6_K
#define MMA_NB_Q6_K 2
#endif
// NBYTES, GS (weights per scale group), NB (ring depth); src: where mma_tiles takes byte w of a
// 16-row group's superblock from (row p, byte of its block); load: lane position tq's words of
// row p of a group in the ring (Raw).
// MIN: the format has a min term (intdot.WITH_MIN); ASHIFT: the MMA's A holds 2^ASHIFT·q.
struct MQ4_K {
    static constexpr int NBYTES = 144, GS = 32, NB = MMA_NB_Q4_K, ASHIFT = 0, COPY = 16;
    static constexpr bool MIN = true;
    struct Raw { uint4 h; unsigned w[4][2]; };                 // header; chunk c's words at 4tq, 16+4tq
    // the blocks back to back (144/4 ≡ 4 mod 8: the 8 rows a warp instruction reads start in 8
    // distinct groups of 4 banks)
    __device__ static int src(int w, int& p) { p = w / NBYTES; return w % NBYTES; }
    __device__ static void load(const u8* grp, int p, int tq, Raw& r) {
        const u8* blk = grp + p * NBYTES;
        r.h = *(const uint4*)blk;
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int k = 0; k < 2; k++) r.w[c][k] = *(const unsigned*)(blk + 16 + 32 * c + 16 * k + 4 * tq);
    }
    __device__ static unsigned scw(const Raw& r, int hf) {     // 6-bit scales of groups 4hf..4hf+3
        return hf ? (r.h.w & 0x0F0F0F0Fu) | ((r.h.y >> 2) & 0x30303030u) : r.h.y & 0x3F3F3F3Fu;
    }
    __device__ static float cm(const Raw& r, int gi) {         // the group's 6-bit min
        const unsigned w = (gi >> 2) ? ((r.h.w >> 4) & 0x0F0F0F0Fu) | ((r.h.z >> 2) & 0x30303030u) : r.h.z & 0x3F3F3F3Fu;
        return byte_f(w, gi & 3, 0.f);
    }
    __device__ static float d(const Raw& r) { return f16f((unsigned short)(r.h.x & 0xFFFF)); }
    __device__ static float dm(const Raw& r) { return f16f((unsigned short)(r.h.x >> 16)); }
};
struct MQ6_K {
    static constexpr int NBYTES = 210, GS = 16, NB = MMA_NB_Q6_K, ASHIFT = 2, COPY = 2;
    static constexpr bool MIN = false;
    struct Raw { unsigned ql[2][4], qh[2][2], sc[4]; unsigned short d; };
    // A 16-row group's superblock by field: ql (16 × 128 bytes), qh (16 × 64), scales (16 × 16), d
    // (16 × 2). Row p's 16-byte piece k of ql sits at slot k ^ (p % 8), of qh at k ^ (p / 2 % 4):
    // rows g = 0..7 then read 8 distinct groups of 4 banks, and every word is 4-byte aligned.
    static constexpr int QH = 16 * 128, SC = QH + 16 * 64, D = SC + 16 * 16;
    __device__ static int src(int w, int& p) {
        if (w < QH) { p = w / 128; return 16 * ((w % 128 / 16) ^ (p & 7)) + w % 16; }
        if (w < SC) { w -= QH; p = w / 64; return 128 + 16 * ((w % 64 / 16) ^ ((p >> 1) & 3)) + w % 16; }
        if (w < D) { w -= SC; p = w / 16; return 192 + w % 16; }
        w -= D; p = w / 2; return 208 + w % 2;
    }
    __device__ static void load(const u8* grp, int p, int tq, Raw& r) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int c = 0; c < 4; c++)
                r.ql[h][c] = *(const unsigned*)(grp + p * 128 + 16 * ((4 * h + c) ^ (p & 7)) + 4 * tq);
#pragma unroll
            for (int k = 0; k < 2; k++)
                r.qh[h][k] = *(const unsigned*)(grp + QH + p * 64 + 16 * ((2 * h + k) ^ ((p >> 1) & 3)) + 4 * tq);
        }
        const uint4 sc = *(const uint4*)(grp + SC + 16 * p);
        r.sc[0] = sc.x; r.sc[1] = sc.y; r.sc[2] = sc.z; r.sc[3] = sc.w;
        r.d = *(const unsigned short*)(grp + D + 2 * p);
    }
    __device__ static float d(const Raw& r) { return f16f(r.d); }
};

// grid-stride over the output's units of U bytes (F::COPY: 16 for Q4_K, whose 144-byte blocks sit
// 16-byte aligned in the file and keep their byte order; 2 for Q6_K's 2-byte-aligned 210-byte blocks
// and by-field order); experts: source slabs. Output order: [expert][tile of TILE rows][superblock]
// [16-row group][F's arrangement]; TILE = the rows of the launch's work item (gpu_layout.mma_tile),
// so an item's bytes are contiguous. GU (gate+up items): a tile is 16 rows of W (group 0) and the
// same 16 rows of W2 (group 1), so the gate+up kernel streams one contiguous run per item too.
template <int U> struct Unit;
template <> struct Unit<2> { typedef unsigned short T; __device__ static T zero() { return 0; } };
template <> struct Unit<16> { typedef uint4 T; __device__ static T zero() { return make_uint4(0, 0, 0, 0); } };
template <class F, int TILE, bool GU>
__device__ void mma_tiles(const void* __restrict__ Wv, const void* __restrict__ W2v, const int* __restrict__ experts,
                          long long es, int R, int row_bytes, void* __restrict__ outv, long long n_out) {
    constexpr int U = F::COPY, G16 = 16 * F::NBYTES, GROUPS = TILE / 16, RT = GU ? 16 : TILE;   // RT: rows a tile
    static_assert(!GU || TILE == 32, "a gate+up tile: 16 rows of each tensor");
    typedef typename Unit<U>::T T;
    T* __restrict__ out = (T*)outv;
    const int S = row_bytes / F::NBYTES, tiles = (R + RT - 1) / RT;
    for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < n_out; o += (long long)gridDim.x * blockDim.x) {
        long long q = U * o / G16;
        int p;
        const int byte = F::src((int)(U * o % G16), p), grp = (int)(q % GROUPS);
        q /= GROUPS;
        const int sb = (int)(q % S);
        q /= S;
        const int r = (int)(q % tiles) * RT + (GU ? 0 : 16 * grp) + p;
        const T* __restrict__ W = (const T*)(GU && grp ? W2v : Wv);
        const long long e = experts[q / tiles];
        out[o] = r < R ? W[(e * es + (long long)r * row_bytes + (long long)sb * F::NBYTES + byte) / U] : Unit<U>::zero();
    }
}
// mma_tiles<TILE>_<Q>: TILE = 16 or 32 rows (gpu_layout.mma_tile: the item of the kernel to run);
// mma_tiles_gu_<Q>: gate (W) and up (W2) into the gate+up kernels' tiles
#define MMA_TILES(Q, TILE)                                                                                       \
extern "C" __global__ void mma_tiles##TILE##_##Q(const void* W, const int* experts, long long es, int R,          \
                                                 int row_bytes, void* out, long long n_out) {                   \
    mma_tiles<M##Q, TILE, false>(W, W, experts, es, R, row_bytes, out, n_out);                                   \
}
#define MMA_TILES_GU(Q)                                                                                          \
extern "C" __global__ void mma_tiles_gu_##Q(const void* W, const void* W2, const int* experts, long long es,     \
                                            int R, int row_bytes, void* out, long long n_out) {                 \
    mma_tiles<M##Q, 32, true>(W, W2, experts, es, R, row_bytes, out, n_out);                                     \
}
MMA_TILES(Q4_K, 16)
MMA_TILES(Q4_K, 32)
MMA_TILES(Q6_K, 16)
MMA_TILES(Q6_K, 32)
MMA_TILES_GU(Q4_K)
MMA_TILES_GU(Q6_K)

// Columns (B column n is supplied by the lanes with g = n; lane (g, tq) holds D columns 2tq, 2tq+1 of
// rows g and g+8), by NK, the MMAs per weight group:
// NK = 3 (up to 8 members): MMA k = digit k, column n = member n; lane tq finishes members 2tq and
//   2tq+1 (D column j of each MMA). X has three digits (|X| ≤ 2^22), so a fourth MMA would add 0.
// NK = 2 (up to 4 members): column n ↔ member n/2, digit 2k + n%2; lane tq finishes member tq.
// NK = 1 (up to 2 members): column n ↔ member n/4, digit n%4; lanes tq and tq^1 hold digits (0, 1)
//   and (2, 3) of member tq/2 and trade halves: the even lane finishes row g, the odd row g+8 (its
//   sums sit in acc[mt][0][0]).
// Each lane then finishes its own sums: I = Σ digits · 2^(8·digit) (>> ASHIFT), acc = fma(d,
// f32(I)·σ, acc), and for a format with a min (Q4_K) acc = fma(−dm, mm, acc), mm being the fma chain
// over the G groups of (cm of the row, Mx of the member), in group order.
template <int NK> struct Cols {
    static_assert(NK >= 1 && NK <= 3, "1, 2 or 3 MMAs per weight group");
    static constexpr int J = NK == 3 ? 2 : 1;                                  // members a lane finishes
    __device__ static int bmember(int g) { return NK == 3 ? g : NK == 2 ? g >> 1 : g >> 2; }
    __device__ static int bdigit(int g, int k) { return NK == 3 ? k : NK == 2 ? 2 * k + (g & 1) : g & 3; }
    __device__ static int dmember(int tq, int j) { return NK == 3 ? 2 * tq + j : NK == 2 ? tq : tq >> 1; }
    // NK > 1: the exact sum of member j's digit dots for row rr (g, g+8) from the lane's D sums
    __device__ static long long join(const int (*T)[4], int rr, int j) {
        if (NK == 3) return (long long)T[0][2 * rr + j] + 256LL * T[1][2 * rr + j] + 65536LL * T[2][2 * rr + j];
        return (long long)T[0][2 * rr] + 256LL * T[0][2 * rr + 1] + 65536LL * T[1][2 * rr] + 16777216LL * T[1][2 * rr + 1];
    }
};

template <class F, int NK, int MT>
__device__ __forceinline__ void finish(const typename F::Raw (*a)[2], int (*T)[NK][4], const float* mxs,
                                       const int* moff, const float* sg, float (*acc)[Cols<NK>::J][2], int tq) {
    constexpr int G = 256 / F::GS, J = Cols<NK>::J, NR = NK > 1 ? 2 : 1;        // NR: rows a lane finishes
    const bool odd = tq & 1;
    float mm[MT][J][2];                                  // (formats with a min only)
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int j = 0; j < J; j++) mm[mt][j][0] = mm[mt][j][1] = 0.f;
    if constexpr (F::MIN) {
#pragma unroll
        for (int v = 0; v < G / 4; v++) {
            float4 mx[J];
#pragma unroll
            for (int j = 0; j < J; j++) mx[j] = *((const float4*)(mxs + moff[j]) + v);
#pragma unroll
            for (int e = 0; e < 4; e++)
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int rr = 0; rr < NR; rr++) {
                        const float c = NK > 1 ? F::cm(a[mt][rr], 4 * v + e)
                                               : odd ? F::cm(a[mt][1], 4 * v + e) : F::cm(a[mt][0], 4 * v + e);
#pragma unroll
                        for (int j = 0; j < J; j++)
                            mm[mt][j][rr] = __fmaf_rn(c, e == 0 ? mx[j].x : e == 1 ? mx[j].y : e == 2 ? mx[j].z : mx[j].w,
                                                      mm[mt][j][rr]);
                    }
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int rr = 0; rr < NR; rr++) {
            const float dd = NK > 1 ? F::d(a[mt][rr]) : odd ? F::d(a[mt][1]) : F::d(a[mt][0]);
#pragma unroll
            for (int j = 0; j < J; j++) {
                long long I;
                if (NK > 1) {
                    I = Cols<NK>::join(T[mt], rr, j);
                } else {
                    const int* t = T[mt][0];
                    const int ra = __shfl_xor_sync(0xffffffffu, odd ? t[0] : t[2], 1);
                    const int rb = __shfl_xor_sync(0xffffffffu, odd ? t[1] : t[3], 1);
                    I = (long long)(odd ? ra : t[0]) + 256LL * (odd ? rb : t[1]) + 65536LL * (odd ? t[2] : ra) +
                        16777216LL * (odd ? t[3] : rb);
                }
                float& sm = acc[mt][j][rr];
                sm = __fmaf_rn(dd, __fmul_rn(__ll2float_rn(I >> F::ASHIFT), sg[j]), sm);   // (exact shift)
                if constexpr (F::MIN) {
                    const float dm = NK > 1 ? F::dm(a[mt][rr]) : odd ? F::dm(a[mt][1]) : F::dm(a[mt][0]);
                    sm = __fmaf_rn(-dm, mm[mt][j][rr], sm);
                }
            }
        }
}

// T[0..3] += the MMA's D scaled by the integer scale of its row (g: s0, g+8: s1)
__device__ __forceinline__ void scale_add(int* t, const int* d, int s0, int s1) {
    t[0] += s0 * d[0]; t[1] += s0 * d[1]; t[2] += s1 * d[2]; t[3] += s1 * d[3];
}
// Per format, 32-block b (x fragments of MMA k: x[k]) of MT tiles into T.
template <int NK, int MT>
__device__ __forceinline__ void block32(const MQ4_K::Raw (*a)[2], int b, const uint2* x, int (*T)[NK][4]) {
    const int c = b >> 1, sh = 4 * (b & 1);                 // chunk c: low nibbles = block 2c, high = 2c+1
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const MQ4_K::Raw* r = a[mt];
        const unsigned a0 = (r[0].w[c][0] >> sh) & 0x0F0F0F0Fu, a1 = (r[1].w[c][0] >> sh) & 0x0F0F0F0Fu;
        const unsigned a2 = (r[0].w[c][1] >> sh) & 0x0F0F0F0Fu, a3 = (r[1].w[c][1] >> sh) & 0x0F0F0F0Fu;
        const int s0 = ubyte(MQ4_K::scw(r[0], b >> 2), b & 3), s1 = ubyte(MQ4_K::scw(r[1], b >> 2), b & 3);
#pragma unroll
        for (int k = 0; k < NK; k++) {
            int d[4];
            mma32(d, a0, a1, a2, a3, x[k]);
            scale_add(T[mt][k], d, s0, s1);
        }
    }
}
template <int NK, int MT>
__device__ __forceinline__ void block32(const MQ6_K::Raw (*a)[2], int b, const uint2* x, int (*T)[NK][4]) {
    const int h = b >> 2, k4 = b & 3;                        // half h, quarter k4
#pragma unroll
    for (int grp = 0; grp < 2; grp++) {                      // groups of 16: elements 4tq.. (b0), 16+4tq.. (b1)
        const int gi = 8 * h + 2 * k4 + grp;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            unsigned av[2];
            int sv[2];
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                const MQ6_K::Raw& r = a[mt][rr];
                // 4·(q − 32) as a signed byte: (q << 2) with bit 7 flipped; q = low nibble | high bits << 4
                const unsigned w = r.ql[h][2 * (k4 & 1) + grp];
                const unsigned lo = (k4 >> 1) ? w >> 2 : w << 2, hi = r.qh[h][grp] << (6 - 2 * k4);
                av[rr] = and_xor(merge(lo, hi, 0x3C3C3C3Cu), 0xFCFCFCFCu, 0x80808080u);
                sv[rr] = sbyte(r.sc[gi >> 2], gi & 3);
            }
#pragma unroll
            for (int k = 0; k < NK; k++) {
                int d[4];
                mma16(d, av[0], av[1], grp ? x[k].y : x[k].x);
                scale_add(T[mt][k], d, sv[0], sv[1]);
            }
        }
    }
}

// One superblock's digit dots of MT tiles (raw a[mt][0], a[mt][1]: rows g, g+8) into T. The lane's
// B fragments of MMA k, 32-blocks 2bp (.x, .y) and 2bp+1 (.z, .w): xf[bp][k] for bp < XPF (loaded
// ahead by the caller), else loaded here from xb + xo[k] + 8·bp.
template <int NK, int MT, int XPF, class Raw>
__device__ __forceinline__ void dots(const Raw (*a)[2], const uint4* xb, const int* xo,
                                     const uint4 (*xf)[NK], int (*T)[NK][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int k = 0; k < NK; k++) T[mt][k][0] = T[mt][k][1] = T[mt][k][2] = T[mt][k][3] = 0;
#pragma unroll
    for (int bp = 0; bp < 4; bp++) {
        uint2 x[2][NK];
#pragma unroll
        for (int k = 0; k < NK; k++) {
            const uint4 v = bp < XPF ? xf[bp < XPF ? bp : 0][k] : xb[xo[k] + 8 * bp];
            x[0][k] = make_uint2(v.x, v.y);
            x[1][k] = make_uint2(v.z, v.w);
        }
        block32<NK, MT>(a, 2 * bp, x[0], T);
        block32<NK, MT>(a, 2 * bp + 1, x[1], T);
    }
}

// The x rows a block's groups read, staged in shared memory after the rings (XS: the 8-member down,
// whose groups each read their own x): groups [glo, glo + n), member slot m of group glo + j at
// sm + (8j + m)·ms uint4 (ms = S·64 + 4: one x_fixed record a superblock, digits 0-2 copied, and 64 B
// more, so that the two slots a phase of a warp's LDS.128 reads start in distinct banks).
struct XStage {
    const uint4* sm;
    int glo, n, ms;
};
// One work item: RI rows of one group (≤ 2, 4, 8 members for NK 1, 2, 3), as lane (g, tq) sees it;
// XS: xr, the B column member's x row (superblock 0), in shared memory where its group is staged.
template <bool XS> struct XRow { const uint4* xr; };
template <> struct XRow<false> {};
template <int NK, bool XS>
struct Item : XRow<XS> {
    int r0, nt, tb, td[Cols<NK>::J], od[Cols<NK>::J];
};
// The x row of member m of a group of nt members from m0 (a short group's missing members repeat its
// last one: their columns are computed and not written)
__device__ __forceinline__ int member_row(const int* __restrict__ mx, int m0, int nt, int m) {
    return mx[m0 + min(m, nt - 1)];
}
template <bool XS, class It>
__device__ __forceinline__ const uint4* xrow(const It& m, const uint4* xb) {
    if constexpr (XS) return m.xr;
    else return xb;
}
template <int NK, int RI, bool XS>
__device__ __forceinline__ Item<NK, XS> item(int i, int tpg, const int* __restrict__ gstart, const int* __restrict__ mx,
                                         const int* __restrict__ mo, int g, int tq, const uint4* xb, int S,
                                         const XStage& xs) {
    Item<NK, XS> it;
    const int grp = i / tpg, m0 = gstart[grp];
    it.r0 = (i % tpg) * RI + g;
    it.nt = gstart[grp + 1] - m0;
    it.tb = member_row(mx, m0, it.nt, Cols<NK>::bmember(g));      // B column's member, D's (clamped)
    if constexpr (XS) {
        const unsigned j = grp - xs.glo;
        it.xr = j < (unsigned)xs.n ? xs.sm + (8 * j + Cols<NK>::bmember(g)) * xs.ms : xb + (long long)it.tb * S * 64;
    }
#pragma unroll
    for (int j = 0; j < Cols<NK>::J; j++) {
        const int k = m0 + min(Cols<NK>::dmember(tq, j), it.nt - 1);
        it.td[j] = mx[k];
        it.od[j] = mo[k];
    }
    return it;
}

// Warp wg streams its share of items, then pool items, superblock by superblock through an NB-deep
// ring of shared buffers (an item's superblock each: 16·MT·NBYTES bytes of mma_tiles' layout, copied
// by cp.async in 16-byte pieces), so NB-1 superblocks are in flight while one is computed. Warps share
// nothing. GU (gate+up): an item is 16 rows of both tensors, tile 0 the gate's and tile 1 the up's,
// so a lane ends an item holding both sums of its (row, member) pairs and writes gate, up and
// act(gate, up) into out, out2, out3 (W: mma_tiles_gu's layout); otherwise an item is MT 16-row
// tiles of one tensor, written to out.
template <class F, int NK, int MT, int XPF, bool GU, bool XS>
__device__ void mma_rows(const u8* __restrict__ W, long long es, int R, int n_in,
                         const int* __restrict__ gexp, const int* __restrict__ gstart, const int* __restrict__ mx,
                         const int* __restrict__ mo, const uint4* xb, const float* sig,
                         const float* mxs, float* __restrict__ out, float* __restrict__ out2, int n_items,
                         int per_warp, float* __restrict__ out3, int act, float alpha, float limit,
                         unsigned long long* __restrict__ pool, int strided) {
    static_assert(!GU || MT == 2, "a gate+up item is a gate tile and an up tile");
    extern __shared__ __align__(16) unsigned char ring[];
    // RI: rows per item (GU: of each tensor); SLOT: an item's superblock (mma_tiles' tile)
    constexpr int RI = GU ? 16 : 16 * MT, SLOT = 16 * MT * F::NBYTES, NP = SLOT / 16, NC = (NP + 31) / 32;
    static_assert(SLOT % 16 == 0, "an item's superblock is whole 16-byte pieces");
    const int lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
    pdl_trigger();                                       // (moe_ffn: the down's x_fixed may queue its blocks)
    // A warp's fixed share: per_warp items below n_fixed; the rest (the pool) are claimed one at a
    // time by the warps that finish first (pool[0], 64-bit, never reset: a launch makes exactly
    // n_pool + its warps claims, one failing claim a warp, so claims are read modulo that).
    const int nw = gridDim.x * (blockDim.x / 32), wg = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int n_fixed = min(n_items, nw * per_warp), n_pool = n_items - n_fixed;
    // strided: the share is items wg, wg + nw, … below n_fixed (at any moment the warps read one
    // window of W); else items [wg·per_warp, +per_warp) (consecutive items share their expert's x rows).
    // A share or a pool item is walked from i0 by step while below i1.
    int step = strided ? nw : 1, i0 = strided ? wg : wg * per_warp;
    int i1 = strided ? n_fixed : min(n_fixed, i0 + per_warp);
    const int first = i0;
    TRACE(mma_trace, wg, 0);
    // XS: the groups of the block's fixed shares (at most two; none unless every warp of the block has a
    // share, so that all its warps meet the staging's barrier), as far as the dynamic shared memory
    // past the rings holds them (the host sizes it: gpu_layout.mma_xs_bytes)
    XStage xs{};
    if constexpr (XS) {
        xs.sm = (const uint4*)(ring + (blockDim.x / 32) * F::NB * SLOT);
        xs.ms = n_in / 256 * 64 + 4;
        const int nwb = blockDim.x / 32, tpg = (R + RI - 1) / RI, lo = blockIdx.x * nwb * per_warp;
        unsigned dsz;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dsz));
        const int cap = min(2, (int)((dsz - nwb * F::NB * SLOT) / (8 * 16 * xs.ms)));
        if (!strided && cap > 0 && (blockIdx.x * nwb + nwb - 1) * per_warp < n_fixed) {
            xs.glo = lo / tpg;
            xs.n = min(cap, (min(n_fixed, lo + nwb * per_warp) - 1) / tpg - xs.glo + 1);
        }
    }
    for (;;) {
        if (i0 < i1) {
            const int S = n_in / 256, tpg = (R + RI - 1) / RI, G = 256 / F::GS;
            u8* my = ring + (size_t)(threadIdx.x / 32) * F::NB * SLOT;
            // the fetch cursor: item fi, superblock fs, ring slot fslot; fb: the item's rows in superblock 0
            int fi = i0, fs = 0, fslot = 0;
            const u8* fb;
            auto fitem = [&](int i) {
                fb = W + (long long)gexp[i / tpg] * es + (long long)(i % tpg) * S * SLOT;   // the item's layout tile
            };
            auto fetch = [&]() {
                if (fi < i1) {
                    u8* dst = my + fslot * SLOT + 16 * lane;
                    const u8* src = fb + fs * SLOT + 16 * lane;
#pragma unroll
                    for (int c = 0; c < NC; c++)
                        if (32 * NC == NP || lane + 32 * c < NP) cp_async16(dst + 512 * c, src + 512 * c);
                    if (++fs == S) { fs = 0; if ((fi += step) < i1) fitem(fi); }
                    if (++fslot == F::NB) fslot = 0;
                }
                cp_async_commit();                               // (an empty group keeps the wait count uniform)
            };
            fitem(i0);
#pragma unroll
            for (int j = 0; j < F::NB - 1; j++) fetch();
            // the item and the next one (host arrays: ready before x_fixed is)
            Item<NK, XS> it = item<NK, RI, XS>(i0, tpg, gstart, mx, mo, g, tq, xb, S, xs), nx = it;
            if (i0 + step < i1) nx = item<NK, RI, XS>(i0 + step, tpg, gstart, mx, mo, g, tq, xb, S, xs);
            // MMA k's B fragments of member tb, superblock s (uint4s; + 8·bp for block pair bp)
            auto xoff = [&](int tb, int s, int k) {
                const int L = Cols<NK>::bdigit(g, k);
                return (tb * S + s) * 64 + (L >> 1) * 32 + (L & 1) * 4 + tq;
            };
            // The first XPF block pairs' fragments and the σ of the superblock computed next, loaded one
            // superblock ahead (their latency stalled each superblock's first MMAs and its last multiplies:
            // ncu, session 6).
            constexpr int J = Cols<NK>::J;
            uint4 xf[XPF > 0 ? XPF : 1][NK];
            float sg[J];
            auto prefetch = [&](const Item<NK, XS>& m, int s) {
#pragma unroll
                for (int bp = 0; bp < XPF; bp++)
#pragma unroll
                    for (int k = 0; k < NK; k++) xf[bp][k] = xrow<XS>(m, xb)[xoff(XS ? 0 : m.tb, s, k) + 8 * bp];
#pragma unroll
                for (int j = 0; j < J; j++) sg[j] = sig[m.td[j] * S + s];
            };
            pdl_wait();                                          // x_fixed's output is read from here on
            if (i0 == first) TRACE(mma_trace, wg, 1);
            if (XS && xs.n && i0 == first) {                     // every warp of a staging block is here once
                const int nwb = blockDim.x / 32, wl = threadIdx.x / 32;
                for (int p0 = wl; p0 < 8 * xs.n; p0 += 4 * nwb) {
                    const uint4* src[4];
#pragma unroll
                    for (int j = 0; j < 4; j++) {                // (the rows' ids first: one round of latency)
                        const int p = min(p0 + nwb * j, 8 * xs.n - 1), m0 = gstart[xs.glo + p / 8];
                        src[j] = xb + (long long)member_row(mx, m0, gstart[xs.glo + p / 8 + 1] - m0, p % 8) * S * 64;
                    }
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int p = p0 + nwb * j;
                        if (p < 8 * xs.n)
                            for (int q = lane; q < S * 48; q += 32) {   // a record's digits 0-2: 48 of its 64 uint4
                                const int v = q % 48, u = q / 48 * 64 + (v < 32 ? v : 32 + (v - 32) / 4 * 8 + v % 4);
                                cp_async16((void*)(xs.sm + p * xs.ms + u), src[j] + u);
                            }
                    }
                }
                cp_async_commit();
                cp_async_wait<0>();
                __syncthreads();
            }
            prefetch(it, 0);
            float acc[MT][J][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < J; j++) acc[mt][j][0] = acc[mt][j][1] = 0.f;
            for (int i = i0, s = 0, slot = 0; i < i1;) {
                fetch();                                         // into the slot the previous superblock used
                cp_async_wait<F::NB - 1>();                      // this superblock has landed
                __syncwarp();
                const u8* sl = my + slot * SLOT;
#ifdef MMA_NOCOMPUTE                                     // (tuning only: the ring's streaming ceiling, wrong sums)
                acc[0][0][0] += sl[lane];
                if (s + 1 < S) prefetch(it, s + 1);
#else
                typename F::Raw cur[MT][2];
#pragma unroll
                for (int v = 0; v < 2 * MT; v++)
                    F::load(sl + (v >> 1) * 16 * F::NBYTES, g + 8 * (v & 1), tq, cur[v >> 1][v & 1]);
                int xo[NK], moff[J];
#pragma unroll
                for (int k = 0; k < NK; k++) xo[k] = xoff(XS ? 0 : it.tb, s, k);
#pragma unroll
                for (int j = 0; j < J; j++) moff[j] = (it.td[j] * S + s) * G;
                int T[MT][NK][4];
                dots<NK, MT, XPF>(cur, xrow<XS>(it, xb), xo, xf, T);
                float sgc[J];
#pragma unroll
                for (int j = 0; j < J; j++) sgc[j] = sg[j];
                if (s + 1 < S) prefetch(it, s + 1);
                else if (i + step < i1) prefetch(nx, 0);
                finish<F, NK, MT>(cur, T, mxs, moff, sgc, acc, tq);
#endif
                __syncwarp();                                    // the slot is refilled next
                if (++slot == F::NB) slot = 0;
                if (i == i0 && s == 0 && i0 == first) TRACE(mma_trace, wg, 2);   // (the fixed share's)
                if (++s == S) {                                  // item done: every lane holds its members' sums
#pragma unroll
                    for (int j = 0; j < J; j++) {
                        const bool wr = Cols<NK>::dmember(tq, j) < it.nt;
                        const long long ob = (long long)it.od[j] * R;
                        if constexpr (GU) {
#pragma unroll
                            for (int rr = 0; rr < (NK > 1 ? 2 : 1); rr++) {
                                const int r = it.r0 + 8 * (NK > 1 ? rr : tq & 1);
                                const float gt = acc[0][j][rr], up = acc[1][j][rr];
                                if (wr && r < R) {
                                    out[ob + r] = gt;
                                    out2[ob + r] = up;
                                    out3[ob + r] = act_fn(act, gt, up, alpha, limit);
                                }
                                acc[0][j][rr] = acc[1][j][rr] = 0.f;
                            }
                        } else {
#pragma unroll
                            for (int mt = 0; mt < MT; mt++) {
#pragma unroll
                                for (int rr = 0; rr < (NK > 1 ? 2 : 1); rr++) {
                                    const int r = it.r0 + 16 * mt + 8 * (NK > 1 ? rr : tq & 1);
                                    if (wr && r < R) out[ob + r] = acc[mt][j][rr];
                                    acc[mt][j][rr] = 0.f;
                                }
                            }
                        }
                    }
                    s = 0;
                    it = nx;
                    i += step;
                    if (i + step < i1) nx = item<NK, RI, XS>(i + step, tpg, gstart, mx, mo, g, tq, xb, S, xs);
                }
            }
            cp_async_wait<0>();
        }
        unsigned long long v = 0;
        if (lane == 0) v = atomicAdd(pool, 1ull);
        v = __shfl_sync(0xffffffffu, v, 0) % (unsigned long long)(n_pool + nw);
        if (v >= (unsigned long long)n_pool) break;
        i0 = n_fixed + (int)v;
        i1 = i0 + 1;
        step = 1;
    }
    TRACE(mma_trace, wg, 3);
}

// moe_mma<n>_<Q>: one tensor, groups of up to n members (1, 2, 3 MMAs per weight group for n = 2, 4,
// 8), MT tiles per item (gpu_layout.MMA_MT[n]), MINB blocks per SM the register budget is set for.
// moe_mma_gu<n>_<Q>: gate, up and act(gate, up), items of 16 rows of both tensors. per_warp: a warp's
// fixed share (gpu_layout.mma_grid; the pool covers the items past the shares); block 128, dynamic shared memory 4·NB·16·MT·NBYTES (gpu_layout.mma_smem);
// W in mma_tiles' layout (mma_tiles<tile>_<Q> or, gate+up, mma_tiles_gu_<Q>), es its expert stride.
// Measured (H100, session 5): one or two members run best with more warps (MT 1, 4 blocks), eight
// with the activation loads shared by two tiles (MT 2, 2 blocks); session 7: gate+up in one kernel
// (two tiles an item, 3 blocks for one or two members) beat the gate and up launches it replaced.
#ifndef MMA_MINB_1
#define MMA_MINB_1 4
#endif
#ifndef MMA_MINB_2
#define MMA_MINB_2 2
#endif
#ifndef MMA_MINB_GU1                // gate+up for one or two members (two tiles an item)
#define MMA_MINB_GU1 3
#endif
#define MMA_ENTRY(NAME, F, NK, MT, GU, MINB, XS)                                                                 \
extern "C" __global__ void __launch_bounds__(128, MINB) NAME(                                                   \
        const u8* W, long long es, int R, int n_in, const int* gexp, const int* gstart,                          \
        const int* mx, const int* mo, const uint4* xb, const float* sig, const float* mxs, float* out,           \
        float* out2, int n_items, int per_warp, float* out3, int act, float alpha, float limit,                   \
        unsigned long long* pool, int strided) {                                                                 \
    mma_rows<F, NK, MT, MMA_XPF, GU, XS>(W, es, R, n_in, gexp, gstart, mx, mo, xb, sig, mxs, out, out2, n_items, \
                                         per_warp, out3, act, alpha, limit, pool, strided);                      \
}
#ifndef MMA_MT_2                   // tiles per item by members served (gpu_layout.MMA_MT; tuning builds override)
#define MMA_MT_2 1
#endif
#ifndef MMA_MT_4
#define MMA_MT_4 2
#endif
#ifndef MMA_MT_8
#define MMA_MT_8 2
#endif
#ifndef MMA_XPF                    // block pairs (of 4) of B fragments loaded a superblock ahead
#define MMA_XPF 4                  // (session 6, H100: Q6_K 8 tokens 237 → 202 µs; 1 token: no change)
#endif
#define MMA_MINB_OF(MT) MMA_MINB_##MT
#define MMA_ENTRY_(NAME, F, NK, MT, XS) MMA_ENTRY(NAME, F, NK, MT, false, MMA_MINB_OF(MT), XS)
MMA_ENTRY_(moe_mma2_Q4_K, MQ4_K, 1, MMA_MT_2, false)
MMA_ENTRY_(moe_mma4_Q4_K, MQ4_K, 2, MMA_MT_4, false)
MMA_ENTRY_(moe_mma8_Q4_K, MQ4_K, 3, MMA_MT_8, true)
MMA_ENTRY_(moe_mma2_Q6_K, MQ6_K, 1, MMA_MT_2, false)
MMA_ENTRY_(moe_mma4_Q6_K, MQ6_K, 2, MMA_MT_4, false)
MMA_ENTRY_(moe_mma8_Q6_K, MQ6_K, 3, MMA_MT_8, true)
MMA_ENTRY(moe_mma_gu2_Q4_K, MQ4_K, 1, 2, true, MMA_MINB_GU1, false)
MMA_ENTRY(moe_mma_gu4_Q4_K, MQ4_K, 2, 2, true, MMA_MINB_2, false)
MMA_ENTRY(moe_mma_gu8_Q4_K, MQ4_K, 3, 2, true, MMA_MINB_2, false)
MMA_ENTRY(moe_mma_gu2_Q6_K, MQ6_K, 1, 2, true, MMA_MINB_GU1, false)
MMA_ENTRY(moe_mma_gu4_Q6_K, MQ6_K, 2, 2, true, MMA_MINB_2, false)
MMA_ENTRY(moe_mma_gu8_Q6_K, MQ6_K, 3, 2, true, MMA_MINB_2, false)
