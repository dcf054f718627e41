/* Fused CPU kernels for the per-step runtime: one pass over memory where eager PyTorch makes
 * a dozen. The arithmetic is SPEC §3 and §4 operation for operation, in the same order and
 * precision as qffs.snn.dynamics, so results are bit-identical (compiled without fast-math
 * and without floating-point contraction). Each kernel works on a range of rows so that the
 * caller can split a batch across threads. Loaded by qffs/snn/native.py.
 */
#include <math.h>
#include <stdint.h>

/* Work (elements) below which a kernel runs on one thread. */
#define GRAIN 65536

/* On x86-64 each kernel is also compiled for AVX2, chosen at load time where the CPU has it
 * (the library itself stays portable across the machines that share a home directory). */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

/* One IF step for `rows` rows of `cols` neurons each (split across OpenMP threads) (SPEC §3):
 *   u += I; +1 if u >= theta and Z < z_max; -1 if u < 0 and Z > 0 (when `negative`);
 *   u -= z*theta; Z += z; out = z*theta. pos/neg: spikes of each sign per row. */
#define IF_STEP(NAME, REAL)                                                                      \
    CLONES void NAME(REAL *restrict membrane, int8_t *restrict count, const REAL *restrict current,       \
              REAL *restrict out, int32_t *restrict pos, int32_t *restrict neg,                    \
              int64_t rows, int64_t cols, REAL threshold,                                          \
              int32_t z_max, int32_t negative) {                                                 \
        _Pragma("omp parallel for schedule(static) if (rows * cols > GRAIN)")                    \
        for (int64_t r = 0; r < rows; ++r) {                                                      \
            REAL *u = membrane + r * cols;                                                       \
            int8_t *z = count + r * cols;                                                        \
            const REAL *in = current + r * cols;                                                 \
            REAL *o = out + r * cols;                                                            \
            int32_t fired = 0, unfired = 0;                                                      \
            for (int64_t j = 0; j < cols; ++j) {                                                 \
                REAL v = u[j] + in[j];                                                           \
                int32_t zj = z[j];                                                               \
                int32_t f = (v >= threshold) & (zj < z_max);                                     \
                int32_t g = negative & (v < 0) & (zj > 0);                                       \
                REAL spike = (REAL)(f - g) * threshold;                                          \
                u[j] = v - spike;                                                                \
                z[j] = (int8_t)(zj + f - g);                                                     \
                o[j] = spike;                                                                    \
                fired += f;                                                                      \
                unfired += g;                                                                    \
            }                                                                                    \
            pos[r] = fired;                                                                      \
            neg[r] = unfired;                                                                    \
        }                                                                                        \
    }

IF_STEP(qffs_if_step_f32, float)
IF_STEP(qffs_if_step_f64, double)

/* torch's max: NaN wins. */
#define MAX_NAN(a, b) (((b) > (a) || isnan(b)) ? (b) : (a))

/* One event max pooling step for `planes` planes of H x W (SPEC §4): cumulative += events;
 * m = maxpool(cumulative) (torch's max_pool2d: windows clipped to the input, NaN wins);
 * out = m - pooled; pooled = m. The common 2x2, stride 2 window has its own loop. */
#define EVENT_POOL(NAME, REAL)                                                                   \
    CLONES void NAME(REAL *restrict cumulative, const REAL *restrict events, REAL *restrict pooled,      \
              REAL *restrict out, int64_t planes, int64_t H, int64_t W, int64_t OH,        \
              int64_t OW, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,  \
              int64_t dh, int64_t dw) {                                                          \
        int halves = kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && dh == 1 && dw == 1 \
                     && W <= 4096;                                                               \
        _Pragma("omp parallel for schedule(static) if (planes * H * W > GRAIN)")                 \
        for (int64_t p = 0; p < planes; ++p) {                                                      \
            REAL pairs[4096];                                                                    \
            REAL *c = cumulative + p * H * W;                                                    \
            const REAL *e = events + p * H * W;                                                  \
            int nan = 0;                                                                         \
            for (int64_t i = 0; i < H * W; ++i) {                                                \
                REAL v = c[i] + e[i];                                                            \
                c[i] = v;                                                                        \
                nan |= v != v;                                                                   \
            }                                                                                    \
            REAL *m = pooled + p * OH * OW;                                                      \
            REAL *o = out + p * OH * OW;                                                         \
            for (int64_t oh = 0; oh < OH; ++oh) {                                                \
                REAL *mo = m + oh * OW, *oo = o + oh * OW;                                       \
                if (halves && !nan) { /* no NaN: a plain max is torch's */                       \
                    const REAL *a = c + 2 * oh * W, *b = a + W;                                  \
                    for (int64_t w = 0; w < 2 * OW; ++w) pairs[w] = b[w] > a[w] ? b[w] : a[w];   \
                    for (int64_t ow = 0; ow < OW; ++ow) {                                        \
                        REAL x = pairs[2 * ow], y = pairs[2 * ow + 1];                           \
                        REAL best = y > x ? y : x;                                               \
                        oo[ow] = best - mo[ow];                                                  \
                        mo[ow] = best;                                                           \
                    }                                                                            \
                    continue;                                                                    \
                }                                                                                \
                int64_t i0 = 0, i1 = kh;                                                         \
                while (i0 < kh && oh * sh - ph + i0 * dh < 0) ++i0;                              \
                while (i1 > i0 && oh * sh - ph + (i1 - 1) * dh >= H) --i1;                       \
                for (int64_t ow = 0; ow < OW; ++ow) {                                            \
                    int64_t j0 = 0, j1 = kw;                                                     \
                    while (j0 < kw && ow * sw - pw + j0 * dw < 0) ++j0;                          \
                    while (j1 > j0 && ow * sw - pw + (j1 - 1) * dw >= W) --j1;                   \
                    REAL best = -INFINITY;                                                       \
                    for (int64_t i = i0; i < i1; ++i) {                                          \
                        const REAL *row = c + (oh * sh - ph + i * dh) * W + ow * sw - pw;        \
                        for (int64_t j = j0; j < j1; ++j) best = MAX_NAN(best, row[j * dw]);     \
                    }                                                                            \
                    oo[ow] = best - mo[ow];                                                      \
                    mo[ow] = best;                                                               \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

EVENT_POOL(qffs_event_pool_f32, float)
EVENT_POOL(qffs_event_pool_f64, double)

/* Per row of `rows` x `cols` values: is any nonzero (NaN counts)? Stops at the first one. */
#define ANY_ROWS(NAME, REAL)                                                                     \
    CLONES void NAME(const REAL *restrict x, uint8_t *restrict any, int64_t rows, int64_t cols) { \
        _Pragma("omp parallel for schedule(static) if (rows * cols > GRAIN)")                    \
        for (int64_t r = 0; r < rows; ++r) {                                                      \
            const REAL *v = x + r * cols;                                                        \
            uint8_t found = 0;                                                                   \
            for (int64_t j = 0; j < cols && !found; j += 64) {                                   \
                int64_t end = j + 64 < cols ? j + 64 : cols;                                     \
                for (int64_t k = j; k < end; ++k) found |= v[k] != 0;                            \
            }                                                                                    \
            any[r] = found;                                                                      \
        }                                                                                        \
    }

ANY_ROWS(qffs_any_rows_f32, float)
ANY_ROWS(qffs_any_rows_f64, double)
