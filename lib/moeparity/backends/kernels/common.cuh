// Helpers both kernel families use: the fused activations and cp.async.
#pragma once

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

// cp.async (sm_80+): global → shared without registers, so later items' bytes are in flight
// while this one is computed. The "memory" clobbers keep the compiler from moving shared-memory
// reads of a buffer above the wait for its copy.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }
