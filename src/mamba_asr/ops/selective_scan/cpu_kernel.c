/* Selective scan on the CPU: forward and backward over a range of rows (one row = one (batch, channel)).
 *
 * Plain C99, no Python or PyTorch headers: compiled once by mamba_asr/ops/selective_scan/native.py and
 * called through ctypes (which releases the GIL, so Python threads run row ranges in parallel).
 *
 * Layout (all float32, contiguous):
 *   u, dt, y, dy, du, ddt       : (B, D, L)      row r = b * D + d
 *   A                           : (D, N)
 *   Bt, Ct, dBt, dCt            : (B, G, L, N)   time-major, so the state loop is contiguous
 *   h0, last, dh0, dlast, dA    : (B, D, N)      h0, dlast may be NULL (zeros)
 *   ckpt                        : (B, D, n_chunks, N), the state before each chunk of K steps
 *
 *   h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t,   y_t = <h_t, C_t>
 *
 * The bias and softplus of dt, the D skip and the z gate are elementwise and stay in PyTorch.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
/* Decaying states reach subnormal floats, which cost ~100 cycles each on x86. The entry points
 * flush them to zero (FTZ | DAZ) for the calling thread only, and restore its setting after. */
#define FTZ_BEGIN                         \
    const unsigned int csr_ = _mm_getcsr(); \
    _mm_setcsr(csr_ | 0x8040);
#define FTZ_END _mm_setcsr(csr_);
#else /* aarch64 handles subnormals at full speed */
#define FTZ_BEGIN
#define FTZ_END
#endif

#define MAX_N 256
#define K 64 /* steps per checkpoint; the backward keeps K * N states of one row in L1 */

/* exp for x <= 88, branch-free so that compilers vectorize it: 2^k * p(r), |r| <= ln2 / 2. */
static inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

typedef struct {
    int64_t B, D, L, N, G;
    const float *u, *dt, *A, *Bt, *Ct, *h0;
} scan_args;

#define ROW_SETUP                                                                              \
    const int64_t b = r / D, d = r % D, g = d / (D / G);                                       \
    const float *A = s->A + d * NN;                                                            \
    const float *Bt = s->Bt + (b * G + g) * L * NN, *Ct = s->Ct + (b * G + g) * L * NN;        \
    const float *u = s->u + r * L, *dt = s->dt + r * L;

static inline __attribute__((always_inline)) void forward_rows(
    const scan_args *s, int64_t r0, int64_t r1, float *y, float *ckpt, float *last, const int64_t NN) {
    const int64_t L = s->L, D = s->D, G = s->G, nchunks = (L + K - 1) / K;
    float h[MAX_N];
    for (int64_t r = r0; r < r1; r++) {
        ROW_SETUP
        if (s->h0) memcpy(h, s->h0 + r * NN, NN * sizeof(float));
        else memset(h, 0, NN * sizeof(float));
        for (int64_t t = 0; t < L; t++) {
            if (t % K == 0) memcpy(ckpt + (r * nchunks + t / K) * NN, h, NN * sizeof(float));
            const float dtt = dt[t], dtu = dtt * u[t];
            const float *Bt_t = Bt + t * NN, *Ct_t = Ct + t * NN;
            float acc = 0.0f;
            for (int64_t n = 0; n < NN; n++) {
                h[n] = fast_exp(dtt * A[n]) * h[n] + dtu * Bt_t[n];
                acc += h[n] * Ct_t[n];
            }
            y[r * L + t] = acc;
        }
        memcpy(last + r * NN, h, NN * sizeof(float));
    }
}

static inline __attribute__((always_inline)) void backward_rows(
    const scan_args *s, int64_t r0, int64_t r1, const float *ckpt, const float *dy,
    const float *dlast, float *du, float *ddt, float *dA_rows, float *dBt, float *dCt, float *dh0,
    const int64_t NN) {
    const int64_t L = s->L, D = s->D, G = s->G, nchunks = (L + K - 1) / K;
    float hs[(K + 1) * MAX_N]; /* hs[j] = state before step t0 + j of the chunk */
    float as[K * MAX_N];       /* decay exp(dt A) of each step of the chunk */
    float dh[MAX_N], dA[MAX_N];
    for (int64_t r = r0; r < r1; r++) {
        ROW_SETUP
        float *dB = dBt + (b * G + g) * L * NN, *dC = dCt + (b * G + g) * L * NN;
        if (dlast) memcpy(dh, dlast + r * NN, NN * sizeof(float));
        else memset(dh, 0, NN * sizeof(float));
        memset(dA, 0, NN * sizeof(float));
        for (int64_t c = nchunks - 1; c >= 0; c--) {
            const int64_t t0 = c * K, t1 = (t0 + K < L) ? t0 + K : L;
            /* recompute the chunk's states from its checkpoint */
            memcpy(hs, ckpt + (r * nchunks + c) * NN, NN * sizeof(float));
            for (int64_t t = t0; t < t1; t++) {
                const float dtt = dt[t], dtu = dtt * u[t];
                const float *Bt_t = Bt + t * NN;
                float *hp = hs + (t - t0) * NN, *hn = hp + NN, *a = as + (t - t0) * NN;
                for (int64_t n = 0; n < NN; n++) {
                    a[n] = fast_exp(dtt * A[n]);
                    hn[n] = a[n] * hp[n] + dtu * Bt_t[n];
                }
            }
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const float dtt = dt[t], ut = u[t], gt = dy[r * L + t];
                const float *Bt_t = Bt + t * NN, *Ct_t = Ct + t * NN;
                float *dB_t = dB + t * NN, *dC_t = dC + t * NN;
                const float *hp = hs + (t - t0) * NN, *hn = hp + NN, *a = as + (t - t0) * NN;
                float dut = 0.0f, ddtt = 0.0f;
                for (int64_t n = 0; n < NN; n++) {
                    const float dhn = dh[n] + gt * Ct_t[n]; /* dLoss/dh_t */
                    const float da = dhn * hp[n] * a[n];    /* dLoss/d(dt A) */
                    dC_t[n] += gt * hn[n];
                    ddtt += da * A[n] + dhn * ut * Bt_t[n];
                    dA[n] += da * dtt;
                    dut += dhn * dtt * Bt_t[n];
                    dB_t[n] += dhn * dtt * ut;
                    dh[n] = dhn * a[n];
                }
                ddt[r * L + t] = ddtt;
                du[r * L + t] = dut;
            }
        }
        memcpy(dA_rows + r * NN, dA, NN * sizeof(float));
        if (dh0) memcpy(dh0 + r * NN, dh, NN * sizeof(float));
    }
}

/* Entry points. N = 16 (Mamba's default) gets a constant trip count so the state loop unrolls. */
int scan_chunk_steps(void) { return K; }
int scan_max_state(void) { return MAX_N; }

void scan_forward(const scan_args *s, int64_t r0, int64_t r1, float *y, float *ckpt, float *last) {
    FTZ_BEGIN
    if (s->N == 16) forward_rows(s, r0, r1, y, ckpt, last, 16);
    else forward_rows(s, r0, r1, y, ckpt, last, s->N);
    FTZ_END
}

void scan_backward(const scan_args *s, int64_t r0, int64_t r1, const float *ckpt, const float *dy,
                   const float *dlast, float *du, float *ddt, float *dA_rows, float *dBt,
                   float *dCt, float *dh0) {
    FTZ_BEGIN
    if (s->N == 16) backward_rows(s, r0, r1, ckpt, dy, dlast, du, ddt, dA_rows, dBt, dCt, dh0, 16);
    else backward_rows(s, r0, r1, ckpt, dy, dlast, du, ddt, dA_rows, dBt, dCt, dh0, s->N);
    FTZ_END
}
