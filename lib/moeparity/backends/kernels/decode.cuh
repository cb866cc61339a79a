// Block decoders for every qtype row the CUDA backend implements (layouts: ggml-common.h, and
// moeparity/quant/dequant.py which is checked bit-for-bit against gguf-py).
//
// Q::unit(blk, i, q, dl, ml): the 32 consecutive weights starting at element i (i % 32 == 0) of
// the block at blk, factored as weight j = dl[j/8]·q[j] − ml[j/8]: q exact small integers (or grid
// values, or the float weight itself for F32/F16/BF16), dl and ml float32 products computed as
// ggml computes them. quant/dequant.py's `parts8` is the same factorisation (dl·q − ml in float32
// is gguf-py's weight bit for bit), so backends/emulated.py reproduces the kernel's arithmetic.
//
// Most formats decode four bytes at a time: mask the field into each byte, then __byte_perm the
// byte under the exponent of 2^23 and subtract (2^23 + bias): an exact int → float in two
// instructions (I2F is a quarter-rate pipe).
//
// Formats with K > 0 (Q4_K, Q6_K: the hot ones) save that subtraction: a b-bit field f is placed
// in the top mantissa bits under the exponent of 1/2, so q[j] = 1/2 + f/K exactly (K = 2^(b+1)),
// in one __byte_perm; dl comes pre-multiplied by K and the kernel subtracts OFF·Σx per 8 weights:
// dl·(f − BIAS) = (K·dl)·(q − OFF) with OFF = 1/2 + BIAS/K. gpu_layout.AFFINE lists (K, BIAS).
#pragma once
typedef unsigned char u8;

#define P23 8388608.0f
// fp16 bits → float32 (exact) by the PTX conversion: no CUDA header needed, as kernel_build
// compiles with NVRTC's built-in ones only
__device__ __forceinline__ float f16f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float h2f(const u8* p) {           // fp16 at a 2-byte-aligned address
    return f16f(*(const unsigned short*)p);
}
__device__ __forceinline__ float e8m0_half(unsigned e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1u) << 23));
}
// 4 little-endian bytes at a 2-byte-aligned address
__device__ __forceinline__ unsigned ld4_a2(const u8* p) {
    const unsigned short* h = (const unsigned short*)p;
    return (unsigned)h[0] | ((unsigned)h[1] << 16);
}
__device__ __forceinline__ unsigned ld4_a4(const u8* p) { return *(const unsigned*)p; }
// byte k of v as a float, minus bias: 0x4B0000vv is 2^23 + vv
__device__ __forceinline__ float byte_f(unsigned v, int k, float bias) {
    return __int_as_float(__byte_perm(v, 0x004B0000u, 0x6440u | k)) - (P23 + bias);
}
__device__ __forceinline__ void bytes4(unsigned v, float bias, float* q) {
#pragma unroll
    for (int k = 0; k < 4; k++) q[k] = byte_f(v, k, bias);
}
// byte k of v (< 128) under the exponent of 1/2: 0x3F00_0000 | byte << 16 = 1/2 + byte/256
__device__ __forceinline__ float half_f(unsigned v, int k) {
    return __int_as_float(__byte_perm(v, 0x3F000000u, 0x7044u | (k << 8)));
}
__device__ __forceinline__ unsigned rotl(unsigned v, int n) { return __funnelshift_l(v, v, n); }
__device__ __forceinline__ float small_f(unsigned v) { return __int_as_float(0x4B000000u | v) - P23; }
__device__ __forceinline__ void same4(float a, float* d) { d[0] = d[1] = d[2] = d[3] = a; }
// 16-entry int8 grids held in registers (a __constant__ table serialises when lanes index it
// differently): byte q of the 16 packed bytes, via __byte_perm, then int8 → float exactly.
__device__ __forceinline__ float grid16(unsigned q, unsigned t0, unsigned t1, unsigned t2, unsigned t3) {
    const unsigned lo = __byte_perm(t0, t1, q & 7), hi = __byte_perm(t2, t3, q & 7);
    return byte_f(((q & 8) ? hi : lo) ^ 128u, 0, 128.0f);
}
// kvalues_iq4nl = {-127,-104,-83,-65,-49,-35,-22,-10, 1,13,25,38,53,69,89,113} as bytes
#define KV_IQ4(q) grid16((q), 0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u)
// kvalues_mxfp4 (e2m1 doubled) = {0,1,2,3,4,6,8,12, 0,-1,-2,-3,-4,-6,-8,-12}
#define KV_MX(q) grid16((q), 0x03020100u, 0x0C080604u, 0xFDFEFF00u, 0xF4F8FAFCu)

// USES_MIN: ml can be non-zero (the kernel then needs Σx per 8 weights).
// MIN_Q8_1: in q8_1 mode the min term uses llama.cpp's block sum (vec_dot_*_q8_1 do).
// K, BIAS: see above (K = 0: q is exact).
#define QTYPE(NAME, BLOCK_, NBYTES_, USES_MIN_, MIN_Q8_1_, K_, BIAS_) \
    struct NAME { static constexpr int BLOCK = BLOCK_, NBYTES = NBYTES_; \
        static constexpr bool USES_MIN = USES_MIN_, MIN_Q8_1 = MIN_Q8_1_; \
        static constexpr float K = K_, OFF = K_ ? 0.5f + BIAS_ / K_ : 0.f; \
        __device__ static void unit(const u8* b, int i, float* q, float* dl, float* ml); };

QTYPE(F32, 1, 4, false, false, 0.f, 0.f)
QTYPE(F16, 1, 2, false, false, 0.f, 0.f)
QTYPE(BF16, 1, 2, false, false, 0.f, 0.f)
QTYPE(Q4_0, 32, 18, false, false, 0.f, 0.f)
QTYPE(Q4_1, 32, 20, true, true, 0.f, 0.f)
QTYPE(Q5_0, 32, 22, false, false, 0.f, 0.f)
QTYPE(Q5_1, 32, 24, true, true, 0.f, 0.f)
QTYPE(Q8_0, 32, 34, false, false, 0.f, 0.f)
QTYPE(Q2_K, 256, 84, true, false, 0.f, 0.f)
QTYPE(Q3_K, 256, 110, false, false, 0.f, 0.f)
QTYPE(Q4_K, 256, 144, true, true, 32.f, 0.f)    // q = 1/2 + nibble/32
QTYPE(Q5_K, 256, 176, true, true, 0.f, 0.f)
QTYPE(Q6_K, 256, 210, false, false, 128.f, 32.f) // q = 1/2 + q6/128; weight ∝ q6 - 32
QTYPE(IQ4_NL, 32, 18, false, false, 0.f, 0.f)
QTYPE(IQ4_XS, 256, 136, false, false, 0.f, 0.f)
QTYPE(MXFP4, 32, 17, false, false, 0.f, 0.f)

// float rows: "block" of 1, so b points at element i itself; dl = 1, ml = 0
__device__ void F32::unit(const u8* b, int, float* q, float* dl, float* ml) {
    for (int j = 0; j < 32; j++) q[j] = __uint_as_float(ld4_a4(b + 4 * j));
    same4(1.f, dl); same4(0.f, ml);
}
__device__ void F16::unit(const u8* b, int, float* q, float* dl, float* ml) {
    for (int j = 0; j < 32; j++) q[j] = h2f(b + 2 * j);
    same4(1.f, dl); same4(0.f, ml);
}
__device__ void BF16::unit(const u8* b, int, float* q, float* dl, float* ml) {
    for (int j = 0; j < 32; j++) q[j] = __uint_as_float((unsigned)*(const unsigned short*)(b + 2 * j) << 16);
    same4(1.f, dl); same4(0.f, ml);
}
// legacy 32-blocks: i == 0; nibble j < 16 is the low nibble of byte j, j ≥ 16 the high one
__device__ __forceinline__ void nibbles32(const u8* qs, bool a4, float bias, float* q) {
#pragma unroll
    for (int w = 0; w < 4; w++) {
        const unsigned v = a4 ? ld4_a4(qs + 4 * w) : ld4_a2(qs + 4 * w);
        bytes4(v & 0x0F0F0F0Fu, bias, q + 4 * w);
        bytes4((v >> 4) & 0x0F0F0F0Fu, bias, q + 16 + 4 * w);
    }
}
__device__ void Q4_0::unit(const u8* b, int, float* q, float* dl, float* ml) {
    nibbles32(b + 2, false, 8.f, q);
    same4(h2f(b), dl); same4(0.f, ml);
}
__device__ void Q4_1::unit(const u8* b, int, float* q, float* dl, float* ml) {    // w = d*q + m
    nibbles32(b + 4, true, 0.f, q);
    same4(h2f(b), dl); same4(-h2f(b + 2), ml);
}
__device__ __forceinline__ void fifth_bits(const u8* qs, unsigned qh, float bias, float* q) {
    for (int j = 0; j < 32; j++) {
        const unsigned nib = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
        q[j] = small_f(nib | (((qh >> j) & 1) << 4)) - bias;
    }
}
__device__ void Q5_0::unit(const u8* b, int, float* q, float* dl, float* ml) {
    fifth_bits(b + 6, ld4_a2(b + 2), 16.f, q);
    same4(h2f(b), dl); same4(0.f, ml);
}
__device__ void Q5_1::unit(const u8* b, int, float* q, float* dl, float* ml) {
    fifth_bits(b + 8, ld4_a4(b + 4), 0.f, q);
    same4(h2f(b), dl); same4(-h2f(b + 2), ml);
}
__device__ void Q8_0::unit(const u8* b, int, float* q, float* dl, float* ml) {
#pragma unroll
    for (int w = 0; w < 8; w++) bytes4(ld4_a2(b + 2 + 4 * w) ^ 0x80808080u, 128.f, q + 4 * w);   // int8 + 128
    same4(h2f(b), dl); same4(0.f, ml);
}
// K-quants: i is the unit's first element in the 256-block
__device__ void Q2_K::unit(const u8* b, int i, float* q, float* dl, float* ml) {
    const float d = h2f(b + 80), dmin = h2f(b + 82);
    const int h = i >> 7, sh = 2 * ((i >> 5) & 3);
#pragma unroll
    for (int w = 0; w < 8; w++) bytes4((ld4_a4(b + 16 + h * 32 + 4 * w) >> sh) & 0x03030303u, 0.f, q + 4 * w);
    for (int g = 0; g < 4; g++) {
        const int sc = b[(i + 8 * g) >> 4];
        dl[g] = d * small_f(sc & 15); ml[g] = dmin * small_f(sc >> 4);
    }
}
__device__ void Q3_K::unit(const u8* b, int i, float* q, float* dl, float* ml) {
    const float d = h2f(b + 108);
    const int h = i >> 7, jj = (i >> 5) & 3;
#pragma unroll
    for (int w = 0; w < 8; w++) {                          // q = q2 - 4 + 4·hbit
        const unsigned lo = (ld4_a2(b + 32 + h * 32 + 4 * w) >> (2 * jj)) & 0x03030303u;
        const unsigned hb = (ld4_a2(b + 4 * w) >> (4 * h + jj)) & 0x01010101u;
        bytes4(lo | (hb << 2), 4.f, q + 4 * w);
    }
    for (int g = 0; g < 4; g++) {
        const int k = (i + 8 * g) >> 4;
        const int lo = (b[96 + (k & 7)] >> (4 * (k >> 3))) & 15, hi = (b[104 + (k & 3)] >> (2 * (k >> 2))) & 3;
        dl[g] = d * (small_f(lo | (hi << 4)) - 32.f);
        ml[g] = 0.f;
    }
}
__device__ __forceinline__ void scale_min_k4(const u8* s, int j, int& sc, int& mn) {
    if (j < 4) { sc = s[j] & 63; mn = s[j + 4] & 63; }
    else { sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}
__device__ void Q4_K::unit(const u8* b, int i, float* q, float* dl, float* ml) {   // blocks are 16-byte aligned
    const int sb = i >> 5, j = sb & 3;
    const uint4 h = *(const uint4*)b;                      // d, dmin, scales[12]
    // get_scale_min_k4 for four sub-blocks at once (bytes), then byte j of the right case
    const bool hi = sb >= 4;
    const unsigned scs = hi ? (h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u) : h.y & 0x3F3F3F3Fu;
    const unsigned mns = hi ? ((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u) : h.z & 0x3F3F3F3Fu;
    const float d = f16f((unsigned short)(h.x & 0xFFFF));
    const float dmin = f16f((unsigned short)(h.x >> 16));
    same4((d * byte_f(scs, j, 0.f)) * K, dl); same4(dmin * byte_f(mns, j, 0.f), ml);
    const uint4* p = (const uint4*)(b + 16 + (sb >> 1) * 32);
    const uint4 v0 = p[0], v1 = p[1];
    const unsigned v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    const int rot = (3 - 4 * (sb & 1)) & 31;              // nibble → bits 3..6 of its byte
#pragma unroll
    for (int w = 0; w < 8; w++) {
        const unsigned t = rotl(v[w], rot) & 0x78787878u;
#pragma unroll
        for (int k = 0; k < 4; k++) q[4 * w + k] = half_f(t, k);
    }
}
__device__ void Q5_K::unit(const u8* b, int i, float* q, float* dl, float* ml) {
    const int sb = i >> 5, sh = 4 * (sb & 1);
    int sc, mn; scale_min_k4(b + 4, sb, sc, mn);
    same4(h2f(b) * small_f(sc), dl); same4(h2f(b + 2) * small_f(mn), ml);
#pragma unroll
    for (int w = 0; w < 8; w++) {
        const unsigned lo = (ld4_a4(b + 48 + (sb >> 1) * 32 + 4 * w) >> sh) & 0x0F0F0F0Fu;
        const unsigned hb = (ld4_a4(b + 16 + 4 * w) >> sb) & 0x01010101u;
        bytes4(lo | (hb << 4), 0.f, q + 4 * w);
    }
}
__device__ void Q6_K::unit(const u8* b, int i, float* q, float* dl, float* ml) {   // blocks are 2-byte aligned
    const int h = i >> 7, k = (i >> 5) & 3;
    const u8* ql = b + h * 64 + (k & 1) * 32;
    const u8* qh = b + 128 + h * 32;
    const int rl = (1 - 4 * (k >> 1)) & 31, rh = (5 - 2 * k) & 31;   // fields → bits 1..4 and 5..6
#pragma unroll
    for (int w = 0; w < 8; w++) {
        const unsigned t = (rotl(ld4_a2(ql + 4 * w), rl) & 0x1E1E1E1Eu) | (rotl(ld4_a2(qh + 4 * w), rh) & 0x60606060u);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) q[4 * w + kk] = half_f(t, kk);
    }
    const float d = h2f(b + 208);
    const float a = d * (float)(signed char)b[192 + (i >> 4)], c = d * (float)(signed char)b[193 + (i >> 4)];
    dl[0] = dl[1] = a * K; dl[2] = dl[3] = c * K;
    same4(0.f, ml);
}
__device__ void IQ4_NL::unit(const u8* b, int, float* q, float* dl, float* ml) {
    for (int j = 0; j < 32; j++) q[j] = KV_IQ4(j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4));
    same4(h2f(b), dl); same4(0.f, ml);
}
__device__ void IQ4_XS::unit(const u8* b, int i, float* q, float* dl, float* ml) {
    const int ib = i >> 5;
    const unsigned shi = b[2] | (b[3] << 8);
    const int ls = ((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((shi >> (2 * ib)) & 3) << 4);
    same4(h2f(b) * (small_f(ls) - 32.f), dl); same4(0.f, ml);
    const u8* qs = b + 8 + ib * 16;
    for (int j = 0; j < 32; j++) q[j] = KV_IQ4(j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4));
}
__device__ void MXFP4::unit(const u8* b, int, float* q, float* dl, float* ml) {
    for (int j = 0; j < 32; j++) q[j] = KV_MX(j < 16 ? (b[1 + j] & 15) : (b[1 + j - 16] >> 4));
    same4(e8m0_half(b[0]), dl); same4(0.f, ml);
}
