// Two builds of ggml's q4_K or q6_K x q8_K dot product (shared libraries, dlopen'd side by side): the same float,
// bit for bit, on random blocks (any bit pattern is a valid block; d and dmin finite f16), then their speed over a
// 480 MB mat-vec and an L2-resident one, 1 and 2 threads, the two interleaved (medians of 7). Exits 1 on a mismatch.
//   [NTEST=rows] [DOT_AB_SPEED=0] dot_ab STOCK.so OURS.so q4_K|q6_K     (patch 0007; built by dot_check.sh)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <omp.h>
#include <immintrin.h>
typedef void (*dot_t)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*q_t)(const float *, void *, int64_t);
#define K 2048
#define YB 292
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9*t.tv_nsec; }
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
int main(int argc, char **argv) {
    const int q6 = argc > 3 && !strcmp(argv[3], "q6_K");
    const char *sym = q6 ? "ggml_vec_dot_q6_K_q8_K" : "ggml_vec_dot_q4_K_q8_K";
    const int BB = q6 ? 210 : 144, RB = BB*8, doff = q6 ? 208 : 0, nd = q6 ? 1 : 2;
    void *ha = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL), *hb = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    if (!ha || !hb) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    ((void (*)(void))dlsym(ha, "ggml_cpu_init"))(); ((void (*)(void))dlsym(hb, "ggml_cpu_init"))();
    dot_t A = (dot_t)dlsym(ha, sym), B = (dot_t)dlsym(hb, sym);
    q_t q8 = (q_t)dlsym(ha, "quantize_row_q8_K_ref");
    if (A == B) { fprintf(stderr, "same symbol\n"); return 2; }
    // bit-identity: random bytes for every block field (any bit pattern is a valid q4_K block), d/dmin finite f16
    const long ntest = getenv("NTEST") ? atol(getenv("NTEST")) : 2000000; long bad = 0;
    uint8_t *x = malloc(RB); uint8_t *y = aligned_alloc(64, YB*8); float f[K];
    for (long t = 0; t < ntest; ++t) {
        for (int i = 0; i < RB; ++i) x[i] = rnd();
        for (int b = 0; b < 8; ++b) for (int h = 0; h < nd; ++h) {
            uint16_t v = _cvtss_sh(((int)(rnd() % 20001) - 10000) * 1e-4f * (1 << (rnd() % 6)), 0); memcpy(x + b*BB + doff + 2*h, &v, 2); }
        if (t % 64 == 0) { float sc = (rnd() % 1000) * 0.01f; for (int i = 0; i < K; ++i) f[i] = ((int)(rnd() % 2001) - 1000) * sc; q8(f, y, K); }
        float ra, rb; A(K, &ra, 0, x, 0, y, 0, 1); B(K, &rb, 0, x, 0, y, 0, 1);
        if (memcmp(&ra, &rb, 4)) { if (bad++ < 5) fprintf(stderr, "mismatch %ld: %.9g %.9g\n", t, ra, rb); }
    }
    printf("{\"type\": \"%s\", \"tested_rows\": %ld, \"mismatches\": %ld", q6 ? "q6_K" : "q4_K", ntest, bad);
    if (getenv("DOT_AB_SPEED") && !strcmp(getenv("DOT_AB_SPEED"), "0")) { printf("}\n"); return bad != 0; }
    // speed: a 480 MB mat-vec, contiguous halves per thread; and an L2-resident one (compute bound), interleaved
    const size_t big = 480e6 / RB; uint8_t *w = aligned_alloc(64, big*RB);
    for (size_t r = 0; r < big*RB; r += 8) { uint64_t v = rnd(); memcpy(w + r, &v, 8); }
    for (size_t r = 0; r < big; ++r) { uint16_t v = 0x3c00; for (int b = 0; b < 8; ++b) for (int h = 0; h < nd; ++h) memcpy(w + r*RB + b*BB + doff + 2*h, &v, 2); }
    float *out = malloc(4*big);
    for (int nt = 1; nt <= 2; ++nt) for (int res = 0; res < 2; ++res) {
        double ta[7], tb[7]; const size_t rows = res ? 256 : big; const int reps = res ? 2000 : 1;
        for (int rep = 0; rep < 7; ++rep) for (int s = 0; s < 2; ++s) {
            dot_t D = ((rep + s) & 1) ? B : A;
            double t0 = now();
            #pragma omp parallel num_threads(nt)
            { const int ith = omp_get_thread_num();
              for (int k = 0; k < reps; ++k) for (size_t r = ith*rows/nt; r < (ith+1)*rows/nt; ++r) D(K, out + r, 0, w + r*RB, 0, y, 0, 1); }
            double dt = now() - t0; if (D == A) ta[rep] = dt; else tb[rep] = dt;
        }
        // medians
        for (int i = 0; i < 7; ++i) for (int j = i+1; j < 7; ++j) { if (ta[j] < ta[i]) { double z = ta[i]; ta[i] = ta[j]; ta[j] = z; } if (tb[j] < tb[i]) { double z = tb[i]; tb[i] = tb[j]; tb[j] = z; } }
        const double gb = rows*RB*(double)reps/1e9;
        printf(", \"%s_t%d\": {\"a_gbs\": %.1f, \"b_gbs\": %.1f, \"b_over_a\": %.3f}", res ? "l2" : "dram", nt, gb/ta[3], gb/tb[3], ta[3]/tb[3]);
    }
    printf("}\n");
    return bad != 0;
}
