// Fused dequantise-matvec for selected experts.
//
// Work is given as groups: group g = one expert (local index gexp[g] into W) and the members
// gstart[g]..gstart[g+1] routed to it; member m reads x row mx[m] and writes out row mo[m].
// A block of WARPS warps takes WARPS·RPW·RT rows of one group: warp w's tile k is the RT rows
// from (blockIdx.x·WARPS·RPW + k·WARPS + w)·RT. Rows are walked in chunks of CW weights; per chunk
// the block stages x of up to TT members in shared memory, one padded slot of XSLOT floats per
// 32 weights: 32 values, the four sequential 8-term sums Σx (formats with OFF), the four sums the
// min term uses (Σx again, or in q8_1 mode llama.cpp's block sum S and three zeros). Each warp
// streams its (chunk, tile) items through an NB-deep ring of shared buffers with cp.async
// (16-byte copies of the aligned span around the bytes), so NB-1 items are in flight while one is
// computed.
//
// Arithmetic (bit-exact in backends/emulated.py): a lane serves RPL rows of the tile, LPR =
// 32·RPL/RT lanes a row; in a chunk, unit u (32 weights) of tile row p goes to lane
// (p / RPL)·LPR + u mod LPR. Q::unit gives q, dl, ml per 8-weight group; per group and member
//     s = q0·x0; s = fma(q_j, x_j, s) for j = 1..7;  [s = fma(-OFF, Σx, s)]
//     acc = fma(dl, s, acc);  [acc = fma(-ml, Σx (q8_1 mode: S, 0, 0, 0), acc)]
// then per row a butterfly over its LPR lanes (xor LPR/2, …, 2, 1). The build uses --fmad=false, so
// these are the only fused operations.
//
// GATE_UP: W2 is the up tensor; a warp does the gate rows and the up rows of its tile off one
// read of x and writes gate, up and act(gate, up) (act: 0 silu, 1 gelu_tanh, 2 swiglu_oai).
#include "decode.cuh"
#include "common.cuh"

#define WARPS 8
#define MAXT 8
#define XSLOT 44            // floats per staged 32-weight unit of x: 32 values, 4 + 4 sums, pad
// Kernel shapes (gpu_layout.SHAPES): rows per warp, rows per tile, ring depth, rows per lane.
// Single-member matvec: rows whose unit count (weights/32) the 32 lanes of a row divide (…1_),
// or others (…1n_, e.g. 768 weights = 24 units: 8 lanes a row). MINB: blocks per SM the register
// budget is built for.
#ifndef SHAPE_1
#define SHAPE_1 4, 2, 2, 2
#define MINB_1 3
#endif
#ifndef SHAPE_1N
#define SHAPE_1N 4, 8, 2, 2
#define MINB_1N 3
#endif
#ifndef UNROLL_U
#define UNROLL_U 1
#endif
constexpr int kUnrollU = UNROLL_U;   // units in flight per lane (a tuning knob)
#define SHAPE_1GU 2, 2, 2, 1  // single-member gate+up
#define SHAPE_T 1, 1, 4, 1    // up to MAXT members

// Copy the 16-byte-aligned span covering [src, src + nbytes) to dst (one commit group); the
// bytes of src start at dst + (src & 15). The span may end up to 15 bytes past the data: device
// weight buffers carry that much slack (streaming.py).
__device__ __forceinline__ void issue(u8* dst, const u8* src, int nbytes, int lane) {
    const u8* a = (const u8*)((size_t)src & ~(size_t)15);
    const int n16 = (int)((src + nbytes - a + 15) >> 4);
    for (int k = lane; k < n16; k += 32) cp_async16(dst + 16 * k, a + 16 * k);
}

// Dynamic shared memory: [x: TT × CW/32 slots × XSLOT floats][weights: WARPS × NB × NW × RT row slices].
// A lane works on RPL rows of its tile at once (single member: their units share x in registers).
template <class Q, bool GATE_UP, int RPW, int RT, int NB, int RPL, int TT>
__device__ void moe_rows(const u8* __restrict__ W, const u8* __restrict__ W2, long long expert_stride, int R,
                         int row_bytes, int n_in, const int* __restrict__ gexp, const int* __restrict__ gstart,
                         const int* __restrict__ mx, const int* __restrict__ mo, const float* __restrict__ X,
                         const float* __restrict__ S, float* __restrict__ out, float* __restrict__ out2,
                         float* __restrict__ out3, int mode, int act, float alpha, float limit, int CW) {
    constexpr int NW = GATE_UP ? 2 : 1;
    extern __shared__ __align__(16) unsigned char dsm[];
    float* xs = (float*)dsm;
    const int units = CW / 32;
    const int rstride = (CW / Q::BLOCK * Q::NBYTES + 31) & ~15;       // a row slice + alignment slack
    constexpr int LPR = 32 * RPL / RT;                // lanes per group of RPL tile rows
    static_assert(RPL == 1 || TT == 1, "rows per lane share x held in registers: single member only");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, pg = lane / LPR, l = lane % LPR;
    u8* wsm = dsm + (size_t)TT * units * XSLOT * 4 + (size_t)warp * NB * NW * RT * rstride;
    const int g = blockIdx.y;
    const int rbase = (blockIdx.x * WARPS * RPW + warp) * RT;         // tile k starts at rbase + k·WARPS·RT
    const long long ebase = (long long)gexp[g] * expert_stride;
    const bool block_sum = Q::MIN_Q8_1 && mode == 1;
    const int nchunks = (n_in + CW - 1) / CW;
    const bool whole = nchunks == 1;                   // a tile's rows are one contiguous span
    const int nitems = nchunks * RPW;
    // item j = (chunk j / RPW, tile j % RPW); rows past R read row 0 (valid memory) and are dropped
    auto row_src = [&](int j, int v, int p) {
        const int r = rbase + (j % RPW) * WARPS * RT + p;
        return (v ? W2 : W) + ebase + (long long)(r < R ? r : 0) * row_bytes
               + (long long)((j / RPW) * CW) / Q::BLOCK * Q::NBYTES;
    };
    auto buffer = [&](int j, int v) { return wsm + ((size_t)(j % NB) * NW + v) * RT * rstride; };
    auto fetch = [&](int j) {
        if (j < nitems) {
            const int nw = min(CW, n_in - (j / RPW) * CW);
            _Pragma("unroll") for (int v = 0; v < NW; v++) {
                if (whole) {
                    const int r0 = rbase + (j % RPW) * WARPS * RT, nr = max(0, min(RT, R - r0));
                    issue(buffer(j, v), row_src(j, v, 0), nr * row_bytes, lane);
                } else {
                    _Pragma("unroll") for (int p = 0; p < RT; p++)
                        issue(buffer(j, v) + p * rstride, row_src(j, v, p), nw / Q::BLOCK * Q::NBYTES, lane);
                }
            }
        }
        cp_async_commit();                               // (an empty group keeps the wait count uniform)
    };
    auto load_x = [&](int t, unsigned u, float* xv, float* sg, float* sm) {
        const float* xu = xs + ((size_t)t * units + u) * XSLOT;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float4 a = *(const float4*)(xu + 4 * k);
            xv[4 * k] = a.x; xv[4 * k + 1] = a.y; xv[4 * k + 2] = a.z; xv[4 * k + 3] = a.w;
        }
        if (Q::OFF != 0.f) { const float4 a = *(const float4*)(xu + 32); sg[0] = a.x; sg[1] = a.y; sg[2] = a.z; sg[3] = a.w; }
        if (Q::USES_MIN) { const float4 a = *(const float4*)(xu + 36); sm[0] = a.x; sm[1] = a.y; sm[2] = a.z; sm[3] = a.w; }
    };
    // one unit's four groups into the partial a (the arithmetic documented at the top)
    auto dot_unit = [&](const float* q, const float* dl, const float* ml, const float* xv, const float* sg,
                        const float* sm, float a) {
#pragma unroll
        for (int gg = 0; gg < 4; gg++) {
            float s = __fmul_rn(q[8 * gg], xv[8 * gg]);
#pragma unroll
            for (int jj = 1; jj < 8; jj++) s = __fmaf_rn(q[8 * gg + jj], xv[8 * gg + jj], s);
            if (Q::OFF != 0.f) s = __fmaf_rn(-Q::OFF, sg[gg], s);
            a = __fmaf_rn(dl[gg], s, a);
            if (Q::USES_MIN) a = __fmaf_rn(-ml[gg], sm[gg], a);
        }
        return a;
    };
    for (int m0 = gstart[g]; m0 < gstart[g + 1]; m0 += TT) {
        const int nt = min(TT, gstart[g + 1] - m0);
        float acc[RPW][RPL][NW][TT];
        _Pragma("unroll") for (int k = 0; k < RPW; k++) _Pragma("unroll") for (int rr = 0; rr < RPL; rr++)
            _Pragma("unroll") for (int v = 0; v < NW; v++) _Pragma("unroll") for (int t = 0; t < TT; t++)
                acc[k][rr][v][t] = 0.f;
#pragma unroll
        for (int j = 0; j < NB - 1; j++) fetch(j);
        for (int c = 0; c < nchunks; c++) {
            const int c0 = c * CW, nw = min(CW, n_in - c0), U = nw / 32;
            __syncthreads();                                   // everyone is done with the previous x chunk
            for (int f = threadIdx.x; f < nt * (nw / 8); f += WARPS * 32) {
                const int t = f / (nw / 8), e = (f % (nw / 8)) * 8;   // 8-weight group at chunk offset e
                const long long xo = (long long)mx[m0 + t] * n_in + c0 + e;
                float* dst = xs + ((size_t)t * units + e / 32) * XSLOT;
                const float4 a = __ldg((const float4*)(X + xo)), b = __ldg((const float4*)(X + xo) + 1);
                *(float4*)(dst + (e & 31)) = a;
                *(float4*)(dst + (e & 31) + 4) = b;
                const float sx = ((((((a.x + a.y) + a.z) + a.w) + b.x) + b.y) + b.z) + b.w;
                if (Q::OFF != 0.f) dst[32 + (e & 31) / 8] = sx;
                if (Q::USES_MIN) dst[36 + (e & 31) / 8] = !block_sum ? sx : (e & 31) ? 0.f : S[xo / 32];
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < RPW; k++) {
                const int j = c * RPW + k;
                fetch(j + NB - 1);                             // into the buffer item j-1 used (done)
                cp_async_wait<NB - 1>();                       // item j has landed
                __syncwarp();
                // lane = g·LPR + l works on tile rows g·RPL … g·RPL + RPL-1, units l, l + LPR, …;
                // LPR is a multiple of the units per block, so all of a lane's units sit at the
                // same offset i in their blocks: the decoder's i-dependent work is loop-invariant.
                const unsigned i = (32u * l) % Q::BLOCK;
                const u8* rows[RPL][NW];
                _Pragma("unroll") for (int rr = 0; rr < RPL; rr++) _Pragma("unroll") for (int v = 0; v < NW; v++) {
                    const int p = pg * RPL + rr;
                    rows[rr][v] = whole ? buffer(j, v) + ((size_t)row_src(j, v, 0) & 15) + p * row_bytes
                                        : buffer(j, v) + p * rstride + ((size_t)row_src(j, v, p) & 15);
                }
#pragma unroll kUnrollU
                for (unsigned u = l; u < (unsigned)U; u += LPR) {
                    const unsigned boff = u * 32u / Q::BLOCK * Q::NBYTES;
                    float q[NW][32], dl[NW][4], ml[NW][4], xv[32], sg[4], sm[4];
                    if (RPL == 1) {                            // decode once, then each member
                        _Pragma("unroll") for (int v = 0; v < NW; v++) Q::unit(rows[0][v] + boff, i, q[v], dl[v], ml[v]);
#pragma unroll
                        for (int t = 0; t < TT; t++) {
                            if (TT > 1 && t >= nt) break;
                            load_x(t, u, xv, sg, sm);
                            _Pragma("unroll") for (int v = 0; v < NW; v++)
                                acc[k][0][v][t] = dot_unit(q[v], dl[v], ml[v], xv, sg, sm, acc[k][0][v][t]);
                        }
                    } else {                                   // one member: x once, then each row
                        load_x(0, u, xv, sg, sm);
#pragma unroll
                        for (int rr = 0; rr < RPL; rr++) {
                            _Pragma("unroll") for (int v = 0; v < NW; v++) {
                                Q::unit(rows[rr][v] + boff, i, q[v], dl[v], ml[v]);
                                acc[k][rr][v][0] = dot_unit(q[v], dl[v], ml[v], xv, sg, sm, acc[k][rr][v][0]);
                            }
                        }
                    }
                }
                __syncwarp();                                  // buffer j % NB is refilled next
            }
        }
        cp_async_wait<0>();
#pragma unroll
        for (int k = 0; k < RPW * RPL; k++) {
            const int r = rbase + (k / RPL) * WARPS * RT + pg * RPL + k % RPL;
#pragma unroll
            for (int t = 0; t < TT; t++) {
                if (t >= nt) break;
                float vv[NW];
                _Pragma("unroll") for (int v = 0; v < NW; v++) {
                    vv[v] = acc[k / RPL][k % RPL][v][t];
                    for (int off = LPR / 2; off > 0; off >>= 1) vv[v] = vv[v] + __shfl_xor_sync(0xffffffff, vv[v], off);
                }
                if (l == 0 && r < R) {
                    const long long o = (long long)mo[m0 + t] * R + r;
                    out[o] = vv[0];
                    if (GATE_UP) { out2[o] = vv[NW - 1]; out3[o] = act_fn(act, vv[0], vv[NW - 1], alpha, limit); }
                }
            }
        }
    }
}

// Dequantise rows to float32 (the baseline's first half: dequantise, then cuBLAS): dl·q − ml,
// one rounding each (--fmad=false), which is gguf-py's value.
template <class Q>
__device__ void dequant_rows(const u8* __restrict__ W, int row_bytes, int n_in, long long n_rows, float* __restrict__ out) {
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_row = n_in / 32;
    if (gid >= n_rows * per_row) return;
    const long long r = gid / per_row;
    const int e = (int)(gid % per_row) * 32;
    float q[32], dl[4], ml[4];
    Q::unit(W + r * row_bytes + e / Q::BLOCK * Q::NBYTES, e % Q::BLOCK, q, dl, ml);
    if (Q::OFF != 0.f) {                               // back to q_true and ggml's dl (exact rescalings)
        for (int j = 0; j < 32; j++) q[j] = (q[j] - Q::OFF) * Q::K;
        for (int g = 0; g < 4; g++) dl[g] = dl[g] * (1.f / (Q::K ? Q::K : 1.f));
    }
    float4* o = (float4*)(out + r * n_in + e);
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int g = j / 2;
        o[j] = make_float4(dl[g] * q[4*j] - ml[g], dl[g] * q[4*j+1] - ml[g], dl[g] * q[4*j+2] - ml[g], dl[g] * q[4*j+3] - ml[g]);
    }
}

#define MATVEC(KIND, Q, GU, SHAPE, TT, MINB)                                                                    \
extern "C" __global__ void __launch_bounds__(WARPS * 32, MINB) KIND##_##Q(                                     \
        const u8* W, const u8* W2, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart,   \
        const int* mx, const int* mo, const float* X, const float* S, float* out, float* out2, float* out3,     \
        int mode, int act, float alpha, float limit, int cw) {                                                  \
    moe_rows<Q, GU, SHAPE, TT>(W, W2, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, out, out2, out3, mode, act,  \
                               alpha, limit, cw);                                                               \
}
// moe_matvec1[n] / moe_gate_up1: groups of one member (a single token, or per-slot down inputs)
#define ENTRY(Q)                                                                                                \
MATVEC(moe_matvec, Q, false, SHAPE_T, MAXT, 1)                                                                  \
MATVEC(moe_matvec1, Q, false, SHAPE_1, 1, MINB_1)                                                              \
MATVEC(moe_matvec1n, Q, false, SHAPE_1N, 1, MINB_1N)                                                           \
MATVEC(moe_gate_up, Q, true, SHAPE_T, MAXT, 1)                                                                  \
MATVEC(moe_gate_up1, Q, true, SHAPE_1GU, 1, 2)                                                                  \
extern "C" __global__ void dequant_##Q(const u8* W, int rb, int n_in, long long n_rows, float* out) {          \
    dequant_rows<Q>(W, rb, n_in, n_rows, out);                                                                  \
}

#include "moe_mma.cuh"                         // Q4_K/Q6_K in f32 mode: int8 tensor cores

#ifdef ONLY
ENTRY(Q4_K) ENTRY(Q6_K)                         // kernel tuning builds (benchmarks/gpu_tune.py)
#else
ENTRY(F32) ENTRY(F16) ENTRY(BF16)
ENTRY(Q4_0) ENTRY(Q4_1) ENTRY(Q5_0) ENTRY(Q5_1) ENTRY(Q8_0)
ENTRY(Q2_K) ENTRY(Q3_K) ENTRY(Q4_K) ENTRY(Q5_K) ENTRY(Q6_K)
ENTRY(IQ4_NL) ENTRY(IQ4_XS) ENTRY(MXFP4)
#endif
