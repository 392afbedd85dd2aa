/* Choosing the next token, and scoring targets, on the CPU: compile/kernels/sampling.py done
   sequentially, the same algorithms step for step so that a seeded run repeats and, for the same
   logits, picks the token the GPU picks up to float-rounding ties (sums here go in 4 lanes, there
   in a tree). Logits are f32 (n) per token; sampling's top-k and top-p cut-offs are thresholds
   found by bisection, as on the GPU, rather than by a sort. */
#include "vmath.h"

#define BISECT 30

/* The largest of x[0:n] and `floor`, NaNs skipped (pmax keeps its first operand when a comparison
   with NaN fails). */
static float row_max(const float *x, int n, float floor) {
    const int full = n & ~3;
    v128_t top = wasm_f32x4_splat(floor);
    for (int i = 0; i < full; i += 4)
        top = wasm_f32x4_pmax(top, wasm_v128_load(x + i));
    float mx = hmax(top);
    for (int i = full; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* The lowest index among the largest logits, 0 if none; a NaN never wins. */
EXPORT(cpu_argmax) void cpu_argmax(const float *logits, int32_t *out, int n) {
    const int full = n & ~3;
    const float best = row_max(logits, n, -__builtin_inff());
    /* then its first index: all NaN leaves best = -inf, which only a -inf logit equals */
    const v128_t bv = wasm_f32x4_splat(best);
    for (int i = 0; i < full; i += 4) {
        const int hit = wasm_i32x4_bitmask(wasm_f32x4_eq(wasm_v128_load(logits + i), bv));
        if (hit) {
            out[0] = i + __builtin_ctz(hit);
            return;
        }
    }
    for (int i = full; i < n; i++)
        if (logits[i] == best) {
            out[0] = i;
            return;
        }
    out[0] = 0;
}

static inline void penalize1(float *logits, int32_t id, int n, float penalty) {
    if (id >= 0 && id < n)
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
}

/* Repetition penalty (Hugging Face / CTRL): each id in seen[0:count] gets its logit divided by
   `penalty` if positive, multiplied if not; so does ids[0], the token this step runs, unless it
   is among them (the runtime can submit a step before it has read back the token before). The
   runtime keeps `seen` distinct, as the GPU kernel assumes; ids outside [0, n) are ignored. */
EXPORT(cpu_penalize) void cpu_penalize(float *logits, const int32_t *seen, const int32_t *ids, int n, int count,
                                       float penalty) {
    int fresh = 1;
    for (int i = 0; i < count; i++) {
        penalize1(logits, seen[i], n, penalty);
        fresh &= seen[i] != ids[0];
    }
    if (fresh)
        penalize1(logits, ids[0], n, penalty);
}

/* The count (or, with `mass`, the sum) of the probs >= tau. */
static float kept(const float *probs, int n, float tau, int mass) {
    const int full = n & ~3;
    const v128_t tv = wasm_f32x4_splat(tau), one = wasm_f32x4_splat(1.0f);
    v128_t acc = wasm_f32x4_splat(0);
    for (int i = 0; i < full; i += 4) {
        const v128_t p = wasm_v128_load(probs + i);
        acc = wasm_f32x4_add(acc, wasm_v128_and(wasm_f32x4_ge(p, tv), mass ? p : one));
    }
    float sum = hsum(acc);
    for (int i = full; i < n; i++)
        sum += probs[i] >= tau ? (mass ? probs[i] : 1.0f) : 0.0f;
    return sum;
}

/* Raise cut[0] (bisecting [cut[0], cut[1]]) as far as the count, or the mass, of the probs at or
   above it stays >= goal: 30 halvings, a 2^-30 resolution on probabilities in [0, 1]. */
static void bisect(const float *probs, int n, float cut[2], float goal, int mass) {
    for (int it = 0; it < BISECT; it++) {
        const float mid = (cut[0] + cut[1]) * 0.5f;
        cut[kept(probs, n, mid, mass) >= goal ? 0 : 1] = mid;
    }
}

/* Temperature, top-k, then top-p on what top-k kept (top_k <= 0 or >= n and top_p >= 1 keep
   all), then an inverse-CDF draw in vocabulary order with the uniform of a PCG-style hash of
   (seed, step). probs (n) receives e^((logit - max) / temperature), the largest exactly 1;
   temperature > 0 (greedy decoding is cpu_argmax). */
EXPORT(cpu_sample) void cpu_sample(const float *logits, float *probs, int32_t *out, int n, float temperature,
                                   int top_k, float top_p, uint32_t seed, uint32_t step) {
    /* the floor keeps all -inf logits from giving -inf - -inf = NaN */
    const int full = n & ~3;
    const float mx = row_max(logits, n, -3.4e38f);
    const v128_t mv = wasm_f32x4_splat(mx), tv = wasm_f32x4_splat(temperature);
    for (int i = 0; i < full; i += 4)
        wasm_v128_store(probs + i, exp4(wasm_f32x4_div(wasm_f32x4_sub(wasm_v128_load(logits + i), mv), tv)));
    for (int i = full; i < n; i++)
        probs[i] = exp1((logits[i] - mx) / temperature);

    float cut[2] = {0.0f, 1.0f};
    if (top_k > 0 && top_k < n)
        bisect(probs, n, cut, (float)top_k, 0);
    const float goal = kept(probs, n, cut[0], 1) * top_p;
    cut[1] = 1.0f;
    if (top_p < 1.0f)
        bisect(probs, n, cut, goal, 1);

    uint32_t h = seed * 747796405u + step * 2891336453u + 1u;
    h = ((h >> ((h >> 28) + 4)) ^ h) * 277803737u;
    h = (h >> 22) ^ h;
    const float u = (float)(h >> 8) * (1.0f / (1 << 24)) * kept(probs, n, cut[0], 1);
    float acc = 0;
    for (int i = 0; i < n; i++)
        if (probs[i] >= cut[0] && (acc += probs[i]) > u) {
            out[0] = i;
            return;
        }
    /* rounding can leave the draw past the last kept token: take the most likely one (none, -1,
       only for NaN logits, as on the GPU) */
    for (int i = 0; i < n; i++)
        if (probs[i] == 1.0f) {
            out[0] = i;
            return;
        }
    out[0] = -1;
}

/* Perplexity: out[t] = logsumexp(logits[t]) - logits[t, targets[t]] (target clamped to [0, n)). */
EXPORT(cpu_nll) void cpu_nll(const float *logits, const int32_t *targets, float *out, int m, int n) {
    const int full = n & ~3;
    for (int t = 0; t < m; t++, logits += n) {
        const float mx = row_max(logits, n, -3.4e38f);
        const v128_t mv = wasm_f32x4_splat(mx);
        v128_t acc = wasm_f32x4_splat(0);
        for (int i = 0; i < full; i += 4)
            acc = wasm_f32x4_add(acc, exp4(wasm_f32x4_sub(wasm_v128_load(logits + i), mv)));
        float sum = hsum(acc);
        for (int i = full; i < n; i++)
            sum += exp1(logits[i] - mx);
        const int target = targets[t] < 0 ? 0 : targets[t] >= n ? n - 1 : targets[t];
        out[t] = log1(sum) + mx - logits[target];
    }
}
