/* Shared by the memory C tests: the process's resident memory (leak_cycles.c, and the
 * memory-bound tests best_of_n_memory.c and stream_memory.c), and for the memory-bound tests
 * their command line (BUNDLE N MAX_GROWTH_MIB) and a CPU sampler on one thread with 2 DDIM
 * steps. Functions are static inline: a test that uses a part compiles without warnings. */
#ifndef PDIFF_TESTS_MEMORY_BOUND_H
#define PDIFF_TESTS_MEMORY_BOUND_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pdiff.h"

/* The field `name` ("VmRSS:", "VmHWM:") of /proc/self/status in KiB, -1 when unknown. */
static inline long status_kib(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t len = strlen(name);
    long kib = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0) kib = strtol(line + len, NULL, 10);
    fclose(f);
    return kib;
}

/* Peak resident memory (VmHWM) in KiB, -1 when unknown. */
static inline long peak_kib(void) {
    return status_kib("VmHWM:");
}

/* Parse BUNDLE N MAX_GROWTH_MIB, open BUNDLE on the CPU (one thread) and set `opts` to 2 DDIM
 * steps with `seed`. Returns 0, or the exit status to return (2: usage, 1: open failed). */
static inline int open_memory_test(int argc, char **argv, unsigned long long seed, size_t *n, long *max_growth_kib,
                                   pdiff_sampler **sampler, pdiff_sample_options *opts) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE N MAX_GROWTH_MIB\n", argv[0]);
        return 2;
    }
    *n = (size_t)strtoull(argv[2], NULL, 10);
    *max_growth_kib = atol(argv[3]) * 1024;
    pdiff_sampler_options so;
    pdiff_sampler_options_default(&so);
    pdiff_sample_options_default(opts);
    so.provider = PDIFF_PROVIDER_CPU;
    so.intra_threads = 1;
    opts->ddim_steps = 2;
    opts->seed = seed;
    if (pdiff_sampler_open(argv[1], &so, sampler) != PDIFF_OK) {
        fprintf(stderr, "open: %s\n", pdiff_last_error());
        return 1;
    }
    return 0;
}
#endif
