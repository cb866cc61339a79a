// Fused dequantise-matvec for selected experts, warp per output row.
//
// Work is given as groups: group g = one expert (local index gexp[g] into W) and the members
// gstart[g]..gstart[g+1] routed to it; member m reads x row mx[m] and writes out row mo[m].
// A block of WARPS warps takes WARPS·RPW rows of one group and walks the rows in chunks of CW
// weights: the block stages the chunk of x of up to TCAP members into shared memory (coalesced
// float4 loads, one padded 144-byte slot per 32 weights so that lanes read it without bank
// conflicts); each warp copies its rows' chunks of weights with cp.async (coalesced 16-byte
// copies), the next row's bytes in flight while this one is computed. The row
// is cut in units of 32 weights; in a chunk, lane L takes units L, L+32, …; per unit and member
// it adds, in order, the four sequential 8-term sums of the unit's 8-weight groups to its partial.
// A butterfly (xor 16, 8, 4, 2, 1) reduces the 32 partials. backends/emulated.py reproduces this
// order exactly (the build uses --fmad=false), given the same CW (gpu_layout.chunk_weights).
//
// mode 0: f32 activations. mode 1: q8_1 (llama.cpp MMVQ numerics): X holds x' = fp16(d)·q per
// 32-block and S the fp16-rounded block sums of the unquantised x; formats with a min use S for
// the min term, once per 32 weights, as llama.cpp's vec_dot_*_q8_1 do.
//
// GATE_UP: W2 is the up tensor; one warp does the gate row and the up row of the same expert off
// one read of x and writes gate, up and act(gate, up) (act: 0 silu, 1 gelu_tanh, 2 swiglu_oai).
#include "decode.cuh"

#define WARPS 8
#define MAXT 8
#define XSLOT 36            // floats per staged 32-weight unit of x (4 of padding)

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

// cp.async (sm_80+): global → shared without registers, so the next row's bytes are in flight
// while this row is computed.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(d), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }

// Start copying nbytes at src into dst: asynchronously when both are 16-byte aligned, else plainly.
__device__ __forceinline__ void issue(u8* dst, const u8* src, int nbytes, int lane) {
    if ((((size_t)src) & 15) == 0 && (nbytes & 15) == 0) {
        for (int k = lane; k < nbytes / 16; k += 32) cp_async16(dst + 16 * k, src + 16 * k);
    } else {
        for (int k = lane; k < nbytes; k += 32) dst[k] = __ldg(src + k);
    }
    cp_async_commit();
}

// Dynamic shared memory: [x: tcap × CW/32 slots × XSLOT floats][weights: WARPS × 2 buffers × NW × chunk bytes]
// Each warp takes RPW rows (r = base + warp + k·WARPS) and walks (chunk, row) items in order,
// prefetching item j+1 into the other buffer while item j is computed.
template <class Q, bool GATE_UP, int RPW>
__device__ void moe_rows(const u8* __restrict__ W, const u8* __restrict__ W2, long long expert_stride, int R,
                         int row_bytes, int n_in, const int* __restrict__ gexp, const int* __restrict__ gstart,
                         const int* __restrict__ mx, const int* __restrict__ mo, const float* __restrict__ X,
                         const float* __restrict__ S, float* __restrict__ out, float* __restrict__ out2,
                         float* __restrict__ out3, int mode, int act, float alpha, float limit, int CW, int tcap) {
    constexpr int NW = GATE_UP ? 2 : 1;
    extern __shared__ __align__(16) unsigned char dsm[];
    float* xs = (float*)dsm;
    const int units = CW / 32;
    const int cbytes = CW / Q::BLOCK * Q::NBYTES;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    u8* wsm = dsm + (size_t)tcap * units * XSLOT * 4 + (size_t)warp * 2 * NW * cbytes;
    const int g = blockIdx.y;
    const int r0 = blockIdx.x * WARPS * RPW + warp;
    const long long ebase = (long long)gexp[g] * expert_stride;
    const bool split = Q::HAS_MIN && mode == 1;
    const int nchunks = (n_in + CW - 1) / CW;
    for (int m0 = gstart[g]; m0 < gstart[g + 1]; m0 += tcap) {
        const int nt = min(tcap, gstart[g + 1] - m0);
        float acc[RPW][NW][MAXT];
        _Pragma("unroll") for (int k = 0; k < RPW; k++) _Pragma("unroll") for (int v = 0; v < NW; v++)
            _Pragma("unroll") for (int t = 0; t < MAXT; t++) acc[k][v][t] = 0.f;
        // item j = (chunk j / RPW, row k = j % RPW); rows past R fetch row 0 (valid memory) and are dropped
        auto fetch = [&](int j) {
            const int c = j / RPW, k = j % RPW;
            const int r = r0 + k * WARPS;
            const int c0 = c * CW, nw = min(CW, n_in - c0);
            const long long off = ebase + (long long)(r < R ? r : 0) * row_bytes + (long long)c0 / Q::BLOCK * Q::NBYTES;
            u8* buf = wsm + (j & 1) * NW * cbytes;
            issue(buf, W + off, nw / Q::BLOCK * Q::NBYTES, lane);
            if (GATE_UP) issue(buf + cbytes, W2 + off, nw / Q::BLOCK * Q::NBYTES, lane);
        };
        fetch(0);
        for (int c = 0; c < nchunks; c++) {
            const int c0 = c * CW, nw = min(CW, n_in - c0);
            __syncthreads();                                   // everyone is done with the previous x chunk
            for (int t = 0; t < nt; t++) {
                const float4* src = (const float4*)(X + (long long)mx[m0 + t] * n_in + c0);
                float* dst = xs + (size_t)t * units * XSLOT;
                for (int f = threadIdx.x; f < nw / 4; f += WARPS * 32)
                    *(float4*)(dst + (f >> 3) * XSLOT + (f & 7) * 4) = __ldg(src + f);
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < RPW; k++) {
                const int j = c * RPW + k;
                if (j + 1 < nchunks * RPW) fetch(j + 1); else cp_async_commit();
                cp_async_wait1();                              // item j has landed
                __syncwarp();
                const u8* buf = wsm + (j & 1) * NW * cbytes;
                for (int u = lane; u < nw / 32; u += 32) {
                    const int e = u * 32;
                    const int boff = e / Q::BLOCK * Q::NBYTES, i = e % Q::BLOCK;
                    float w[NW][32], mn[NW];
                    _Pragma("unroll") for (int v = 0; v < NW; v++) {
                        const u8* b = buf + v * cbytes + boff;
#pragma unroll
                        for (int q = 0; q < 4; q++) {
                            float m;
                            const int ofs = Q::BLOCK == 1 ? 8 * q * Q::NBYTES : 0;  // float rows: b is the element
                            const int ii = Q::BLOCK == 1 ? 0 : i + 8 * q;
                            if (split) Q::template decode8<true>(b + ofs, ii, w[v] + 8 * q, m);
                            else Q::template decode8<false>(b + ofs, ii, w[v] + 8 * q, m);
                            if (q == 0) mn[v] = m;
                        }
                    }
#pragma unroll
                    for (int t = 0; t < MAXT; t++) {
                        if (t >= nt) break;
                        const float4* x4 = (const float4*)(xs + ((size_t)t * units + u) * XSLOT);
                        float xv[32];
#pragma unroll
                        for (int q = 0; q < 8; q++) {
                            const float4 a = x4[q];
                            xv[4*q] = a.x; xv[4*q+1] = a.y; xv[4*q+2] = a.z; xv[4*q+3] = a.w;
                        }
                        const float sb = split ? S[((long long)mx[m0 + t] * n_in + c0 + e) / 32] : 0.f;
                        _Pragma("unroll") for (int v = 0; v < NW; v++) {
#pragma unroll
                            for (int q = 0; q < 4; q++) {
                                float s = 0.f;
#pragma unroll
                                for (int jj = 0; jj < 8; jj++) s = s + w[v][8*q + jj] * xv[8*q + jj];
                                if (split && q == 0) s = s - mn[v] * sb;
                                acc[k][v][t] = acc[k][v][t] + s;
                            }
                        }
                    }
                }
                __syncwarp();                                  // buffer j & 1 is refilled two items later
            }
        }
#pragma unroll
        for (int k = 0; k < RPW; k++) {
            const int r = r0 + k * WARPS;
#pragma unroll
            for (int t = 0; t < MAXT; t++) {
                if (t >= nt) break;
                float vv[NW];
                _Pragma("unroll") for (int v = 0; v < NW; v++) {
                    vv[v] = acc[k][v][t];
                    for (int off = 16; off > 0; off >>= 1) vv[v] = vv[v] + __shfl_xor_sync(0xffffffff, vv[v], off);
                }
                if (lane == 0 && r < R) {
                    const long long o = (long long)mo[m0 + t] * R + r;
                    out[o] = vv[0];
                    if (GATE_UP) { out2[o] = vv[NW - 1]; out3[o] = act_fn(act, vv[0], vv[NW - 1], alpha, limit); }
                }
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
extern "C" __global__ void __launch_bounds__(WARPS * 32, 2) moe_matvec_##Q(                                    \
        const u8* W, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart, const int* mx,  \
        const int* mo, const float* X, const float* S, float* out, int mode, int cw, int tcap) {                \
    moe_rows<Q, false, 1>(W, nullptr, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, out, nullptr, nullptr, mode, \
                          0, 0.f, 0.f, cw, tcap);                                                               \
}                                                                                                               \
extern "C" __global__ void __launch_bounds__(WARPS * 32, 2) moe_matvec4_##Q(                                   \
        const u8* W, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart, const int* mx,  \
        const int* mo, const float* X, const float* S, float* out, int mode, int cw, int tcap) {                \
    moe_rows<Q, false, 4>(W, nullptr, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, out, nullptr, nullptr, mode, \
                          0, 0.f, 0.f, cw, tcap);                                                               \
}                                                                                                               \
extern "C" __global__ void __launch_bounds__(WARPS * 32) moe_gate_up_##Q(                                      \
        const u8* Wg, const u8* Wu, long long es, int R, int rb, int n_in, const int* gexp, const int* gstart,  \
        const int* mx, const int* mo, const float* X, const float* S, float* g, float* u, float* a, int mode,   \
        int act, float alpha, float limit, int cw, int tcap) {                                                  \
    moe_rows<Q, true, 1>(Wg, Wu, es, R, rb, n_in, gexp, gstart, mx, mo, X, S, g, u, a, mode, act, alpha, limit, \
                         cw, tcap);                                                                             \
}                                                                                                               \
extern "C" __global__ void dequant_##Q(const u8* W, int rb, int n_in, long long n_rows, float* out) {          \
    dequant_rows<Q>(W, rb, n_in, n_rows, out);                                                                  \
}

ENTRY(F32) ENTRY(F16) ENTRY(BF16)
ENTRY(Q4_0) ENTRY(Q4_1) ENTRY(Q5_0) ENTRY(Q5_1) ENTRY(Q8_0)
ENTRY(Q2_K) ENTRY(Q3_K) ENTRY(Q4_K) ENTRY(Q5_K) ENTRY(Q6_K)
ENTRY(IQ4_NL) ENTRY(IQ4_XS) ENTRY(MXFP4)
