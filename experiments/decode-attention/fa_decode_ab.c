// The decode attention kernel of patches 0001/0002 (f16 KV, AVX-512) against variants, in one process, turn about:
// the KV cache of 24 layers at the image prompt's depth (moondream: 32 heads of 64, 4 KB rows), 2 threads each
// taking half the rows, one "token" (all layers) per turn. Prints the read rate of each (K and V bytes over time)
// and the largest difference of its output from the current kernel's. Variants: software prefetch ahead, one pass
// (each row's V right after its K), the same bytes read alone in the current order (the pattern's ceiling), and each
// half of the current kernel alone, and the current kernel, one pass and the read on a cache allocated as
// ../huge-pages/cpu-buffers-on-huge-pages.patch does (2 MiB aligned, MADV_HUGEPAGE). Results: <machine>.json and
// README.md beside this file (its output, a JSON object, is what <machine>.json holds).
//   gcc -O3 -march=native -fopenmp fa_decode_ab.c -o fa && ./fa [rows=900] [turns=40]
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define H 32
#define D 64
#define E (H * D)        // a row: 2048 f16 = 4 KB
#define CELLS 2048       // the cache's rows per layer (n_ctx), of which `rows` are live
#define LAYERS 24
#define TILE 32

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static uint64_t rs = 88172645463325252ull;
static uint64_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }

typedef struct { float M[H], S[H], acc[H * D]; } part_t;

static inline float dot(const float *q, const uint16_t *k) {
    __m512 a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) k)), _mm512_setzero_ps());
    __m512 a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (k + 16))), _mm512_setzero_ps());
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 32), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (k + 32))), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 48), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (k + 48))), a1);
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
static inline void mad(float *y, const uint16_t *x, float p) {
    const __m512 vp = _mm512_set1_ps(p);
    for (int d = 0; d < D; d += 16)
        _mm512_storeu_ps(y + d, _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (x + d))), vp, _mm512_loadu_ps(y + d)));
}
static void rescale(part_t *p, int h, float m_new) {
    const float ms = expf(p->M[h] - m_new);
    for (int d = 0; d < D; ++d) p->acc[h * D + d] *= ms;
    p->S[h] *= ms;
    p->M[h] = m_new;
}

// the current kernel: per tile of 32 rows, K scores of all heads row by row, an online softmax per head, V row by row
static void tiled(const float *q, const uint16_t *K, const uint16_t *V, int r0, int r1, part_t *p, int pf) {
    float kq[H][TILE];
    for (int r = r0; r < r1; r += TILE) {
        const int nt = r1 - r < TILE ? r1 - r : TILE;
        for (int j = 0; j < nt; ++j) {
            const uint16_t *k = K + (size_t) (r + j) * E;
            if (pf) for (int o = 0; o < E; o += 32) _mm_prefetch((const char *) (k + (size_t) pf * E + o), _MM_HINT_T0);
            for (int h = 0; h < H; ++h) kq[h][j] = dot(q + h * D, k + h * D) * 0.125f;
        }
        for (int h = 0; h < H; ++h) {
            float mx = -INFINITY;
            for (int j = 0; j < nt; ++j) mx = kq[h][j] > mx ? kq[h][j] : mx;
            if (mx > p->M[h]) rescale(p, h, mx);
            for (int j = 0; j < nt; ++j) { kq[h][j] = expf(kq[h][j] - p->M[h]); p->S[h] += kq[h][j]; }
        }
        for (int j = 0; j < nt; ++j) {
            const uint16_t *v = V + (size_t) (r + j) * E;
            if (pf) for (int o = 0; o < E; o += 32) _mm_prefetch((const char *) (v + (size_t) pf * E + o), _MM_HINT_T0);
            for (int h = 0; h < H; ++h) mad(p->acc + h * D, v + h * D, kq[h][j]);
        }
    }
}

// one pass: each row's K scores, then at once its V (the max rarely moves after the first rows)
static void onepass(const float *q, const uint16_t *K, const uint16_t *V, int r0, int r1, part_t *p, int pf) {
    for (int r = r0; r < r1; ++r) {
        const uint16_t *k = K + (size_t) r * E, *v = V + (size_t) r * E;
        if (pf) for (int o = 0; o < E; o += 32) {
            _mm_prefetch((const char *) (k + (size_t) pf * E + o), _MM_HINT_T0);
            _mm_prefetch((const char *) (v + (size_t) pf * E + o), _MM_HINT_T0);
        }
        float s[H];
        for (int h = 0; h < H; ++h) s[h] = dot(q + h * D, k + h * D) * 0.125f;
        for (int h = 0; h < H; ++h) {
            if (s[h] > p->M[h]) rescale(p, h, s[h]);
            const float e = expf(s[h] - p->M[h]);
            p->S[h] += e;
            mad(p->acc + h * D, v + h * D, e);
        }
    }
}

// experiments: the K half and the V half of the current kernel alone (their bytes counted as if both were read)
static void konly(const float *q, const uint16_t *K, const uint16_t *V, int r0, int r1, part_t *p, int pf) {
    (void) V; (void) pf;
    float kq[H][TILE];
    for (int r = r0; r < r1; r += TILE) {
        const int nt = r1 - r < TILE ? r1 - r : TILE;
        for (int j = 0; j < nt; ++j) {
            const uint16_t *k = K + (size_t) (r + j) * E;
            for (int h = 0; h < H; ++h) kq[h][j] = dot(q + h * D, k + h * D) * 0.125f;
        }
        for (int h = 0; h < H; ++h) for (int j = 0; j < nt; ++j) p->S[h] += kq[h][j];
    }
}
static void vonly(const float *q, const uint16_t *K, const uint16_t *V, int r0, int r1, part_t *p, int pf) {
    (void) q; (void) K; (void) pf;
    for (int r = r0; r < r1; ++r) {
        const uint16_t *v = V + (size_t) r * E;
        for (int h = 0; h < H; ++h) mad(p->acc + h * D, v + h * D, 0.001f);
    }
}

// the bytes alone, in the current kernel's order: the read ceiling for this access pattern
static float sink;
static void readonly(const float *q, const uint16_t *K, const uint16_t *V, int r0, int r1, part_t *p, int pf) {
    (void) q; (void) p; (void) pf;
    __m512i a = _mm512_setzero_si512();
    for (int r = r0; r < r1; r += TILE) {
        const int nt = r1 - r < TILE ? r1 - r : TILE;
        for (int j = 0; j < nt * E; j += 32) a = _mm512_add_epi64(a, _mm512_loadu_si512(K + (size_t) r * E + j));
        for (int j = 0; j < nt * E; j += 32) a = _mm512_add_epi64(a, _mm512_loadu_si512(V + (size_t) r * E + j));
    }
    sink += _mm512_reduce_add_epi64(a);
}

typedef void (*kern_t)(const float *, const uint16_t *, const uint16_t *, int, int, part_t *, int);
typedef struct { const char *name; kern_t f; int pf; int huge; } variant_t;

static void token(variant_t v, uint16_t **K, uint16_t **V, float **Q, int rows, float *out) {
    #pragma omp parallel num_threads(2)
    {
        const int t = omp_get_thread_num();
        const int r0 = t * rows / 2, r1 = (t + 1) * rows / 2;
        part_t p;
        for (int l = 0; l < LAYERS; ++l) {
            for (int h = 0; h < H; ++h) { p.M[h] = -INFINITY; p.S[h] = 0; }
            memset(p.acc, 0, sizeof p.acc);
            v.f(Q[l], K[l], V[l], r0, r1, &p, v.pf);
            if (out) {  // thread 0 keeps its partials of the last layer, normalized, to compare the variants
                if (t == 0 && l == LAYERS - 1) for (int i = 0; i < H * D; ++i) out[i] = p.acc[i] / p.S[i / D];
            }
            #pragma omp barrier
        }
    }
}

// the cache as patch 0009 allocates it: 2 MiB aligned, transparent huge pages asked for
static uint16_t *huge_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, (size_t) 2 << 20, n) != 0) abort();
    madvise(p, n, MADV_HUGEPAGE);
    return p;
}

int main(int argc, char **argv) {
    const int rows = argc > 1 ? atoi(argv[1]) : 900, turns = argc > 2 ? atoi(argv[2]) : 40;
    uint16_t *K[LAYERS], *V[LAYERS], *KH[LAYERS], *VH[LAYERS]; float *Q[LAYERS];
    for (int l = 0; l < LAYERS; ++l) {
        K[l] = aligned_alloc(64, (size_t) CELLS * E * 2); V[l] = aligned_alloc(64, (size_t) CELLS * E * 2);
        KH[l] = huge_alloc((size_t) CELLS * E * 2); VH[l] = huge_alloc((size_t) CELLS * E * 2);
        Q[l] = aligned_alloc(64, E * 4);
        for (size_t i = 0; i < (size_t) CELLS * E; ++i) {
            K[l][i] = _cvtss_sh(((int) (rnd() % 2001) - 1000) * 1e-3f, 0);
            V[l][i] = _cvtss_sh(((int) (rnd() % 2001) - 1000) * 1e-3f, 0);
        }
        for (int i = 0; i < E; ++i) Q[l][i] = ((int) (rnd() % 2001) - 1000) * 3e-3f;
        memcpy(KH[l], K[l], (size_t) CELLS * E * 2); memcpy(VH[l], V[l], (size_t) CELLS * E * 2);
    }
    variant_t vs[] = {{"tiled (current)", tiled, 0}, {"tiled, prefetch 4 rows ahead", tiled, 4},
                      {"tiled, prefetch 16 rows ahead", tiled, 16}, {"one pass", onepass, 0},
                      {"one pass, prefetch 4 rows ahead", onepass, 4}, {"read only", readonly, 0},
                      {"K half only", konly, 0}, {"V half only", vonly, 0},
                      {"tiled (current), huge pages", tiled, 0, 1}, {"one pass, huge pages", onepass, 0, 1},
                      {"read only, huge pages", readonly, 0, 1}};
    const int nv = sizeof vs / sizeof vs[0];
    float ref[H * D], got[H * D];
    token(vs[0], K, V, Q, rows, ref);
    double best[16] = {0}, sum[16] = {0};
    const double bytes = 2.0 * rows * E * 2 * LAYERS;
    for (int t = 0; t < turns; ++t)
        for (int i = 0; i < nv; ++i) {
            const int k = (i + t) % nv;  // rotate the order each turn
            double t0 = now();
            token(vs[k], vs[k].huge ? KH : K, vs[k].huge ? VH : V, Q, rows, NULL);
            const double gbs = bytes / (now() - t0) / 1e9;
            sum[k] += gbs; if (gbs > best[k]) best[k] = gbs;
        }
    printf("{\"rows\": %d, \"turns\": %d, \"mb_per_token\": %.1f, \"variants\": [\n", rows, turns, bytes / 1e6);
    for (int i = 0; i < nv; ++i) {
        float err = 0;
        if (vs[i].f == tiled || vs[i].f == onepass) {
            token(vs[i], vs[i].huge ? KH : K, vs[i].huge ? VH : V, Q, rows, got);
            for (int j = 0; j < H * D; ++j) err = fmaxf(err, fabsf(got[j] - ref[j]));
        }
        printf("  {\"name\": \"%s\", \"mean_gbs\": %.1f, \"best_gbs\": %.1f, \"max_abs_diff\": %.3g}%s\n", vs[i].name,
               sum[i] / turns, best[i], err, i + 1 < nv ? "," : "");
    }
    printf("]}\n");
    return 0;
}
