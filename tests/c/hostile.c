/*
 * A host handed hostile inputs (tests/c/make_hostile.py writes them): every crafted bundle and
 * checkpoint directory must give the expected status, with a message, in a bounded time, and
 * the host must keep running after each. scripts/test.sh runs it under `ulimit -v`, so that an
 * allocation the library did not size by what a file really holds is a failed allocation: a
 * library that aborted on it would kill this process.
 *
 *   target/hostile CASES_DIR
 *
 * For each CASES_DIR/<name>.expect, the case CASES_DIR/<name> is opened: a `bundle-*` with
 * pdiff_sampler_open (then sampled once, when it opens), a `checkpoints-*` with
 * pdiff_dataset_load_dir (full builds only; skipped, and said so, in a serve-only build).
 */
#include "pdiff.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int failed = 0, passed = 0;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static pdiff_status open_bundle(const char *path) {
    pdiff_sampler_options so;
    pdiff_sampler_options_default(&so);
    so.provider = PDIFF_PROVIDER_CPU;
    so.intra_threads = 1;
    pdiff_sampler *s = NULL;
    pdiff_status st = pdiff_sampler_open(path, &so, &s);
    if (st != PDIFF_OK) return st;
    /* It opened: it must also sample. */
    size_t d = pdiff_sampler_param_count(s);
    float *out = malloc(2 * d * sizeof(float));
    if (!out) {
        pdiff_sampler_free(s);
        return PDIFF_ERR_OUT_OF_MEMORY;
    }
    pdiff_sample_options o;
    pdiff_sample_options_default(&o);
    o.ddim_steps = 2;
    st = pdiff_sampler_sample(s, &o, 2, out, 2 * d);
    free(out);
    pdiff_sampler_free(s);
    return st;
}

#if defined(PDIFF_FEATURE_TRAIN)
static pdiff_status load_checkpoints(const char *path) {
    pdiff_dataset *ds = NULL;
    pdiff_status st = pdiff_dataset_load_dir(path, NULL, 0, &ds);
    pdiff_dataset_free(ds);
    return st;
}
#endif

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASES_DIR\n", argv[0]);
        return 2;
    }
    DIR *dir = opendir(argv[1]);
    if (!dir) {
        perror(argv[1]);
        return 2;
    }
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 8 || strcmp(e->d_name + len - 7, ".expect") != 0) continue;
        char name[512], path[1024], expect_path[1024], expected[128] = {0};
        snprintf(name, sizeof name, "%.*s", (int)(len - 7), e->d_name);
        snprintf(path, sizeof path, "%s/%s", argv[1], name);
        snprintf(expect_path, sizeof expect_path, "%s/%s", argv[1], e->d_name);
        FILE *f = fopen(expect_path, "r");
        if (!f || !fgets(expected, sizeof expected, f)) {
            fprintf(stderr, "FAIL %s: cannot read %s\n", name, expect_path);
            failed++;
            if (f) fclose(f);
            continue;
        }
        fclose(f);
        expected[strcspn(expected, "\n")] = '\0';
        pdiff_status st;
        double t0 = now();
        if (strncmp(name, "bundle-", 7) == 0) {
            st = open_bundle(path);
        } else {
#if defined(PDIFF_FEATURE_TRAIN)
            st = load_checkpoints(path);
#else
            printf("skip %s: checkpoints need a full build\n", name);
            continue;
#endif
        }
        double seconds = now() - t0;
        const char *got = pdiff_status_name(st);
        const char *message = pdiff_last_error();
        if (!message) message = "";
        int ok = strcmp(got, expected) == 0 && (st == PDIFF_OK || (message && message[0])) && strstr(message, "panicked") == NULL &&
                 seconds < 120.0;
        printf("%s %s: %s in %.2f s%s%s\n", ok ? "ok  " : "FAIL", name, got, seconds, st == PDIFF_OK ? "" : ": ", st == PDIFF_OK ? "" : message);
        if (!ok) fprintf(stderr, "FAIL %s: expected %s, got %s\n", name, expected, got);
        ok ? passed++ : failed++;
    }
    closedir(dir);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
