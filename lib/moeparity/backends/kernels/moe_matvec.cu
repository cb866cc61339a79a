// Fused dequantise-matvec for selected experts, warp per output row.
//
// Work is given as groups: group g = one expert (local index gexp[g] into W) and the members
// gstart[g]..gstart[g+1] routed to it; member m reads x row mx[m] and writes out row mo[m].
// A block of WARPS warps takes WARPS consecutive rows of one group; each warp stages its row in
// chunks of CHUNK weights into shared memory with coalesced 16-byte loads, then lane L decodes the
// 8-weight groups L, L+32, … of each chunk and accumulates, per member, the sequential sum of its
// 8 products; a butterfly (xor 16, 8, 4, 2, 1) reduces the 32 lane partials. Members are taken
// MAXT at a time, so each weight chunk is read once for up to MAXT tokens.
//
// mode 0: f32 activations. mode 1: q8_1 (llama.cpp MMVQ numerics): X holds x' = fp16(d)·q per
// 32-block and S the fp16-rounded block sums of the unquantised x; formats with a min use S for
// the min term, once per 32 weights, as llama.cpp's vec_dot_*_q8_1 do.
//
// GATE_UP: W2 is the up tensor; one warp does the gate row and the up row of the same expert off
// one read of x and writes gate, up and act(gate, up) (act: 0 silu, 1 gelu_tanh, 2 swiglu_oai).
#include "decode.cuh"

#define WARPS 4
#define CHUNK 1024
#define MAXT 8
#define STAGE_BYTES 4096   // CHUNK weights of the widest row type (F32)

__device__ __forceinline__ void stage(u8* dst, const u8* src, int nbytes, int lane) {
    if ((((size_t)src) & 15) == 0 && (nbytes & 15) == 0) {
        const uint4* s = (const uint4*)src;
        uint4* d = (uint4*)dst;
        for (int k = lane; k < nbytes / 16; k += 32) d[k] = __ldg(s + k);
    } else {
        for (int k = lane; k < nbytes; k += 32) dst[k] = __ldg(src + k);
    }
}

__device__ __forceinline__ float act_fn(int act, float g, float u, float alpha, float limit) {
    if (act == 0) { const float s = 1.0f / (1.0f + expf(-g)); return g * s * u; }
    if (act == 1) {
        const float c = 0.7978845608028654f;
        return 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * (g * g * g)))) * u;
    }
    const float gc = fminf(g, limit), uc = fminf(fmaxf(u, -limit), limit);
    const float s = 1.0f / (1.0f + expf(-(alpha * gc)));
    return gc * s * (uc + 1.0f);
}

template <class Q, bool GATE_UP>
__device__ void moe_rows(const u8* __restrict__ W, const u8* __restrict__ W2, long long expert_stride, int R,
                         int row_bytes, int n_in, const int* __restrict__ gexp, const int* __restrict__ gstart,
                         const int* __restrict__ mx, const int* __restrict__ mo, const float* __restrict__ X,
                         const float* __restrict__ S, float* __restrict__ out, float* __restrict__ out2,
                         float* __restrict__ out3, int mode, int act, float alpha, float limit) {
    __shared__ __align__(16) u8 smem[WARPS][GATE_UP ? 2 : 1][STAGE_BYTES];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = blockIdx.y;
    const int r = blockIdx.x * WARPS + warp;
    if (r >= R) return;
    const long long base = (long long)gexp[g] * expert_stride + (long long)r * row_bytes;
    const u8* row = W + base;
    const u8* row2 = GATE_UP ? W2 + base : nullptr;
    const int chunk_bytes = CHUNK / Q::BLOCK * Q::NBYTES;
    const bool split = Q::HAS_MIN && mode == 1;
    for (int m0 = gstart[g]; m0 < gstart[g + 1]; m0 += MAXT) {
        const int nt = min(MAXT, gstart[g + 1] - m0);
        float acc[MAXT], acc2[MAXT];
        for (int t = 0; t < MAXT; t++) { acc[t] = 0.f; acc2[t] = 0.f; }
        for (int c0 = 0; c0 < n_in; c0 += CHUNK) {
            const int nw = min(CHUNK, n_in - c0);
            const int nb = nw / Q::BLOCK * Q::NBYTES;
            __syncwarp();
            stage(smem[warp][0], row + (long long)c0 / Q::BLOCK * Q::NBYTES, nb, lane);
            if (GATE_UP) stage(smem[warp][GATE_UP ? 1 : 0], row2 + (long long)c0 / Q::BLOCK * Q::NBYTES, nb, lane);
            __syncwarp();
            for (int gi = lane; gi < nw / 8; gi += 32) {
                const int e = gi * 8;
                const int boff = e / Q::BLOCK * Q::NBYTES, i = e % Q::BLOCK;
                float w[8], w2[8], mn = 0.f, mn2 = 0.f;
                if (split) Q::template decode8<true>(smem[warp][0] + boff, i, w, mn);
                else Q::template decode8<false>(smem[warp][0] + boff, i, w, mn);
                if (GATE_UP) {
                    if (split) Q::template decode8<true>(smem[warp][GATE_UP ? 1 : 0] + boff, i, w2, mn2);
                    else Q::template decode8<false>(smem[warp][GATE_UP ? 1 : 0] + boff, i, w2, mn2);
                }
                const bool min_here = split && (e % 32) == 0;
                for (int t = 0; t < nt; t++) {
                    const float* x = X + (long long)mx[m0 + t] * n_in + c0 + e;
                    const float4 xa = *(const float4*)x, xb = *(const float4*)(x + 4);
                    const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
                    float s = 0.f, s2 = 0.f;
                    for (int j = 0; j < 8; j++) s = s + w[j] * xv[j];
                    if (GATE_UP) for (int j = 0; j < 8; j++) s2 = s2 + w2[j] * xv[j];
                    if (min_here) {
                        const float sb = S[((long long)mx[m0 + t] * n_in + c0 + e) / 32];
                        s = s - mn * sb;
                        if (GATE_UP) s2 = s2 - mn2 * sb;
                    }
                    acc[t] = acc[t] + s;
                    if (GATE_UP) acc2[t] = acc2[t] + s2;
                }
            }
        }
        for (int t = 0; t < nt; t++) {
            float v = acc[t], v2 = acc2[t];
            for (int off = 16; off > 0; off >>= 1) {
                v = v + __shfl_xor_sync(0xffffffff, v, off);
                if (GATE_UP) v2 = v2 + __shfl_xor_sync(0xffffffff, v2, off);
            }
            if (lane == 0) {
                const long long o = (long long)mo[m0 + t] * R + r;
                out[o] = v;
                if (GATE_UP) { out2[o] = v2; out3[o] = act_fn(act, v, v2, alpha, limit); }
            }
        }
    }
}

// Dequantise rows to float32 (the baseline's first half: dequantise, then cuBLAS).
template <class Q>
__device__ void dequant_rows(const u8* __restrict__ W, int row_bytes, int n_in, long long n_rows, float* __restrict__ out) {
    const long long gid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_row = n_in / 8;
    if (gid >= n_rows * per_row) return;
    const long long r = gid / per_row;
    const int e = (int)(gid % per_row) * 8;
    float w[8], m;
    Q::template decode8<false>(W + r * row_bytes + e / Q::BLOCK * Q::NBYTES, e % Q::BLOCK, w, m);
    float4* o = (float4*)(out + r * n_in + e);
    o[0] = make_float4(w[0], w[1], w[2], w[3]);
    o[1] = make_float4(w[4], w[5], w[6], w[7]);
}

#define ENTRY(Q)                                                                                                \
extern "C" __global__ void __launch_bounds__(WARPS * 32) moe_matvec_##Q(                                       \
        const u8* W, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart, const int* mx,  \
        const int* mo, const float* X, const float* S, float* out, int mode) {                                  \
    moe_rows<Q, false>(W, nullptr, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, out, nullptr, nullptr, mode,    \
                       0, 0.f, 0.f);                                                                            \
}                                                                                                               \
extern "C" __global__ void __launch_bounds__(WARPS * 32) moe_gate_up_##Q(                                      \
        const u8* Wg, const u8* Wu, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart,  \
        const int* mx, const int* mo, const float* X, const float* S, float* g, float* u, float* a, int mode,   \
        int act, float alpha, float limit) {                                                                    \
    moe_rows<Q, true>(Wg, Wu, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, g, u, a, mode, act, alpha, limit);   \
}                                                                                                               \
extern "C" __global__ void dequant_##Q(const u8* W, int rb, int n_in, long long n_rows, float* out) {          \
    dequant_rows<Q>(W, rb, n_in, n_rows, out);                                                                  \
}

ENTRY(F32) ENTRY(F16) ENTRY(BF16)
ENTRY(Q4_0) ENTRY(Q4_1) ENTRY(Q5_0) ENTRY(Q5_1) ENTRY(Q8_0)
ENTRY(Q2_K) ENTRY(Q3_K) ENTRY(Q4_K) ENTRY(Q5_K) ENTRY(Q6_K)
ENTRY(IQ4_NL) ENTRY(IQ4_XS) ENTRY(MXFP4)
