/* Leak check of the C API: many open -> sample -> free cycles on one bundle.
 * Usage: leak_cycles BUNDLE CYCLES [MAX_GROWTH_KIB]
 * Run natively for 1,000 cycles it checks that resident memory stops growing (the growth over
 * the second half of the cycles must stay under MAX_GROWTH_KIB); run under valgrind for a few
 * cycles it lets memcheck prove nothing is definitely lost. */
#include <stdio.h>
#include <stdlib.h>
#include "memory_bound.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BUNDLE CYCLES [MAX_GROWTH_KIB]\n", argv[0]);
        return 2;
    }
    const char *bundle = argv[1];
    int cycles = atoi(argv[2]);
    long max_growth = argc > 3 ? atol(argv[3]) : -1;
    long rss_half = 0;
    pdiff_sampler_options so;
    pdiff_sample_options opts;
    if (pdiff_sampler_options_default(&so) != PDIFF_OK || pdiff_sample_options_default(&opts) != PDIFF_OK) return 1;
    so.provider = PDIFF_PROVIDER_CPU;
    so.intra_threads = 1;
    opts.sampler = PDIFF_SAMPLER_DDIM;
    opts.ddim_steps = 2;
    for (int i = 0; i < cycles; i++) {
        pdiff_sampler *s = NULL;
        if (pdiff_sampler_open(bundle, &so, &s) != PDIFF_OK) {
            fprintf(stderr, "cycle %d: open: %s\n", i, pdiff_last_error());
            return 1;
        }
        size_t d = pdiff_sampler_param_count(s);
        float *buf = malloc(2 * d * sizeof(float));
        opts.seed = (uint64_t)i;
        if (pdiff_sampler_sample(s, &opts, 2, buf, 2 * d) != PDIFF_OK) {
            fprintf(stderr, "cycle %d: sample: %s\n", i, pdiff_last_error());
            return 1;
        }
        free(buf);
        pdiff_sampler_free(s);
        if (i == cycles / 2) rss_half = status_kib("VmRSS:");
    }
    long growth = status_kib("VmRSS:") - rss_half;
    printf("%d open/sample/free cycles; resident memory grew %ld KiB over the second half\n", cycles, growth);
    if (max_growth >= 0 && growth > max_growth) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    printf("1 passed, 0 failed\n");
    return 0;
}
