/* Memory bound of pdiff_sampler_best_of_n: a large n with a small D must not allocate n x D.
 * Usage: best_of_n_memory BUNDLE N MAX_GROWTH_MIB
 * Measures the process's peak resident memory (VmHWM) before and after one best-of-N call and
 * fails when it grew by more than MAX_GROWTH_MIB, i.e. when the candidates were held at once
 * (n x D floats) instead of being sampled and scored in bounded chunks. It also checks that the
 * best candidate returned is the one the scores name: candidate `index` of
 * pdiff_sampler_sample with the same options. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "memory_bound.h"

/* Higher is better: the negated squared norm (any deterministic function of the vector). */
static double score(void *calls, const float *params, size_t len) {
    double s = 0;
    for (size_t i = 0; i < len; i++) s -= (double)params[i] * params[i];
    ++*(size_t *)calls;
    return s;
}

int main(int argc, char **argv) {
    size_t n;
    long max_growth_kib;
    pdiff_sample_options opts;
    pdiff_sampler *s = NULL;
    int status = open_memory_test(argc, argv, 11, &n, &max_growth_kib, &s, &opts);
    if (status != 0) return status;
    const size_t d = pdiff_sampler_param_count(s);
    float *best = malloc(d * sizeof(float));
    float *again = malloc(d * sizeof(float));
    size_t index = 0, calls = 0;
    double best_score = 0;
    /* Warm up the sessions so that the measurement sees best-of-N alone. */
    if (pdiff_sampler_best_of_n(s, &opts, 2, score, &calls, best, d, &index, &best_score) != PDIFF_OK) return 1;
    calls = 0;
    long before = peak_kib();
    pdiff_status st = pdiff_sampler_best_of_n(s, &opts, n, score, &calls, best, d, &index, &best_score);
    long growth = peak_kib() - before;
    int failed = 0;
    if (st != PDIFF_OK) {
        fprintf(stderr, "best_of_n: %s\n", pdiff_last_error());
        failed++;
    }
    if (calls != n) {
        fprintf(stderr, "score was called %zu times for n = %zu\n", calls, n);
        failed++;
    }
    /* The winner is candidate `index` of the same batch: sampling only rows up to it gives it. */
    float *rows = malloc((index + 1) * d * sizeof(float));
    if (pdiff_sampler_sample(s, &opts, index + 1, rows, (index + 1) * d) != PDIFF_OK ||
        memcmp(rows + index * d, best, d * sizeof(float)) != 0) {
        fprintf(stderr, "the best parameters are not candidate %zu of the same options\n", index);
        failed++;
    }
    size_t c2 = 0;
    double s2 = 0;
    score(&c2, best, d);
    s2 = score(&c2, best, d);
    if (s2 != best_score) {
        fprintf(stderr, "best_score %g is not the score of the parameters returned (%g)\n", best_score, s2);
        failed++;
    }
    printf("best of %zu (D = %zu, %.0f MiB if held at once): #%zu, peak resident memory grew %ld KiB (bound %ld KiB)\n", n, d,
           (double)n * d * 4 / (1 << 20), index, growth, max_growth_kib);
    if (growth > max_growth_kib) {
        fprintf(stderr, "best-of-N held more than %ld KiB at once\n", max_growth_kib);
        failed++;
    }
    free(rows);
    free(best);
    free(again);
    pdiff_sampler_free(s);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed);
    return failed ? 1 : 0;
}
