// Tensor-core matvec for Q4_K and Q6_K in f32 mode: exact integer dot products on int8 tensor
// cores (mma.sync u8 × s8 → s32) against activations in block fixed point. The arithmetic is
// stated in backends/intdot.py, which emulates it bit for bit.
//
// x_fixed turns each activation row into X = rint(x/σ) per 256 values (|X| ≤ 2^30) and splits X
// into four signed digits, X = D0 + 2^8·D1 + 2^16·D2 + 2^24·D3, stored as the MMA's B fragments:
// for 32-block b and digit L, 32 bytes, the 8 of lane-quad position tq being digits of elements
// 4tq..4tq+3 and 16+4tq..16+4tq+3 (b0, b1 of mma.m16n8k32; b0 also serves as the k16 operand).
//
// moe_mma: work items are 16-row tiles (the MMA's M) of one group (an expert and ≤ 8 members);
// each warp streams a run of items superblock by superblock through its own cp.async ring in
// shared memory. Lane (g, tq) = (lane/4, lane%4) reads its A fragment of rows g and g+8 from the
// ring: elements 4tq..4tq+3 and 16+4tq..16+4tq+3 of each 32 weights. One MMA serves two members:
// column n = (member 2m + n/4, digit n%4), so lane (g, tq) holds digits 2(tq%2), 2(tq%2)+1 of
// member 2m + tq/2 for rows g and g+8; per group the digit dots are scaled by the group's integer
// scale into int32 sums, and per superblock a lane pair joins its four digit sums into the exact
// int64 I. A warp holds a row's whole sum, so no reduction order but intdot's exists.
#pragma once
#include "decode.cuh"
#include "common.cuh"

#define MMA_XBITS 30               // intdot.XBITS
#define MMA_EMIN (-96)             // intdot.EMIN

__device__ __forceinline__ float pow2f(int e) { return __int_as_float((e + 127) << 23); }   // e in [-126, 127]

// One 256-value superblock of one activation row per block of 256 threads.
extern "C" __global__ void __launch_bounds__(256) x_fixed(const float* __restrict__ X, int n_in, int gs,
                                                          u8* __restrict__ dig, float* __restrict__ sig,
                                                          float* __restrict__ mxs) {
    const int s = blockIdx.x, t = blockIdx.y, j = threadIdx.x, S = n_in / 256;
    __shared__ float wmax[8];
    const float v = X[(long long)t * n_in + s * 256 + j];
    const bool bad = __syncthreads_or(!isfinite(v));
    float m = bad ? 0.f : fabsf(v);
    for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (j % 32 == 0) wmax[j / 32] = m;
    __syncthreads();
    m = wmax[0];
    for (int k = 1; k < 8; k++) m = fmaxf(m, wmax[k]);
    int E;
    frexpf(m, &E);
    E = max(E, MMA_EMIN);
    const int xi = bad ? 0 : __float2int_rn(v * pow2f(MMA_XBITS - E));
    const float sg = bad ? __int_as_float(0x7fc00000) : pow2f(E - MMA_XBITS);
    const int l = j % 32, tq = (l % 16) / 4, h = l / 16;
    u8* o = dig + ((long long)t * (n_in / 32) + s * 8 + j / 32) * 128 + tq * 8 + h * 4 + l % 4;
    int r = xi;
#pragma unroll
    for (int L = 0; L < 4; L++) {
        const int dd = ((r + 128) & 255) - 128;
        o[32 * L] = (u8)dd;
        r = (r - dd) >> 8;
    }
    long long sum = xi;
    for (int k = gs / 2; k; k >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
    if (j % gs == 0) mxs[((long long)t * S + s) * (256 / gs) + j / gs] = __ll2float_rn(sum) * sg;
    if (j == 0) sig[t * S + s] = sg;
}

__device__ __forceinline__ void mma32(int* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, uint2 b) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y), "r"(0));
}
__device__ __forceinline__ void mma16(int* d, unsigned a0, unsigned a1, unsigned b) {
    asm("mma.sync.aligned.m16n8k16.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(a0), "r"(a1), "r"(b), "r"(0));
}
__device__ __forceinline__ int sbyte(unsigned w, int k) { return (int)(w << (24 - 8 * k)) >> 24; }   // signed byte k
__device__ __forceinline__ int ubyte(unsigned w, int k) { return (w >> (8 * k)) & 255; }

// Per-format superblock slices of one row (in the shared ring) for lane position tq.
#ifndef MMA_NB_Q4_K
#define MMA_NB_Q4_K 3
#endif
#ifndef MMA_NB_Q6_K
#define MMA_NB_Q6_K 2
#endif
// NBYTES, GS (weights per scale group), CH (16-byte copies per row slice, alignment slack included),
// STRIDE (bytes per row slice in the ring: STRIDE/4 ≡ 4 mod 8, so the 8 rows a warp instruction
// reads start in 8 distinct groups of 4 banks), NB (ring depth).
struct MQ4_K {
    static constexpr int NBYTES = 144, GS = 32, CH = 9, STRIDE = 144, NB = MMA_NB_Q4_K;
    struct Raw { uint4 h; unsigned w[4][2]; };                 // header; chunk c's words at 4tq, 16+4tq
    __device__ static void load(const u8* blk, int tq, Raw& r) {
        r.h = *(const uint4*)blk;
#pragma unroll
        for (int c = 0; c < 4; c++)
#pragma unroll
            for (int k = 0; k < 2; k++) r.w[c][k] = *(const unsigned*)(blk + 16 + 32 * c + 16 * k + 4 * tq);
    }
};
struct MQ6_K {
    static constexpr int NBYTES = 210, GS = 16, CH = 14, STRIDE = 240, NB = MMA_NB_Q6_K;
    struct Raw { unsigned ql[2][4], qh[2][2], sc[4]; unsigned short d; };
    __device__ static void load(const u8* blk, int tq, Raw& r) {           // blocks are 2-byte aligned
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int c = 0; c < 4; c++) r.ql[h][c] = ld4_a2(blk + 64 * h + 16 * c + 4 * tq);
#pragma unroll
            for (int k = 0; k < 2; k++) r.qh[h][k] = ld4_a2(blk + 128 + 32 * h + 16 * k + 4 * tq);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) r.sc[i] = ld4_a2(blk + 192 + 4 * i);
        r.d = *(const unsigned short*)(blk + 208);
    }
};


// Per superblock: a lane pair (tq even, tq odd) holds digit sums (0, 1) and (2, 3) of one member;
// the even lane joins them into the exact I and adds d·f32(I)·σ − dm·mm (the odd lane's copy is unused).
template <int NM>
__device__ __forceinline__ void finish(int (*T)[4], float (*mm)[2], const float* dd, const float* dm,
                                       const float* sg, float (*acc)[2]) {
#pragma unroll
    for (int m = 0; m < NM; m++) {
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            const int hi0 = __shfl_xor_sync(0xffffffffu, T[m][2 * rr], 1);
            const int hi1 = __shfl_xor_sync(0xffffffffu, T[m][2 * rr + 1], 1);
            const long long I = (long long)T[m][2 * rr] + 256LL * T[m][2 * rr + 1] + 65536LL * hi0 + 16777216LL * hi1;
            acc[m][rr] = __fmaf_rn(dd[rr], __fmul_rn(__ll2float_rn(I), sg[m]), acc[m][rr]);
            acc[m][rr] = __fmaf_rn(-dm[rr], mm[m][rr], acc[m][rr]);
        }
    }
}

// One superblock of rows g, g+8 (raw a[0], a[1]) for NM member pairs: adds to acc[m][row].
template <int NM>
__device__ __forceinline__ void superblock(const MQ4_K::Raw* a, const uint2* __restrict__ xb, const int* xoff,
                                           const float* sg, const float* __restrict__ mxs, const int* moff, float (*acc)[2]) {
    int T[NM][4];
    float mm[NM][2];
    unsigned scw[2][2], mnw[2][2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const uint4 h = a[rr].h;
        scw[rr][0] = h.y & 0x3F3F3F3Fu;
        scw[rr][1] = (h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u);
        mnw[rr][0] = h.z & 0x3F3F3F3Fu;
        mnw[rr][1] = ((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u);
    }
#pragma unroll
    for (int m = 0; m < NM; m++) { T[m][0] = T[m][1] = T[m][2] = T[m][3] = 0; mm[m][0] = mm[m][1] = 0.f; }
#pragma unroll
    for (int sb = 0; sb < 8; sb++) {
        const int c = sb >> 1, sh = 4 * (sb & 1);
        const unsigned a0 = (a[0].w[c][0] >> sh) & 0x0F0F0F0Fu, a1 = (a[1].w[c][0] >> sh) & 0x0F0F0F0Fu;
        const unsigned a2 = (a[0].w[c][1] >> sh) & 0x0F0F0F0Fu, a3 = (a[1].w[c][1] >> sh) & 0x0F0F0F0Fu;
        const int s0 = ubyte(scw[0][sb >> 2], sb & 3), s1 = ubyte(scw[1][sb >> 2], sb & 3);
        const float c0 = byte_f(mnw[0][sb >> 2], sb & 3, 0.f), c1 = byte_f(mnw[1][sb >> 2], sb & 3, 0.f);
#pragma unroll
        for (int m = 0; m < NM; m++) {
                int d[4];
            mma32(d, a0, a1, a2, a3, __ldg(xb + xoff[m] + sb * 16));
            T[m][0] += s0 * d[0]; T[m][1] += s0 * d[1]; T[m][2] += s1 * d[2]; T[m][3] += s1 * d[3];
            const float x = __ldg(mxs + moff[m] + sb);
            mm[m][0] = __fmaf_rn(c0, x, mm[m][0]);
            mm[m][1] = __fmaf_rn(c1, x, mm[m][1]);
        }
    }
    float dd[2], dm[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        dd[rr] = __half2float(__ushort_as_half((unsigned short)(a[rr].h.x & 0xFFFF)));
        dm[rr] = __half2float(__ushort_as_half((unsigned short)(a[rr].h.x >> 16)));
    }
    finish<NM>(T, mm, dd, dm, sg, acc);
}

template <int NM>
__device__ __forceinline__ void superblock(const MQ6_K::Raw* a, const uint2* __restrict__ xb, const int* xoff,
                                           const float* sg, const float* __restrict__ mxs, const int* moff, float (*acc)[2]) {
    int T[NM][4];
    float mm[NM][2];
#pragma unroll
    for (int m = 0; m < NM; m++) { T[m][0] = T[m][1] = T[m][2] = T[m][3] = 0; mm[m][0] = mm[m][1] = 0.f; }
#pragma unroll
    for (int b = 0; b < 8; b++) {                          // 32-blocks: half h, quarter k
        const int h = b >> 2, k = b & 3;
        uint2 xv[NM];
#pragma unroll
        for (int m = 0; m < NM; m++) xv[m] = __ldg(xb + xoff[m] + b * 16);
#pragma unroll
        for (int grp = 0; grp < 2; grp++) {                // groups of 16: elements 4tq.. (b0), 16+4tq.. (b1)
            const int gi = 8 * h + 2 * k + grp;
            unsigned av[2];
            int sv[2];
            float cv[2];
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                const unsigned lo = (a[rr].ql[h][2 * (k & 1) + grp] >> (4 * (k >> 1))) & 0x0F0F0F0Fu;
                const unsigned hi = ((a[rr].qh[h][grp] >> (2 * k)) & 0x03030303u) << 4;
                av[rr] = lo | hi;
                sv[rr] = sbyte(a[rr].sc[gi >> 2], gi & 3);
                cv[rr] = byte_f(a[rr].sc[gi >> 2] ^ 0x80808080u, gi & 3, 128.f);
            }
#pragma unroll
            for (int m = 0; m < NM; m++) {
                        int d[4];
                mma16(d, av[0], av[1], grp ? xv[m].y : xv[m].x);
                T[m][0] += sv[0] * d[0]; T[m][1] += sv[0] * d[1]; T[m][2] += sv[1] * d[2]; T[m][3] += sv[1] * d[3];
                const float x = __ldg(mxs + moff[m] + gi);
                mm[m][0] = __fmaf_rn(cv[0], x, mm[m][0]);
                mm[m][1] = __fmaf_rn(cv[1], x, mm[m][1]);
            }
        }
    }
    float dd[2], dm[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        dd[rr] = __half2float(__ushort_as_half(a[rr].d));
        dm[rr] = dd[rr] * 32.f;
    }
    finish<NM>(T, mm, dd, dm, sg, acc);
}

// One work item: a tile of 16 rows of one group (≤ 2·NM members), as lane (g, tq) sees it.
template <int NM>
struct Item {
    unsigned lo[2];                // rows g, g+8: low address bits (where a slice starts in its aligned copy)
    int r0, tb[NM], td[NM], od[NM], nt;
};
template <int NM>
__device__ __forceinline__ Item<NM> item(int i, int tpg, const u8* W, long long es, int R, int row_bytes,
                                         const int* __restrict__ gexp, const int* __restrict__ gstart,
                                         const int* __restrict__ mx, const int* __restrict__ mo, int g, int tq) {
    Item<NM> it;
    const int grp = i / tpg, m0 = gstart[grp];
    const u8* base = W + (long long)gexp[grp] * es;
    it.r0 = (i % tpg) * 16 + g;
    it.lo[0] = (unsigned)(size_t)(base + (long long)(it.r0 < R ? it.r0 : 0) * row_bytes);
    it.lo[1] = (unsigned)(size_t)(base + (long long)(it.r0 + 8 < R ? it.r0 + 8 : 0) * row_bytes);
    it.nt = gstart[grp + 1] - m0;
#pragma unroll
    for (int m = 0; m < NM; m++) {                       // B column's member, D's member (clamped)
        it.tb[m] = mx[m0 + min(2 * m + g / 4, it.nt - 1)];
        const int k = m0 + min(2 * m + tq / 2, it.nt - 1);
        it.td[m] = mx[k];
        it.od[m] = mo[k];
    }
    return it;
}

// Warp wg streams items [wg·per_warp, …) superblock by superblock through an NB-deep ring of
// shared buffers (16 row slices each, cp.async), so NB-1 superblocks are in flight while one is
// computed. Warps share nothing.
template <class F, int NM>
__device__ void mma_rows(const u8* __restrict__ W, const u8* __restrict__ W2, long long es, int R, int row_bytes,
                         int n_in, const int* __restrict__ gexp, const int* __restrict__ gstart,
                         const int* __restrict__ mx, const int* __restrict__ mo, const uint2* __restrict__ xb,
                         const float* __restrict__ sig, const float* __restrict__ mxs, float* __restrict__ out,
                         float* __restrict__ out2, int n_items, int per_warp) {
    extern __shared__ __align__(16) unsigned char ring[];
    const int lane = threadIdx.x % 32, g = lane >> 2, tq = lane & 3;
    const int i0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * per_warp, i1 = min(n_items, i0 + per_warp);
    if (i0 >= i1) return;
    const int S = n_in / 256, tpg = (R + 15) / 16, nblk = n_in / 32, G = 256 / F::GS, nq = (i1 - i0) * S;
    const u8* Wz = blockIdx.y ? W2 : W;                  // y = 1: the up tensor of gate+up
    float* o = blockIdx.y ? out2 : out;
    u8* my = ring + (size_t)(threadIdx.x / 32) * F::NB * 16 * F::STRIDE;
    auto fetch = [&](int q) {                           // superblock q of the run into slot q % NB
        if (q < nq) {
            const int i = i0 + q / S, grp = i / tpg, tile = i % tpg;
            const u8* base = Wz + (long long)gexp[grp] * es + (long long)(q % S) * F::NBYTES;
            u8* dst = my + (q % F::NB) * 16 * F::STRIDE;
            for (int c = lane; c < 16 * F::CH; c += 32) {
                const int rr = c / F::CH, r = tile * 16 + rr;
                const u8* src = (const u8*)((size_t)(base + (long long)(r < R ? r : 0) * row_bytes) & ~(size_t)15);
                cp_async16(dst + rr * F::STRIDE + 16 * (c % F::CH), src + 16 * (c % F::CH));
            }
        }
        cp_async_commit();                               // (an empty group keeps the wait count uniform)
    };
#pragma unroll
    for (int j = 0; j < F::NB - 1; j++) fetch(j);
    Item<NM> it = item<NM>(i0, tpg, Wz, es, R, row_bytes, gexp, gstart, mx, mo, g, tq);
    float acc[NM][2];
#pragma unroll
    for (int m = 0; m < NM; m++) acc[m][0] = acc[m][1] = 0.f;
    for (int q = 0, s = 0; q < nq; q++) {
        fetch(q + F::NB - 1);                            // into the slot superblock q-1 used
        cp_async_wait<F::NB - 1>();                      // superblock q has landed
        __syncwarp();
        const u8* slot = my + (q % F::NB) * 16 * F::STRIDE;
        typename F::Raw cur[2];
        F::load(slot + g * F::STRIDE + ((it.lo[0] + s * F::NBYTES) & 15), tq, cur[0]);
        F::load(slot + (g + 8) * F::STRIDE + ((it.lo[1] + s * F::NBYTES) & 15), tq, cur[1]);
        int xoff[NM], moff[NM];
        float sg[NM];
#pragma unroll
        for (int m = 0; m < NM; m++) {
            xoff[m] = (it.tb[m] * nblk + s * 8) * 16 + (g & 3) * 4 + tq;
            moff[m] = (it.td[m] * S + s) * G;
            sg[m] = __ldg(sig + it.td[m] * S + s);
        }
        superblock<NM>(cur, xb, xoff, sg, mxs, moff, acc);
        __syncwarp();                                    // the slot is refilled next
        if (++s == S) {                                  // item done: lanes with even tq hold its sums
            if ((tq & 1) == 0)
#pragma unroll
                for (int m = 0; m < NM; m++) {
                    if (2 * m + tq / 2 < it.nt) {
                        const long long ob = (long long)it.od[m] * R;
                        if (it.r0 < R) o[ob + it.r0] = acc[m][0];
                        if (it.r0 + 8 < R) o[ob + it.r0 + 8] = acc[m][1];
                    }
                }
#pragma unroll
            for (int m = 0; m < NM; m++) acc[m][0] = acc[m][1] = 0.f;
            if (q + 1 < nq) it = item<NM>(i0 + (q + 1) / S, tpg, Wz, es, R, row_bytes, gexp, gstart, mx, mo, g, tq);
            s = 0;
        }
    }
    cp_async_wait<0>();
}

// moe_mma1_<Q>: groups of up to 2 members (one MMA per weight group); moe_mma_<Q>: up to 8.
// grid (ceil(items / (4·per_warp)), 1 or 2 (gate, up)), block 128, dynamic shared memory
// 4·NB·16·STRIDE (gpu_layout.mma_smem); item = (group, 16-row tile).
#define MMA_ENTRY(NAME, F, NM)                                                                                   \
extern "C" __global__ void __launch_bounds__(128) NAME(                                                        \
        const u8* W, const u8* W2, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart,    \
        const int* mx, const int* mo, const uint2* xb, const float* sig, const float* mxs, float* out,           \
        float* out2, int n_items, int per_warp) {                                                                \
    mma_rows<F, NM>(W, W2, es, R, rb, n_in, gexp, gstart, mx, mo, xb, sig, mxs, out, out2, n_items, per_warp);  \
}
MMA_ENTRY(moe_mma1_Q4_K, MQ4_K, 1)
MMA_ENTRY(moe_mma_Q4_K, MQ4_K, 4)
MMA_ENTRY(moe_mma1_Q6_K, MQ6_K, 1)
MMA_ENTRY(moe_mma_Q6_K, MQ6_K, 4)

// act(gate, up) of the tensor-core gate+up launch (the float kernels fuse it)
extern "C" __global__ void act_rows(const float* g, const float* u, float* out, long long n, int act, float alpha,
                                    float limit) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = act_fn(act, g[i], u[i], alpha, limit);
}
