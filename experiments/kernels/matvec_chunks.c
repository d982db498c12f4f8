// ggml's q4_K mat-vec kernel over a run of distinct matrices (rows x 2048 columns, as moondream's), the rows dealt to
// 2 threads in dynamic chunks of 16/64/256/1024 rows or as one contiguous half each (chunk 0): what patch 0005 is
// about. Built and run by run.sh.
#define _GNU_SOURCE
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdatomic.h>
#include <omp.h>
void ggml_cpu_init(void);
void ggml_vec_dot_q4_K_q8_K(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void quantize_row_q4_K_ref(const float *x, void *y, int64_t k);
void quantize_row_q8_K_ref(const float *x, void *y, int64_t k);
#define K 2048
#define RB 1152
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9*t.tv_nsec; }
int main(int argc, char **argv) {
    ggml_cpu_init();
    const size_t mat_rows = argc > 1 ? atoi(argv[1]) : 8192;
    const size_t nmat = 480e6 / (mat_rows*RB);
    uint8_t *w = aligned_alloc(64, nmat*mat_rows*RB);
    float f[K]; for (int r = 0; r < 256; ++r) { for (int i = 0; i < K; ++i) f[i] = rand()/(float)RAND_MAX - 0.5f; quantize_row_q4_K_ref(f, w + r*RB, K); }
    for (size_t r = 256; r < nmat*mat_rows; ++r) memcpy(w + r*RB, w + (r % 256)*RB, RB);
    uint8_t y[292*8]; quantize_row_q8_K_ref(f, y, K);
    float *out = malloc(4*mat_rows);
    printf("{\"mat_mb\": %.1f", mat_rows*RB/1e6);
    const int modes[] = {0, 16, 64, 256, 1024};
    for (int rep = 0; rep < 3; ++rep)
    for (int mi = 0; mi < 5; ++mi) {
        const int chunk = modes[mi];
        double t0 = now();
        #pragma omp parallel num_threads(2)
        {
            const int ith = omp_get_thread_num();
            for (size_t m = 0; m < nmat; ++m) {
                const uint8_t *W = w + m*mat_rows*RB;
                static atomic_int cur;
                if (chunk == 0) {  // contiguous halves
                    size_t a = ith*mat_rows/2, b = (ith+1)*mat_rows/2;
                    for (size_t r = a; r < b; ++r) ggml_vec_dot_q4_K_q8_K(K, out + r, 0, W + r*RB, 0, y, 0, 1);
                } else {
                    if (ith == 0) atomic_store(&cur, 2);
                    #pragma omp barrier
                    int c = ith; const int nch = (mat_rows + chunk - 1)/chunk;
                    while (c < nch) {
                        for (size_t r = c*chunk; r < (c+1)*chunk && r < mat_rows; ++r) ggml_vec_dot_q4_K_q8_K(K, out + r, 0, W + r*RB, 0, y, 0, 1);
                        c = atomic_fetch_add(&cur, 1);
                    }
                }
                #pragma omp barrier
            }
        }
        printf(", \"r%d_chunk%d_gbs\": %.1f", rep, chunk, nmat*mat_rows*RB/(now()-t0)/1e9);
    }
    printf("}\n");
}
