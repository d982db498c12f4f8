#define _GNU_SOURCE
#include <time.h>
// An AVX-512 (VNNI) q4_K x q8_K dot product (q4k_avx512.h) against ggml's own, in a mat-vec over a buffer larger
// than the caches, and a plain read of the same bytes. Built and run by run.sh.
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <omp.h>
#include "q4k_avx512.h"

void ggml_vec_dot_q4_K_q8_K(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_vec_dot_q4_K_q8_K_generic(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_K_ref(const float *x, void *y, int64_t k);

#define K 2048
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9*t.tv_nsec; }

void ggml_cpu_init(void);
int main(int argc, char **argv) { ggml_cpu_init();
    const size_t row_bytes = sizeof(bq4K) * (K/256);
    const size_t nrows = (size_t)(argc > 1 ? atof(argv[1]) : 480e6) / row_bytes;
    const int uniq = 4096;
    uint8_t *w = aligned_alloc(64, nrows*row_bytes);
    float *f = malloc(sizeof(float)*K);
    srand(1);
    for (int r = 0; r < uniq; ++r) {
        for (int i = 0; i < K; ++i) f[i] = (rand()/(float)RAND_MAX - 0.5f) * (1 + (i % 7));
        quantize_row_q4_K_ref(f, w + r*row_bytes, K);
    }
    for (size_t r = uniq; r < nrows; ++r) memcpy(w + r*row_bytes, w + (r % uniq)*row_bytes, row_bytes);
    for (int i = 0; i < K; ++i) f[i] = sinf(i*0.37f) * 3;
    bq8K *y = aligned_alloc(64, sizeof(bq8K)*(K/256));
    quantize_row_q8_K_ref(f, y, K);
    float *out = malloc(sizeof(float)*nrows), *ref = malloc(sizeof(float)*nrows);
    // correctness: against ggml's generic (scalar) kernel
    double maxrel = 0, maxref = 0;
    for (int r = 0; r < uniq; ++r) {
        float a, b; ggml_vec_dot_q4_K_q8_K_generic(K, &a, 0, w + r*row_bytes, 0, y, 0, 1);
        vec_dot_q4_K_q8_K_avx512(K, &b, w + r*row_bytes, y);
        float c; ggml_vec_dot_q4_K_q8_K(K, &c, 0, w + r*row_bytes, 0, y, 0, 1);
        // against the larger of the two ggml results' error: float sums in another order, the integer parts exact
        double rel = fabs(a - b) / fmax(fabs(a), 1.0), ref_rel = fabs(a - c) / fmax(fabs(a), 1.0);
        if (rel > maxrel) maxrel = rel;
        if (ref_rel > maxref) maxref = ref_rel;
    }
    printf("{\"rows\": %zu, \"mb\": %.0f, \"avx512_err_vs_generic\": %.2e, \"ggml_avx2_err_vs_generic\": %.2e", nrows, nrows*row_bytes/1e6, maxrel, maxref);
    for (int nt = 1; nt <= omp_get_max_threads(); ++nt) {
        for (int which = 0; which < 3; ++which) {
            double best = 1e9;
            for (int rep = 0; rep < 5; ++rep) {
                double t0 = now();
                #pragma omp parallel for num_threads(nt) schedule(static)
                for (size_t r = 0; r < nrows; ++r) {
                    const void *row = w + r*row_bytes;
                    if (which == 0) ggml_vec_dot_q4_K_q8_K(K, &out[r], 0, row, 0, y, 0, 1);
                    else if (which == 1) vec_dot_q4_K_q8_K_avx512(K, &out[r], row, y);
                    else { __m512i a = _mm512_setzero_si512();
                           for (size_t o = 0; o < row_bytes; o += 64) a = _mm512_add_epi64(a, _mm512_loadu_si512(row + o));
                           out[r] = (float)_mm512_reduce_add_epi64(a); }
                }
                double t = now() - t0; if (t < best) best = t;
            }
            static const char *names[] = {"ggml", "avx512", "read"};
            printf(", \"%s_t%d_gbs\": %.1f", names[which], nt, nrows*row_bytes/best/1e9);
        }
    }
    printf("}\n");
}
