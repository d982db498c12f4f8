// The read ceiling in C: 2 threads summing a 2 GB buffer with AVX-512 loads (best of 3), for bandwidth_methods.py.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9*t.tv_nsec; }
int main() { size_t n = 2ull<<30; char *a = aligned_alloc(64, n); memset(a, 1, n); double best = 0; long long s = 0;
 for (int r = 0; r < 3; ++r) { double t0 = now();
  #pragma omp parallel num_threads(2) reduction(+:s)
  { int i = omp_get_thread_num(); __m512i acc = _mm512_setzero_si512(), acc2 = acc;
    for (size_t o = i*n/2; o < (i+1)*n/2; o += 128) { acc = _mm512_add_epi64(acc, _mm512_load_si512(a+o)); acc2 = _mm512_add_epi64(acc2, _mm512_load_si512(a+o+64)); }
    s += _mm512_reduce_add_epi64(_mm512_add_epi64(acc, acc2)); }
  double g = n/(now()-t0)/1e9; if (g > best) best = g; }
 printf("%.1f %lld\n", best, s & 1); }
