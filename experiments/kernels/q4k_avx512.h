// AVX-512 q4_K x q8_K dot product (one row), VNNI where available: the q4 nibbles of two sub-blocks in one register
// (maddubs), their 6-bit scales applied and summed by one vpdpwssd. Not in the build: on the Zen-class EPYC it measured
// no faster than ggml's AVX2 kernel (<machine>.json beside it, from run.sh).
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef uint16_t gh_t;
typedef struct { gh_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } bq4K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } bq8K;

static inline float h2f(gh_t h) { return _cvtsh_ss(h); }

static inline __m512i mm512_dpwssd(__m512i acc, __m512i a, __m512i b) {
#if defined(__AVX512VNNI__)
    return _mm512_dpwssd_epi32(acc, a, b);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
#endif
}

static void vec_dot_q4_K_q8_K_avx512(int n, float *s, const void *vx, const void *vy) {
    const bq4K *x = vx;
    const bq8K *y = vy;
    const int nb = n / 256;
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // int16 scale k of a pair (a, b) in the 128-bit lanes 0-1 (sub-block a) and 2-3 (sub-block b)
    const __m512i sh01 = _mm512_set_epi64(0x0302030203020302LL, 0x0302030203020302LL, 0x0302030203020302LL, 0x0302030203020302LL,
                                          0x0100010001000100LL, 0x0100010001000100LL, 0x0100010001000100LL, 0x0100010001000100LL);
    const __m512i two = _mm512_set1_epi8(4);
    __m512 acc = _mm512_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int i = 0; i < nb; ++i) {
        const float d = y[i].d * h2f(x[i].d);
        const float dmin = -y[i].d * h2f(x[i].dmin);
        uint32_t utmp[4];
        memcpy(utmp, x[i].scales, 12);
        utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
        const uint32_t uaux = utmp[1] & kmask1;
        utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
        utmp[2] = uaux;
        utmp[0] &= kmask1;
        const __m128i sm = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, utmp[1], utmp[0]));        // 8 scales
        const __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, utmp[3], utmp[2]));      // 8 mins
        const __m256i q8sums = _mm256_loadu_si256((const __m256i *) y[i].bsums);
        const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256(q8sums, 1));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(_mm_madd_epi16(mins, q8s)), acc_m);

        const __m512i scb = _mm512_broadcast_i32x4(sm);
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m512i sumi = _mm512_setzero_si512();
        __m512i sh = sh01;
        for (int j = 0; j < 2; ++j) {
            const __m512i bits = _mm512_loadu_si512((const void *) (q4 + 64*j));
            const __m512i lo = _mm512_and_si512(bits, m4);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
            const __m512i xa = _mm512_shuffle_i64x2(lo, hi, 0x44);  // sub-blocks 4j, 4j+1
            const __m512i xb = _mm512_shuffle_i64x2(lo, hi, 0xEE);  // sub-blocks 4j+2, 4j+3
            const __m512i pa = _mm512_maddubs_epi16(xa, _mm512_loadu_si512((const void *) (q8 + 128*j)));
            const __m512i pb = _mm512_maddubs_epi16(xb, _mm512_loadu_si512((const void *) (q8 + 128*j + 64)));
            sumi = mm512_dpwssd(sumi, pa, _mm512_shuffle_epi8(scb, sh));
            sh = _mm512_add_epi8(sh, two);
            sumi = mm512_dpwssd(sumi, pb, _mm512_shuffle_epi8(scb, sh));
            sh = _mm512_add_epi8(sh, two);
        }
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
    }
    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    *s = _mm512_reduce_add_ps(acc) + _mm_cvtss_f32(acc_m);
}
