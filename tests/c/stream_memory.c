/* Memory bound of pdiff_sampler_sample_tensors: generating n models straight into host tensors
 * must not hold n x D floats on the way.
 * Usage: stream_memory BUNDLE N MAX_GROWTH_MIB
 * The host asks for one tensor (the bundle's last) of n models into its own buffer, touched
 * before the measurement; the process's peak resident memory (VmHWM) must then grow by at most
 * MAX_GROWTH_MIB during the call (the library samples in bounded chunks and scatters them), and
 * the first models' values must equal pdiff_sampler_sample's with the same options. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "memory_bound.h"

int main(int argc, char **argv) {
    size_t n;
    long max_growth_kib;
    pdiff_sample_options opts;
    pdiff_sampler *s = NULL;
    int status = open_memory_test(argc, argv, 5, &n, &max_growth_kib, &s, &opts);
    if (status != 0) return status;
    const size_t d = pdiff_sampler_param_count(s), last = pdiff_sampler_tensor_count(s) - 1;
    const char *name = NULL;
    size_t ndim = 0, offset = 0;
    const size_t *shape = NULL;
    if (pdiff_sampler_tensor_info(s, last, &name, &ndim, &shape, &offset) != PDIFF_OK) return 1;
    size_t numel = 1;
    for (size_t i = 0; i < ndim; i++) numel *= shape[i];
    float *host = malloc(n * numel * sizeof(float));
    memset(host, 0, n * numel * sizeof(float)); /* the host's tensor exists before the call */
    pdiff_tensor_buffer buf = {name, 0, host, n * numel};
    /* Warm up the sessions so that the measurement sees the streaming call alone. */
    pdiff_tensor_buffer warm = {name, 0, host, 2 * numel};
    if (pdiff_sampler_sample_tensors(s, &opts, 2, &warm, 1) != PDIFF_OK) return 1;
    long before = peak_kib();
    pdiff_status st = pdiff_sampler_sample_tensors(s, &opts, n, &buf, 1);
    long growth = peak_kib() - before;
    int failed = 0;
    if (st != PDIFF_OK) {
        fprintf(stderr, "sample_tensors: %s\n", pdiff_last_error());
        failed++;
    }
    enum { CHECKED = 5 };
    float flat[CHECKED * 4096];
    if (d <= 4096 && n >= CHECKED) {
        if (pdiff_sampler_sample(s, &opts, CHECKED, flat, CHECKED * d) != PDIFF_OK) failed++;
        for (size_t i = 0; i < CHECKED; i++)
            if (memcmp(host + i * numel, flat + i * d + offset, numel * sizeof(float)) != 0) {
                fprintf(stderr, "model %zu: tensor '%s' differs from pdiff_sampler_sample's\n", i, name);
                failed++;
            }
    }
    printf("%zu models into the host's '%s' (D = %zu: %.0f MiB if held at once): peak resident memory grew %ld KiB (bound %ld KiB)\n",
           n, name, d, (double)n * d * 4 / (1 << 20), growth, max_growth_kib);
    if (growth > max_growth_kib) {
        fprintf(stderr, "sample_tensors held more than %ld KiB at once\n", max_growth_kib);
        failed++;
    }
    free(host);
    pdiff_sampler_free(s);
    printf("%d passed, %d failed\n", failed ? 0 : 1, failed);
    return failed ? 1 : 0;
}
