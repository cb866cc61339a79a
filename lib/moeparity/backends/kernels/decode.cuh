// Block decoders for every qtype row the CUDA backend implements (layouts: ggml-common.h, and
// moeparity/quant/dequant.py which is checked bit-for-bit against gguf-py).
//
// decode8<Q>(blk, i, w, b): the 8 consecutive weights starting at element i (i % 8 == 0) of the
// block at blk. With SPLIT (q8_1 mode of formats that have a min), w gets the scaled quants a*q
// and b the sub-block's min term; otherwise w = a*q - b. Built with --fmad=false, so these are
// the exact float32 dequantised values and backends/emulated.py can reproduce every partial sum.
#pragma once
#include <cuda_fp16.h>
typedef unsigned char u8;

__device__ __forceinline__ float h2f(const u8* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}
__device__ __forceinline__ float e8m0_half(unsigned e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1u) << 23));
}
// Small non-negative int → float without I2F (a quarter-rate pipe): 2^23 + q, minus 2^23 + bias.
// Exact for 0 <= q < 2^23 and |bias| small, so the values equal those of an int→float conversion.
__device__ __forceinline__ float qf(unsigned q, float bias_plus_2p23) {
    return __int_as_float(0x4B000000u | q) - bias_plus_2p23;
}
#define P23 8388608.0f
// 4 little-endian bytes at a 2-byte-aligned shared-memory address
__device__ __forceinline__ unsigned ld4_a2(const u8* p) {
    const unsigned short* h = (const unsigned short*)p;
    return (unsigned)h[0] | ((unsigned)h[1] << 16);
}
// 16-entry int8 grids held in registers (a __constant__ table serialises when lanes index it
// differently): byte q of the 16 packed bytes, via __byte_perm, then int8 → float exactly.
__device__ __forceinline__ float grid16(unsigned q, unsigned t0, unsigned t1, unsigned t2, unsigned t3) {
    const unsigned lo = __byte_perm(t0, t1, q & 7), hi = __byte_perm(t2, t3, q & 7);
    const unsigned v = ((q & 8) ? hi : lo) & 255;
    return qf(v ^ 128u, P23 + 128.0f);                       // (int8)v as float
}
// kvalues_iq4nl = {-127,-104,-83,-65,-49,-35,-22,-10, 1,13,25,38,53,69,89,113} as bytes
#define KV_IQ4(q) grid16((q), 0xBFAD9881u, 0xF6EADDCFu, 0x26190D01u, 0x71594535u)
// kvalues_mxfp4 (e2m1 doubled) = {0,1,2,3,4,6,8,12, 0,-1,-2,-3,-4,-6,-8,-12}
#define KV_MX(q) grid16((q), 0x03020100u, 0x0C080604u, 0xFDFEFF00u, 0xF4F8FAFCu)

#define QTYPE(NAME, BLOCK_, NBYTES_, HASMIN_) \
    struct NAME { static constexpr int BLOCK = BLOCK_, NBYTES = NBYTES_; static constexpr bool HAS_MIN = HASMIN_; \
        template <bool SPLIT> __device__ static void decode8(const u8* b, int i, float* w, float& m); };

QTYPE(F32, 1, 4, false)
QTYPE(F16, 1, 2, false)
QTYPE(BF16, 1, 2, false)
QTYPE(Q4_0, 32, 18, false)
QTYPE(Q4_1, 32, 20, true)
QTYPE(Q5_0, 32, 22, false)
QTYPE(Q5_1, 32, 24, true)
QTYPE(Q8_0, 32, 34, false)
QTYPE(Q2_K, 256, 84, false)
QTYPE(Q3_K, 256, 110, false)
QTYPE(Q4_K, 256, 144, true)
QTYPE(Q5_K, 256, 176, true)
QTYPE(Q6_K, 256, 210, false)
QTYPE(IQ4_NL, 32, 18, false)
QTYPE(IQ4_XS, 256, 136, false)
QTYPE(MXFP4, 32, 17, false)

// float rows: "block" of 1, so b points at element i itself
template <bool S> __device__ void F32::decode8(const u8* b, int, float* w, float& m) {
    m = 0.f;
    for (int j = 0; j < 8; j++) w[j] = __uint_as_float(b[4*j] | (b[4*j+1] << 8) | (b[4*j+2] << 16) | ((unsigned)b[4*j+3] << 24));
}
template <bool S> __device__ void F16::decode8(const u8* b, int, float* w, float& m) {
    m = 0.f;
    for (int j = 0; j < 8; j++) w[j] = h2f(b + 2*j);
}
template <bool S> __device__ void BF16::decode8(const u8* b, int, float* w, float& m) {
    m = 0.f;
    for (int j = 0; j < 8; j++) w[j] = __uint_as_float((unsigned)(b[2*j] | (b[2*j+1] << 8)) << 16);
}
template <bool S> __device__ void Q4_0::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b);
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    const unsigned lo = ld4_a2(b + 2 + o), hi = ld4_a2(b + 6 + o);
    for (int j = 0; j < 8; j++) w[j] = d * qf(((j < 4 ? lo >> (8 * j) : hi >> (8 * (j - 4))) >> sh) & 15, P23 + 8.0f);
}
template <bool S> __device__ void Q4_1::decode8(const u8* b, int i, float* w, float& m) {
    const float d = h2f(b); m = -h2f(b + 2);                  // w = d*q + min  ⇒  b-term is -min
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    for (int j = 0; j < 8; j++) w[j] = S ? d * (float)((b[4 + o + j] >> sh) & 15) : d * (float)((b[4 + o + j] >> sh) & 15) - m;
}
template <bool S> __device__ void Q5_0::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b);
    const unsigned qh = b[2] | (b[3] << 8) | (b[4] << 16) | ((unsigned)b[5] << 24);
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    for (int j = 0; j < 8; j++) w[j] = d * (float)((int)(((b[6 + o + j] >> sh) & 15) | (((qh >> (i + j)) & 1) << 4)) - 16);
}
template <bool S> __device__ void Q5_1::decode8(const u8* b, int i, float* w, float& m) {
    const float d = h2f(b); m = -h2f(b + 2);
    const unsigned qh = b[4] | (b[5] << 8) | (b[6] << 16) | ((unsigned)b[7] << 24);
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    for (int j = 0; j < 8; j++) {
        const float q = (float)(((b[8 + o + j] >> sh) & 15) | (((qh >> (i + j)) & 1) << 4));
        w[j] = S ? d * q : d * q - m;
    }
}
template <bool S> __device__ void Q8_0::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b);
    const unsigned lo = ld4_a2(b + 2 + i) ^ 0x80808080u, hi = ld4_a2(b + 6 + i) ^ 0x80808080u;  // int8 + 128
    for (int j = 0; j < 8; j++) w[j] = qf((j < 4 ? lo >> (8 * j) : hi >> (8 * (j - 4))) & 255, P23 + 128.0f) * d;
}
template <bool S> __device__ void Q2_K::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b + 80), dmin = h2f(b + 82);
    const int h = i >> 7, sh = 2 * ((i >> 5) & 3), l = i & 31;
    const int sc = b[i >> 4];
    const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
    for (int j = 0; j < 8; j++) w[j] = dl * (float)((b[16 + h*32 + l + j] >> sh) & 3) - ml;
}
template <bool S> __device__ void Q3_K::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b + 108);
    const int h = i >> 7, jj = (i >> 5) & 3, l = i & 31, k = i >> 4;
    const int lo = (b[96 + (k & 7)] >> (4 * (k >> 3))) & 15, hi = (b[104 + (k & 3)] >> (2 * (k >> 2))) & 3;
    const float dl = d * (float)((lo | (hi << 4)) - 32);
    for (int j = 0; j < 8; j++) {
        const int q = ((b[32 + h*32 + l + j] >> (2*jj)) & 3) - ((((b[l + j] >> (4*h + jj)) & 1) ^ 1) << 2);
        w[j] = dl * (float)q;
    }
}
__device__ __forceinline__ void scale_min_k4(const u8* s, int j, int& sc, int& mn) {
    if (j < 4) { sc = s[j] & 63; mn = s[j + 4] & 63; }
    else { sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}
template <bool S> __device__ void Q4_K::decode8(const u8* b, int i, float* w, float& m) {
    const int sb = i >> 5, l = i & 31;
    int sc, mn; scale_min_k4(b + 4, sb, sc, mn);
    const float dl = h2f(b) * (float)sc; m = h2f(b + 2) * (float)mn;
    const int sh = 4 * (sb & 1);
    const uint2 v = *(const uint2*)(b + 16 + (sb >> 1) * 32 + l);          // blocks are 16-byte aligned
    for (int j = 0; j < 8; j++) {
        const float q = qf(((j < 4 ? v.x >> (8 * j) : v.y >> (8 * (j - 4))) >> sh) & 15, P23);
        w[j] = S ? dl * q : dl * q - m;
    }
}
template <bool S> __device__ void Q5_K::decode8(const u8* b, int i, float* w, float& m) {
    const int sb = i >> 5, l = i & 31;
    int sc, mn; scale_min_k4(b + 4, sb, sc, mn);
    const float dl = h2f(b) * (float)sc; m = h2f(b + 2) * (float)mn;
    const int sh = 4 * (sb & 1);
    const uint2 v = *(const uint2*)(b + 48 + (sb >> 1) * 32 + l), h = *(const uint2*)(b + 16 + l);
    for (int j = 0; j < 8; j++) {
        const unsigned vb = j < 4 ? v.x >> (8 * j) : v.y >> (8 * (j - 4));
        const unsigned hb = j < 4 ? h.x >> (8 * j) : h.y >> (8 * (j - 4));
        const float q = qf(((vb >> sh) & 15) | (((hb >> sb) & 1) << 4), P23);
        w[j] = S ? dl * q : dl * q - m;
    }
}
template <bool S> __device__ void Q6_K::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const int h = i >> 7, k = (i >> 5) & 3, l = i & 31;
    const float dl = h2f(b + 208) * (float)(signed char)b[192 + (i >> 4)];
    const u8* ql = b + h*64 + (k & 1) * 32 + l;
    const u8* qh = b + 128 + h*32 + l;
    const int sh = 4 * (k >> 1);
    const unsigned l0 = ld4_a2(ql), l1 = ld4_a2(ql + 4), h0 = ld4_a2(qh), h1 = ld4_a2(qh + 4);
    for (int j = 0; j < 8; j++) {
        const unsigned lb = j < 4 ? l0 >> (8 * j) : l1 >> (8 * (j - 4));
        const unsigned hb = j < 4 ? h0 >> (8 * j) : h1 >> (8 * (j - 4));
        w[j] = dl * qf(((lb >> sh) & 15) | (((hb >> (2 * k)) & 3) << 4), P23 + 32.0f);
    }
}
template <bool S> __device__ void IQ4_NL::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = h2f(b);
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    for (int j = 0; j < 8; j++) w[j] = d * KV_IQ4((b[2 + o + j] >> sh) & 15);
}
template <bool S> __device__ void IQ4_XS::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const int ib = i >> 5, o = i & 15, sh = (i & 16) ? 4 : 0;
    const unsigned shi = b[2] | (b[3] << 8);
    const int ls = ((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((shi >> (2 * ib)) & 3) << 4);
    const float dl = h2f(b) * (float)(ls - 32);
    for (int j = 0; j < 8; j++) w[j] = dl * KV_IQ4((b[8 + ib*16 + o + j] >> sh) & 15);
}
template <bool S> __device__ void MXFP4::decode8(const u8* b, int i, float* w, float& m) {
    m = 0.f;
    const float d = e8m0_half(b[0]);
    const int sh = i < 16 ? 0 : 4, o = i & 15;
    for (int j = 0; j < 8; j++) w[j] = d * KV_MX((b[1 + o + j] >> sh) & 15);
}
