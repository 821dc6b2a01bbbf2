/*
 * Reference values for the cross-language checks of the bindings (scripts/test.sh): open a
 * bundle with the CPU provider, sample n = 3 vectors with seed 42, DDIM 10 steps, and write
 * them as raw little-endian f32 (3 x D floats, row-major) to OUT.
 *
 *   gcc -Wall -Werror -Iinclude tests/c/sample_dump.c -Ltarget/release -lpdiff \
 *       -Wl,-rpath,$PWD/target/release -o target/sample_dump
 *   target/sample_dump BUNDLE_DIR OUT_FILE
 *
 * The C++ (bindings/cpp/test_pdiff.cpp) and Python (bindings/python/tests) tests sample the
 * same bundle with the same settings and must reproduce OUT bit for bit.
 */
#include "pdiff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { N = 3, SEED = 42, STEPS = 10 };

static int fail(const char *what, pdiff_status st) {
    fprintf(stderr, "sample_dump: %s failed with status %d: %s\n", what, (int)st, pdiff_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s BUNDLE_DIR OUT_FILE\n", argv[0]);
        return 2;
    }
    if (pdiff_abi_version() != PDIFF_ABI_VERSION) {
        fprintf(stderr, "sample_dump: ABI %u, header %u\n", pdiff_abi_version(), PDIFF_ABI_VERSION);
        return 1;
    }
    /* The file format is little-endian f32: refuse to write anything else. */
    const unsigned one = 1;
    if (*(const unsigned char *)&one != 1 || sizeof(float) != 4) {
        fprintf(stderr, "sample_dump: this host is not little-endian IEEE f32\n");
        return 1;
    }

    pdiff_sampler_options so;
    pdiff_status st = pdiff_sampler_options_default(&so);
    if (st != PDIFF_OK) return fail("pdiff_sampler_options_default", st);
    so.provider = PDIFF_PROVIDER_CPU;
    pdiff_sampler *s = NULL;
    st = pdiff_sampler_open(argv[1], &so, &s);
    if (st != PDIFF_OK) return fail("pdiff_sampler_open", st);

    pdiff_sample_options opts;
    pdiff_sample_options_default(&opts);
    opts.sampler = PDIFF_SAMPLER_DDIM;
    opts.ddim_steps = STEPS;
    opts.seed = SEED;
    const size_t d = pdiff_sampler_param_count(s);
    float *out = malloc(N * d * sizeof(float));
    if (!out) {
        pdiff_sampler_free(s);
        fprintf(stderr, "sample_dump: out of memory\n");
        return 1;
    }
    st = pdiff_sampler_sample(s, &opts, N, out, N * d);
    pdiff_sampler_free(s);
    if (st != PDIFF_OK) {
        free(out);
        return fail("pdiff_sampler_sample", st);
    }

    FILE *f = fopen(argv[2], "wb");
    int ok = f != NULL && fwrite(out, sizeof(float), N * d, f) == N * d;
    if (f && fclose(f) != 0) ok = 0;
    free(out);
    if (!ok) {
        perror(argv[2]);
        return 1;
    }
    printf("sample_dump: %d x %zu floats (seed %d, DDIM %d) -> %s\n", N, d, SEED, STEPS, argv[2]);
    return 0;
}
