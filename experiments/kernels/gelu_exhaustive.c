// Patch 0006: ggml_vec_gelu_f32 (vec.h, vectorized) against the scalar table lookup it replaces, over every float bit
// pattern; built for AVX2 and for this CPU by run.sh. Prints the number of results that differ.
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include "vec.h"
ggml_fp16_t ggml_table_gelu_f16[1 << 16];
float ggml_table_f32_f16[1 << 16];
int main(void) {
    for (int i = 0; i < (1 << 16); ++i) ggml_table_f32_f16[i] = _cvtsh_ss((unsigned short) i);
    for (int i = 0; i < (1 << 16); ++i) { float f = GGML_CPU_FP16_TO_FP32((ggml_fp16_t) i);
        ggml_table_gelu_f16[i] = GGML_CPU_FP32_TO_FP16(0.5f*f*(1.0f + tanhf(0.7978845608f*f*(1.0f + 0.044715f*f*f)))); }
    enum { N = 1 << 20 };
    static uint32_t x[N]; static float y[N];
    uint64_t bad = 0;
    for (uint64_t c = 0; c < (1ull << 32); c += N) {
        for (int i = 0; i < N; ++i) x[i] = (uint32_t) (c + i);
        ggml_vec_gelu_f32(N - 3, y, (const float *) x);  // N-3: the scalar tail runs too
        for (int i = 0; i < N - 3; ++i) {
            float xi; memcpy(&xi, &x[i], 4); float r;
            if (xi <= -10.0f) r = 0.0f; else if (xi >= 10.0f) r = xi;
            else r = GGML_CPU_FP16_TO_FP32(ggml_table_gelu_f16[GGML_CPU_FP32_TO_FP16(xi)]);
            if (memcmp(&r, &y[i], 4)) { if (bad++ < 5) printf("x=%08x got %08x want %08x\n", x[i], *(uint32_t*)&y[i], *(uint32_t*)&r); }
        }
    }
    printf("mismatches %llu\n", (unsigned long long) bad);
    return bad != 0;
}
