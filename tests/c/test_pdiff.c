/*
 * C test of libpdiff's stable ABI (include/pdiff.h), as a host program would use it.
 *
 *   gcc -Wall -Werror -Iinclude tests/c/test_pdiff.c -Ltarget/release -lpdiff \
 *       -Wl,-rpath,$PWD/target/release -pthread -o target/test_pdiff
 *   target/test_pdiff                  # everything: dataset, training, export, sampling, threads
 *   target/test_pdiff --export DIR     # the same, and keep the trained bundle at DIR
 *   target/test_pdiff --bundle DIR     # no training: dataset checks, then the sampler part on an
 *                                      # existing bundle (fast enough for valgrind)
 *   target/test_pdiff --bundle DIR --threads-only
 *                                      # only the thread test on an existing bundle: what
 *                                      # scripts/test.sh runs under ThreadSanitizer
 *
 * Against a serve-only pdiff.h (pdiff_features.h without PDIFF_FEATURE_TRAIN) the training part
 * is left out and --bundle is required.
 *
 * Prints "N passed, 0 failed" and exits nonzero on any failure.
 */
#include "pdiff.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed = 0, failed = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " (last error: %s)\n", pdiff_last_error());    \
        }                                                                  \
    } while (0)

/* A call expected to fail with `want`, leaving a non-empty last error. */
#define CHECK_FAILS(call, want)                                                              \
    do {                                                                                     \
        pdiff_status st_ = (call);                                                           \
        CHECK(st_ == (want), "%s returned %d, expected %d", #call, (int)st_, (int)(want));   \
        CHECK(pdiff_last_error() != NULL && pdiff_last_error()[0] != '\0',                   \
              "no last error after %s", #call);                                              \
    } while (0)

#define CHECK_OK(call)                                                                     \
    do {                                                                                   \
        pdiff_status st_ = (call);                                                         \
        CHECK(st_ == PDIFF_OK, "%s returned %d", #call, (int)st_);                         \
    } while (0)

enum { K = 6, ROWS = 4, COLS = 8, D = ROWS * COLS + ROWS };

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

#if defined(PDIFF_FEATURE_TRAIN)
/* Deterministic pseudo-random value in [-1, 1). */
static float lcg(unsigned *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}
#endif /* PDIFF_FEATURE_TRAIN */

/* ---- files, for the output cases: nothing that existed may change ---- */
static void write_file(const char *path, const char *content) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(content, f) < 0 || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* The whole content of a file (malloc'd, NUL-terminated; *len its size), or NULL. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = 2 * cap + 4096 + 1;
            char *b = realloc(buf, cap);
            if (!b) break;
            buf = b;
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096) break;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static int file_is(const char *path, const char *content) {
    char *got = read_file(path, NULL);
    int same = got != NULL && strcmp(got, content) == 0;
    free(got);
    return same;
}

#if defined(PDIFF_FEATURE_TRAIN)
static int file_contains(const char *path, const char *needle) {
    char *got = read_file(path, NULL);
    int found = got != NULL && strstr(got, needle) != NULL;
    free(got);
    return found;
}
#endif /* PDIFF_FEATURE_TRAIN */

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static int last_error_says(const char *words) {
    return strstr(pdiff_last_error(), words) != NULL;
}

/* DIR with a user's file in it: DIR/notes.txt. */
static void make_foreign_dir(const char *dir, char *notes, size_t notes_len) {
    mkdir(dir, 0755);
    snprintf(notes, notes_len, "%s/notes.txt", dir);
    write_file(notes, "my notes, not libpdiff's");
}

#if defined(PDIFF_FEATURE_TRAIN)
/* ---- progress callbacks ---- */
typedef struct {
    int calls, ae_calls, diffusion_calls;
    size_t last_step, last_total;
    int bad;
} progress_state;

static int count_progress(void *user_data, const char *stage, size_t step, size_t total, double loss) {
    progress_state *p = (progress_state *)user_data;
    p->calls++;
    if (strcmp(stage, "autoencoder") == 0) p->ae_calls++;
    else if (strcmp(stage, "diffusion") == 0) p->diffusion_calls++;
    else p->bad++;
    if (step < 1 || step > total || !(loss == loss)) p->bad++;
    p->last_step = step;
    p->last_total = total;
    return 0;
}

static int cancel_progress(void *user_data, const char *stage, size_t step, size_t total, double loss) {
    (void)stage; (void)step; (void)total; (void)loss;
    int *calls = (int *)user_data;
    (*calls)++;
    return 1; /* stop at once */
}

#endif /* PDIFF_FEATURE_TRAIN */

/* ---- best-of-n scoring: -sum of squares ---- */
static double neg_sum_sq(const float *p, size_t len) {
    double s = 0.0;
    for (size_t i = 0; i < len; i++) s += (double)p[i] * (double)p[i];
    return -s;
}

typedef struct {
    int calls;
    size_t len;
} score_state;

static double score_cb(void *user_data, const float *params, size_t len) {
    score_state *s = (score_state *)user_data;
    s->calls++;
    s->len = len;
    return neg_sum_sq(params, len);
}

/* ---- sampling progress: steps must rise to total; cancel at step `cancel_at` (0: never) ---- */
typedef struct {
    int calls, bad;
    size_t last_step, total, cancel_at;
} sample_progress_state;

static int sample_progress(void *user_data, size_t step, size_t total) {
    sample_progress_state *p = (sample_progress_state *)user_data;
    p->calls++;
    if (step <= p->last_step || step > total || (p->total != 0 && total != p->total)) p->bad++;
    p->last_step = step;
    p->total = total;
    return p->cancel_at != 0 && step >= p->cancel_at;
}

/* ---- threads: 8 threads share one sampler handle ----
 * Each thread samples with its own seed (twice: the second call must repeat the first), reads
 * the handle's read-only accessors, and makes a failing call whose message must be its own
 * (pdiff_last_error is per thread). Run under ThreadSanitizer by scripts/test.sh. */
enum { THREADS = 8, PER_THREAD = 2, THREAD_STEPS = 10 };
typedef struct {
    const pdiff_sampler *sampler;
    uint64_t seed;
    float out[PER_THREAD * D], again[PER_THREAD * D];
    pdiff_status status, status_again, status_bad;
    int accessors_ok, own_error;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *job = (thread_job *)arg;
    pdiff_sample_options so;
    pdiff_sample_options_default(&so);
    so.ddim_steps = THREAD_STEPS;
    so.seed = job->seed;
    job->status = pdiff_sampler_sample(job->sampler, &so, PER_THREAD, job->out, PER_THREAD * D);
    const char *name = NULL;
    size_t ndim = 0, offset = 0;
    const size_t *shape = NULL;
    job->accessors_ok = pdiff_sampler_param_count(job->sampler) == D && pdiff_sampler_tensor_count(job->sampler) == 2 &&
                        strcmp(pdiff_sampler_backend(job->sampler), "onnxruntime-cpu") == 0 &&
                        pdiff_sampler_tensor_info(job->sampler, 1, &name, &ndim, &shape, &offset) == PDIFF_OK &&
                        strcmp(name, "b") == 0 && ndim == 1 && shape[0] == ROWS && offset == ROWS * COLS;
    /* A buffer one float short: the error names this thread's own numbers. */
    size_t short_len = PER_THREAD * D - 1 - (size_t)(job->seed % 4);
    job->status_bad = pdiff_sampler_sample(job->sampler, &so, PER_THREAD, job->again, short_len);
    char want[64];
    snprintf(want, sizeof want, "out_len is %zu floats", short_len);
    job->own_error = strstr(pdiff_last_error(), want) != NULL;
    job->status_again = pdiff_sampler_sample(job->sampler, &so, PER_THREAD, job->again, PER_THREAD * D);
    return NULL;
}

/* THREADS threads sampling one handle at once give exactly the sequential results. */
static void thread_tests(pdiff_sampler *s) {
    static thread_job jobs[THREADS];
    static float expect[THREADS][PER_THREAD * D];
    pdiff_sample_options seq;
    pdiff_sample_options_default(&seq);
    seq.ddim_steps = THREAD_STEPS;
    for (int i = 0; i < THREADS; i++) {
        seq.seed = 1000 + (uint64_t)i;
        CHECK_OK(pdiff_sampler_sample(s, &seq, PER_THREAD, expect[i], PER_THREAD * D));
    }
    pthread_t tid[THREADS];
    int started[THREADS] = {0};
    for (int i = 0; i < THREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].sampler = s;
        jobs[i].seed = 1000 + (uint64_t)i;
        jobs[i].status = jobs[i].status_again = jobs[i].status_bad = PDIFF_ERR_PANIC;
        started[i] = pthread_create(&tid[i], NULL, thread_main, &jobs[i]) == 0;
        CHECK(started[i], "pthread_create %d", i);
    }
    for (int i = 0; i < THREADS; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        CHECK(jobs[i].status == PDIFF_OK && jobs[i].status_again == PDIFF_OK, "thread %d status %d, %d", i,
              (int)jobs[i].status, (int)jobs[i].status_again);
        CHECK(memcmp(jobs[i].out, expect[i], sizeof expect[i]) == 0, "thread %d equals sequential", i);
        CHECK(memcmp(jobs[i].again, expect[i], sizeof expect[i]) == 0, "thread %d: second call equals sequential", i);
        CHECK(jobs[i].accessors_ok, "thread %d: accessors", i);
        CHECK(jobs[i].status_bad == PDIFF_ERR_BUFFER_TOO_SMALL && jobs[i].own_error,
              "thread %d: its own error (status %d)", i, (int)jobs[i].status_bad);
    }
    CHECK(memcmp(expect[0], expect[1], sizeof expect[0]) != 0, "distinct seeds differ");
}

/* --threads-only: open the bundle, run the thread test, free. */
static void threads_only(const char *bundle) {
    pdiff_sampler_options sopts;
    CHECK_OK(pdiff_sampler_options_default(&sopts));
    sopts.provider = PDIFF_PROVIDER_CPU;
    sopts.intra_threads = 1;
    pdiff_sampler *s = NULL;
    CHECK_OK(pdiff_sampler_open(bundle, &sopts, &s));
    if (!s) return;
    thread_tests(s);
    pdiff_sampler_free(s);
}

#if defined(PDIFF_FEATURE_TRAIN)
/* ---- part 1: dataset, training, export ---- */
static void fill_dataset(float *data) {
    unsigned st = 12345u;
    float base[D], pert[D];
    for (int j = 0; j < D; j++) base[j] = 0.5f * lcg(&st);
    for (int j = 0; j < D; j++) pert[j] = lcg(&st);
    for (int i = 0; i < K; i++)
        for (int j = 0; j < D; j++) data[i * D + j] = base[j] + 0.02f * (float)(i + 1) * pert[j];
}

/* The C test's training: 20 + 20 steps on the CPU, batch 4, seed 3 (the C++ and Python tests
   train the same, and reproduce this program's samples bit for bit). */
static void small_training(pdiff_train_options *o) {
    o->ae_steps = 20;
    o->diffusion_steps = 20;
    o->batch_size = 4;
    o->seed = 3;
    o->device = PDIFF_DEVICE_CPU;
}

/* With train = 0 (valgrind runs): everything but the real training and export. */
static void export_output_cases(const pdiff_generator *gen, const char *bundle, const char *tmp);

static int dataset_and_training(const char *bundle, const char *tmp, int train) {
    static const size_t w_shape[2] = {ROWS, COLS};
    static const size_t b_shape[1] = {ROWS};
    const pdiff_tensor_decl layout[2] = {{"w", 2, w_shape}, {"b", 1, b_shape}};
    static float data[K * D];
    fill_dataset(data);

    pdiff_dataset *ds = NULL;
    /* misuse first */
    CHECK_FAILS(pdiff_dataset_from_memory(layout, 2, data, K, NULL), PDIFF_ERR_NULL_POINTER);
    CHECK(strstr(pdiff_last_error(), "out") != NULL, "message names the argument: %s", pdiff_last_error());
    CHECK_FAILS(pdiff_dataset_from_memory(NULL, 2, data, K, &ds), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_dataset_from_memory(layout, 2, NULL, K, &ds), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_dataset_from_memory(layout, 0, data, K, &ds), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_FAILS(pdiff_dataset_from_memory(layout, 2, data, 1, &ds), PDIFF_ERR_INVALID_ARGUMENT); /* K = 1 */
    CHECK(ds == NULL, "out untouched on error");
    {
        const pdiff_tensor_decl dup[2] = {{"w", 2, w_shape}, {"w", 1, b_shape}};
        CHECK_FAILS(pdiff_dataset_from_memory(dup, 2, data, K, &ds), PDIFF_ERR_INVALID_ARGUMENT);
        const pdiff_tensor_decl noshape[1] = {{"w", 2, NULL}};
        CHECK_FAILS(pdiff_dataset_from_memory(noshape, 1, data, K, &ds), PDIFF_ERR_NULL_POINTER);
        float bad[K * D];
        memcpy(bad, data, sizeof bad);
        bad[3 * D + 5] = NAN;
        CHECK_FAILS(pdiff_dataset_from_memory(layout, 2, bad, K, &ds), PDIFF_ERR_CHECKPOINT);
    }
    CHECK_FAILS(pdiff_dataset_load_dir("/nonexistent/pdiff-ckpts", NULL, 0, &ds), PDIFF_ERR_IO);
    CHECK_FAILS(pdiff_dataset_load_dir(NULL, NULL, 0, &ds), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_dataset_load_dir("/tmp", NULL, 3, &ds), PDIFF_ERR_NULL_POINTER);
    CHECK(pdiff_dataset_k(NULL) == 0, "k(NULL)");

    CHECK_OK(pdiff_dataset_from_memory(layout, 2, data, K, &ds));
    if (!ds) return 0;
    CHECK(pdiff_dataset_k(ds) == K, "k = %zu", pdiff_dataset_k(ds));
    CHECK(pdiff_dataset_param_count(ds) == D, "D = %zu", pdiff_dataset_param_count(ds));
    /* K = 6 is below the 50 checkpoints recommended: one warning, owned by the dataset. */
    CHECK(pdiff_dataset_warning_count(ds) == 1, "warnings: %zu", pdiff_dataset_warning_count(ds));
    const char *few = pdiff_dataset_warning(ds, 0);
    CHECK(few != NULL && strncmp(few, "K = 6 checkpoints is few", 24) == 0, "warning: %s", few ? few : "(null)");
    CHECK(pdiff_dataset_warning(ds, 1) == NULL, "warning out of range is NULL");
    CHECK(pdiff_dataset_warning(NULL, 0) == NULL && pdiff_dataset_warning_count(NULL) == 0, "warnings of NULL");
    char dataset_warning[1024];
    snprintf(dataset_warning, sizeof dataset_warning, "%s", few ? few : "");

    /* options */
    pdiff_train_options opts;
    CHECK_FAILS(pdiff_train_options_default(NULL), PDIFF_ERR_NULL_POINTER);
    CHECK_OK(pdiff_train_options_default(&opts));
    CHECK(opts.struct_size == sizeof opts, "struct_size %zu", opts.struct_size);
    CHECK(opts.preset == PDIFF_PRESET_AUTO && opts.device == PDIFF_DEVICE_AUTO && opts.progress == NULL && opts.threads == 0, "defaults");
    small_training(&opts);

    pdiff_generator *gen = NULL;
    pdiff_train_options wrong = opts;
    wrong.struct_size = sizeof wrong + 8;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_STRUCT_SIZE);
    wrong.struct_size = offsetof(pdiff_train_options, explicit_fields) + 4; /* between two layouts */
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_STRUCT_SIZE);
    wrong.struct_size = 0;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_STRUCT_SIZE);
    wrong = opts;
    wrong.preset = 7;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(pdiff_last_error(), "pdiff_generator_train: options.preset is 7: not a pdiff_preset value (known: "
                                      "PDIFF_PRESET_COMPACT = 0, PDIFF_PRESET_PAPER = 1, PDIFF_PRESET_CHUNKED = 2, "
                                      "PDIFF_PRESET_AUTO = 3)") == 0,
          "preset error names the field and the values");
    wrong = opts;
    wrong.reconstruction_weighting = 2;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("pdiff_generator_train: options.reconstruction_weighting is 2: not a pdiff_reconstruction_weighting "
                          "value (known: PDIFF_RECONSTRUCTION_UNIFORM = 0, PDIFF_RECONSTRUCTION_PER_TENSOR = 1)"),
          "weighting error names the field and the values");
    wrong = opts;
    wrong.device = 3;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("options.device is 3"), "device error");
    /* An explicit 0: refused where 0 is no valid value, with the field named; an unknown bit
       is refused too. (latent_noise = 0 explicit trains: below.) */
    CHECK(opts.explicit_fields == 0, "no explicit field by default");
    wrong = opts;
    wrong.ae_lr = 0.0;
    wrong.explicit_fields = PDIFF_TRAIN_EXPLICIT_AE_LR;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("ae_lr"), "explicit ae_lr 0 names the field");
    wrong = opts;
    wrong.diffusion_steps = 0;
    wrong.explicit_fields = PDIFF_TRAIN_EXPLICIT_DIFFUSION_STEPS;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("options.diffusion_steps is 0"), "explicit diffusion_steps 0 names the field");
    wrong = opts;
    wrong.batch_size = 0;
    wrong.explicit_fields = PDIFF_TRAIN_EXPLICIT_BATCH_SIZE;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("batch_size"), "explicit batch_size 0 names the field");
    wrong = opts;
    wrong.explicit_fields = PDIFF_TRAIN_EXPLICIT_LATENT_NOISE | ((uint64_t)1 << 40);
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("options.explicit_fields 0x10000000020: unknown bits 0x10000000000"), "unknown explicit bit");
    wrong = opts;
    wrong.latent_noise = -1.0;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    wrong = opts;
    wrong.threads = 1025;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("threads"), "too many threads names the field");
    CHECK_FAILS(pdiff_generator_train(NULL, &opts, &gen), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_generator_train(ds, &opts, NULL), PDIFF_ERR_NULL_POINTER);

    int cancel_calls = 0;
    wrong = opts;
    wrong.progress = cancel_progress;
    wrong.user_data = &cancel_calls;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_CANCELLED);
    CHECK(cancel_calls == 1, "cancelled after the first step, %d calls", cancel_calls);
    CHECK(gen == NULL, "no generator after cancel");
    /* A host built against the layout before explicit_fields: its struct_size is accepted and
       the field (garbage here) never read: training starts (and is cancelled). */
    wrong.struct_size = offsetof(pdiff_train_options, explicit_fields);
    wrong.explicit_fields = ~(uint64_t)0;
    cancel_calls = 0;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_CANCELLED);
    CHECK(cancel_calls == 1, "older layout: trained until cancelled, %d calls", cancel_calls);
    /* The layout before threads: the field (garbage here) is never read. */
    wrong.struct_size = offsetof(pdiff_train_options, threads);
    wrong.explicit_fields = 0;
    wrong.threads = (size_t)-1;
    cancel_calls = 0;
    CHECK_FAILS(pdiff_generator_train(ds, &wrong, &gen), PDIFF_ERR_CANCELLED);
    CHECK(cancel_calls == 1, "layout before threads: trained until cancelled, %d calls", cancel_calls);

    if (!train) {
        pdiff_dataset_free(ds);
        return 1;
    }
    progress_state prog = {0};
    opts.progress = count_progress;
    opts.user_data = &prog;
    CHECK_OK(pdiff_generator_train(ds, &opts, &gen));
    CHECK(prog.calls == 40 && prog.ae_calls == 20 && prog.diffusion_calls == 20 && prog.bad == 0,
          "progress calls %d (ae %d, diffusion %d, bad %d)", prog.calls, prog.ae_calls, prog.diffusion_calls, prog.bad);
    CHECK(prog.last_step == 20 && prog.last_total == 20, "last step %zu/%zu", prog.last_step, prog.last_total);
    /* The chunked preset on request: its latent is the principal coefficients of the token
       latents, at most K - 1 = 5 of them (the manifest says so). */
    {
        pdiff_train_options chunked = opts;
        chunked.preset = PDIFF_PRESET_CHUNKED;
        chunked.progress = NULL;
        chunked.reconstruction_weighting = PDIFF_RECONSTRUCTION_PER_TENSOR;
        chunked.latent_noise = 0.05;
        pdiff_generator *cg = NULL;
        char dir[600], manifest[700];
        snprintf(dir, sizeof dir, "%s/chunked-bundle", tmp);
        snprintf(manifest, sizeof manifest, "%s/pdiff.json", dir);
        CHECK_OK(pdiff_generator_train(ds, &chunked, &cg));
        if (cg) {
            CHECK_OK(pdiff_generator_export(cg, dir));
            CHECK(file_contains(manifest, "\"preset\": \"chunked\"") && file_contains(manifest, "\"latent_dim\": 5,") &&
                      file_contains(manifest, "\"components\": 5") && file_contains(manifest, "\"reconstruction_weighting\": \"per-tensor\"") &&
                      file_contains(manifest, "\"latent_noise\": 0.05,"),
                  "chunked manifest");
            pdiff_generator_free(cg);
        }
        /* latent_noise = 0, asked for explicitly: training without latent noise, and the
           manifest records 0 (without the bit, 0 would take the preset's 0.1). */
        pdiff_train_options quiet = opts;
        quiet.progress = NULL;
        quiet.latent_noise = 0.0;
        quiet.explicit_fields = PDIFF_TRAIN_EXPLICIT_LATENT_NOISE;
        quiet.threads = 1; /* one libtorch thread: recorded in the manifest */
        pdiff_generator *qg = NULL;
        snprintf(dir, sizeof dir, "%s/quiet-bundle", tmp);
        snprintf(manifest, sizeof manifest, "%s/pdiff.json", dir);
        CHECK_OK(pdiff_generator_train(ds, &quiet, &qg));
        if (qg) {
            CHECK_OK(pdiff_generator_export(qg, dir));
            CHECK(file_contains(manifest, "\"latent_noise\": 0.0,"), "explicit latent_noise 0 in the manifest");
            CHECK(file_contains(manifest, "\"threads\": 1"), "threads in the manifest");
            pdiff_generator_free(qg);
        }
        /* A host built against the first layout (no latent_noise, reconstruction_weighting)
           passes its smaller struct_size: the fields after it are never read. */
        pdiff_train_options older = opts;
        older.progress = NULL;
        older.struct_size = offsetof(pdiff_train_options, latent_noise);
        older.reconstruction_weighting = 99;
        pdiff_generator *og = NULL;
        CHECK_OK(pdiff_generator_train(ds, &older, &og));
        pdiff_generator_free(og);
    }
    pdiff_dataset_free(ds); /* the generator does not depend on it */
    if (!gen) return 0;
    CHECK(pdiff_generator_param_count(gen) == D, "generator D");
    /* Generator warnings: the dataset's first (it was freed: the generator owns its copy), then
       training's, if any (20 autoencoder steps reconstruct poorly). */
    size_t n_warnings = pdiff_generator_warning_count(gen);
    CHECK(n_warnings >= 1 && n_warnings <= 2, "generator warnings: %zu", n_warnings);
    CHECK(pdiff_generator_warning(gen, 0) != NULL && strcmp(pdiff_generator_warning(gen, 0), dataset_warning) == 0,
          "first generator warning is the dataset's: %s", pdiff_generator_warning(gen, 0));
    for (size_t i = 1; i < n_warnings; i++) {
        const char *w = pdiff_generator_warning(gen, i);
        CHECK(w != NULL && strncmp(w, "the autoencoder reconstructs", 28) == 0, "warning %zu: %s", i, w ? w : "(null)");
    }
    CHECK(pdiff_generator_warning(gen, n_warnings) == NULL, "generator warning out of range is NULL");
    CHECK(pdiff_generator_warning(NULL, 0) == NULL && pdiff_generator_warning_count(NULL) == 0, "generator warnings of NULL");

    CHECK_FAILS(pdiff_generator_export(NULL, bundle), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_generator_export(gen, NULL), PDIFF_ERR_NULL_POINTER);
    CHECK_OK(pdiff_generator_export(gen, bundle));
    {
        /* The default preset is chosen by D: compact at D = 36, and recorded as chosen. */
        char manifest[600];
        snprintf(manifest, sizeof manifest, "%s/pdiff.json", bundle);
        CHECK(file_contains(manifest, "\"preset\": \"compact\"") && file_contains(manifest, "\"preset_auto\": true"), "auto preset in the manifest");
    }
    export_output_cases(gen, bundle, tmp);
    pdiff_generator_free(gen);
    return 1;
}

/* pdiff_generator_export(_ex) never destroys what libpdiff did not write. */
static void export_output_cases(const pdiff_generator *gen, const char *bundle, const char *tmp) {
    char path[512], notes[600], file[600];
    /* A previous bundle is replaced. */
    CHECK_OK(pdiff_generator_export(gen, bundle));
    /* A regular file: refused, with or without force, and left as it was. */
    snprintf(path, sizeof path, "%s/a-file", tmp);
    write_file(path, "a file of the host's");
    CHECK_FAILS(pdiff_generator_export(gen, path), PDIFF_ERR_OUTPUT_EXISTS);
    CHECK(last_error_says("is a regular file, not a directory"), "export over a file");
    CHECK_FAILS(pdiff_generator_export_ex(gen, path, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
    CHECK(file_is(path, "a file of the host's"), "the file is unchanged");
    /* A directory with a file libpdiff did not write: refused; forced, the bundle goes beside it. */
    snprintf(path, sizeof path, "%s/export-home", tmp);
    make_foreign_dir(path, notes, sizeof notes);
    CHECK_FAILS(pdiff_generator_export(gen, path), PDIFF_ERR_OUTPUT_EXISTS);
    CHECK(last_error_says("holds files libpdiff did not write (notes.txt)"), "names the foreign file");
    snprintf(file, sizeof file, "%s/pdiff.json", path);
    CHECK(!exists(file), "nothing written when refused");
    CHECK_FAILS(pdiff_generator_export_ex(gen, path, 2), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_FAILS(pdiff_generator_export_ex(NULL, path, PDIFF_OUTPUT_FORCE), PDIFF_ERR_NULL_POINTER);
    CHECK_OK(pdiff_generator_export_ex(gen, path, PDIFF_OUTPUT_FORCE));
    CHECK(exists(file), "forced export wrote %s", file);
    CHECK(file_is(notes, "my notes, not libpdiff's"), "the host's file is unchanged");
    pdiff_sampler *s = NULL;
    CHECK_OK(pdiff_sampler_open(path, NULL, &s));
    pdiff_sampler_free(s);
}

#endif /* PDIFF_FEATURE_TRAIN */

/* ---- part 2: sampler ---- */
static void sampler_tests(const char *bundle, const char *tmp, int with_threads, int with_ddpm) {
    pdiff_sampler *s = NULL;
    pdiff_sampler_options sopts;
    CHECK_OK(pdiff_sampler_options_default(&sopts));
    CHECK(sopts.struct_size == sizeof sopts && sopts.runtime_library == NULL, "sampler defaults");
    sopts.provider = PDIFF_PROVIDER_CPU;
    sopts.intra_threads = 1;

    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-bundle", tmp);
    pdiff_status st = pdiff_sampler_open(missing, &sopts, &s);
    CHECK(st == PDIFF_ERR_BUNDLE || st == PDIFF_ERR_IO, "unknown bundle: %d", (int)st);
    CHECK(pdiff_last_error()[0] != '\0', "message for unknown bundle");
    CHECK(s == NULL, "no sampler");
    CHECK_FAILS(pdiff_sampler_open(NULL, &sopts, &s), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_sampler_open(bundle, &sopts, NULL), PDIFF_ERR_NULL_POINTER);
    pdiff_sampler_options bad = sopts;
    bad.struct_size = 1;
    CHECK_FAILS(pdiff_sampler_open(bundle, &bad, &s), PDIFF_ERR_STRUCT_SIZE);
    bad = sopts;
    bad.provider = 42;
    CHECK_FAILS(pdiff_sampler_open(bundle, &bad, &s), PDIFF_ERR_INVALID_ARGUMENT);
    bad = sopts;
    bad.whole_loop = 7;
    CHECK_FAILS(pdiff_sampler_open(bundle, &bad, &s), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(sopts.whole_loop == PDIFF_WHOLE_LOOP_AUTO && sopts.max_sessions == 0 && sopts.device_index == 0,
          "sampler defaults (whole_loop, max_sessions, device_index)");
    CHECK(last_error_says("pdiff_sampler_open: options.whole_loop is 7: not a pdiff_whole_loop value"), "names the field");
    bad = sopts;
    bad.device_index = 0x80000000u; /* beyond INT32_MAX */
    CHECK_FAILS(pdiff_sampler_open(bundle, &bad, &s), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("options.device_index is 2147483648"), "names device_index");
    bad.device_index = 1; /* the CPU provider has no device to choose: accepted */
    CHECK_OK(pdiff_sampler_open(bundle, &bad, &s));
    pdiff_sampler_free(s);
    s = NULL;
    /* A host compiled against the struct's first layout (it ended at runtime_library) passes
     * its smaller struct_size: accepted, the newer fields take their defaults. A size between
     * two published layouts is not. */
    bad = sopts;
    bad.struct_size = offsetof(pdiff_sampler_options, max_sessions);
    bad.whole_loop = 7; /* beyond the old host's struct: never read */
    CHECK_OK(pdiff_sampler_open(bundle, &bad, &s));
    pdiff_sampler_free(s);
    s = NULL;
    bad.struct_size = offsetof(pdiff_sampler_options, max_sessions) + 4;
    CHECK_FAILS(pdiff_sampler_open(bundle, &bad, &s), PDIFF_ERR_STRUCT_SIZE);
    /* The loop graph on request: same samples as step by step, within float rounding. */
    {
        pdiff_sampler_options lo = sopts;
        lo.whole_loop = PDIFF_WHOLE_LOOP_ON;
        pdiff_sampler *ws = NULL, *ss = NULL;
        CHECK_OK(pdiff_sampler_open(bundle, &lo, &ws));
        lo.whole_loop = PDIFF_WHOLE_LOOP_OFF;
        CHECK_OK(pdiff_sampler_open(bundle, &lo, &ss));
        pdiff_sample_options o;
        pdiff_sample_options_default(&o);
        o.ddim_steps = 10;
        float a[2 * D], w[2 * D];
        if (ws && ss) {
            CHECK_OK(pdiff_sampler_sample(ss, &o, 2, a, 2 * D));
            CHECK_OK(pdiff_sampler_sample(ws, &o, 2, w, 2 * D));
            float scale = 1e-6f, diff = 0;
            for (int i = 0; i < 2 * D; i++) {
                scale = fmaxf(scale, fabsf(a[i]));
                diff = fmaxf(diff, fabsf(a[i] - w[i]));
            }
            CHECK(diff / scale <= 1e-5f, "whole loop vs step loop: %g", (double)(diff / scale));
        }
        pdiff_sampler_free(ws);
        pdiff_sampler_free(ss);
    }

    CHECK_OK(pdiff_sampler_open(bundle, &sopts, &s));
    if (!s) return;
    CHECK(strcmp(pdiff_sampler_backend(s), "onnxruntime-cpu") == 0, "backend %s", pdiff_sampler_backend(s));
    CHECK(pdiff_sampler_backend(NULL) == NULL, "backend(NULL)");
    CHECK(strcmp(pdiff_sampler_backend_detail(s), "CPU execution provider (asked for)") == 0, "detail %s",
          pdiff_sampler_backend_detail(s));
    CHECK(pdiff_sampler_backend_detail(NULL) == NULL, "backend_detail(NULL)");
    CHECK(pdiff_sampler_param_count(s) == D, "D = %zu", pdiff_sampler_param_count(s));
    CHECK(pdiff_sampler_tensor_count(s) == 2, "tensors = %zu", pdiff_sampler_tensor_count(s));

    const char *name = NULL;
    size_t ndim = 0, offset = 99;
    const size_t *shape = NULL;
    CHECK_OK(pdiff_sampler_tensor_info(s, 0, &name, &ndim, &shape, &offset));
    CHECK(name && strcmp(name, "w") == 0 && ndim == 2 && shape && shape[0] == ROWS && shape[1] == COLS && offset == 0,
          "tensor 0: %s ndim %zu offset %zu", name ? name : "(null)", ndim, offset);
    CHECK_OK(pdiff_sampler_tensor_info(s, 1, &name, &ndim, &shape, &offset));
    CHECK(name && strcmp(name, "b") == 0 && ndim == 1 && shape && shape[0] == ROWS && offset == ROWS * COLS,
          "tensor 1: %s ndim %zu offset %zu", name ? name : "(null)", ndim, offset);
    CHECK_OK(pdiff_sampler_tensor_info(s, 1, NULL, NULL, NULL, NULL));
    CHECK_FAILS(pdiff_sampler_tensor_info(s, 2, &name, &ndim, &shape, &offset), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_FAILS(pdiff_sampler_tensor_info(NULL, 0, &name, &ndim, &shape, &offset), PDIFF_ERR_NULL_POINTER);

    /* sampling: determinism, seeds */
    pdiff_sample_options so;
    CHECK_FAILS(pdiff_sample_options_default(NULL), PDIFF_ERR_NULL_POINTER);
    CHECK_OK(pdiff_sample_options_default(&so));
    CHECK(so.struct_size == sizeof so && so.sampler == PDIFF_SAMPLER_DDIM && so.ddim_steps > 0, "sample defaults");
    so.ddim_steps = 10;
    so.seed = 7;
    float a[3 * D], b[3 * D], c[3 * D];
    CHECK_OK(pdiff_sampler_sample(s, &so, 3, a, 3 * D));
    CHECK(all_finite(a, 3 * D), "finite samples");
    CHECK_OK(pdiff_sampler_sample(s, &so, 3, b, 3 * D));
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same samples");
    so.seed = 8;
    CHECK_OK(pdiff_sampler_sample(s, &so, 3, c, 3 * D));
    CHECK(memcmp(a, c, sizeof a) != 0, "different seed, different samples");
    CHECK(memcmp(a, a + D, D * sizeof(float)) != 0, "samples of one call differ");
    so.seed = 7;

    /* misuse */
    CHECK_FAILS(pdiff_sampler_sample(s, &so, 3, b, 3 * D - 1), PDIFF_ERR_BUFFER_TOO_SMALL);
    {
        char want[128];
        snprintf(want, sizeof want, "pdiff_sampler_sample: out_len is %d floats, %d are needed", 3 * D - 1, 3 * D);
        CHECK(strcmp(pdiff_last_error(), want) == 0, "the function named once: %s", pdiff_last_error());
    }
    CHECK_FAILS(pdiff_sampler_sample(s, &so, 3, NULL, 3 * D), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_sampler_sample(NULL, &so, 3, b, 3 * D), PDIFF_ERR_NULL_POINTER);
    CHECK_FAILS(pdiff_sampler_sample(s, &so, 0, b, 3 * D), PDIFF_ERR_INVALID_ARGUMENT);
    pdiff_sample_options sbad = so;
    sbad.struct_size = sizeof sbad + 8;
    CHECK_FAILS(pdiff_sampler_sample(s, &sbad, 3, b, 3 * D), PDIFF_ERR_STRUCT_SIZE);
    sbad = so;
    sbad.ddim_steps = 0;
    CHECK_FAILS(pdiff_sampler_sample(s, &sbad, 3, b, 3 * D), PDIFF_ERR_INVALID_ARGUMENT);
    sbad = so;
    sbad.sampler = -1;
    CHECK_FAILS(pdiff_sampler_sample(s, &sbad, 3, b, 3 * D), PDIFF_ERR_INVALID_ARGUMENT);

    /* Progress and clip count: the callback sees the steps rise to the total, the samples do
     * not change, and every way out reports the same clip count for the same options; a
     * nonzero return cancels (nothing written); older layouts never read the new fields. */
    {
        enum { N = 3 };
        float p[N * D], w[N * ROWS * COLS], bias[N * ROWS];
        sample_progress_state prog = {0};
        pdiff_clip_count flat = {99, 99}, tensors = {98, 98}, files = {97, 97}, best = {96, 96};
        pdiff_sample_options po = so;
        CHECK(po.progress == NULL && po.progress_user_data == NULL && po.clipped == NULL, "progress and clip count defaults");
        po.progress = sample_progress;
        po.progress_user_data = &prog;
        po.clipped = &flat;
        CHECK_OK(pdiff_sampler_sample(s, &po, N, p, N * D));
        CHECK(memcmp(p, a, sizeof p) == 0, "a progress callback does not change the samples");
        CHECK(prog.calls == 10 && prog.bad == 0 && prog.last_step == 10 && prog.total == 10,
              "sampling progress: %d calls, last %zu/%zu, %d bad", prog.calls, prog.last_step, prog.total, prog.bad);
        CHECK(flat.latents <= N && flat.values >= flat.latents && (flat.latents == 0) == (flat.values == 0),
              "clip count %zu latents, %zu values", flat.latents, flat.values);
        pdiff_tensor_buffer tb[2] = {{"w", 0, w, N * ROWS * COLS}, {"b", 0, bias, N * ROWS}};
        memset(&prog, 0, sizeof prog);
        po.clipped = &tensors;
        CHECK_OK(pdiff_sampler_sample_tensors(s, &po, N, tb, 2));
        CHECK(prog.calls == 10 && prog.bad == 0, "sample_tensors progress: %d calls", prog.calls);
        char dir[512];
        snprintf(dir, sizeof dir, "%s/progress", tmp);
        memset(&prog, 0, sizeof prog);
        po.clipped = &files;
        CHECK_OK(pdiff_sampler_sample_to_dir(s, &po, N, dir));
        CHECK(prog.calls == 10 && prog.bad == 0, "sample_to_dir progress: %d calls", prog.calls);
        score_state sc = {0};
        float one[D];
        memset(&prog, 0, sizeof prog);
        po.clipped = &best;
        CHECK_OK(pdiff_sampler_best_of_n(s, &po, N, score_cb, &sc, one, D, NULL, NULL));
        CHECK(prog.calls == 10 && prog.bad == 0, "best_of_n progress: %d calls", prog.calls);
        CHECK(memcmp(&flat, &tensors, sizeof flat) == 0 && memcmp(&flat, &files, sizeof flat) == 0 &&
                  memcmp(&flat, &best, sizeof flat) == 0,
              "one clip count for the same models: %zu/%zu, %zu/%zu, %zu/%zu, %zu/%zu", flat.latents, flat.values,
              tensors.latents, tensors.values, files.latents, files.values, best.latents, best.values);

        /* Cancel at step 3: PDIFF_ERR_CANCELLED, nothing written, the clip count untouched. */
        pdiff_clip_count untouched = {55, 55};
        float q[N * D];
        memset(q, 0xff, sizeof q);
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = 3;
        po.clipped = &untouched;
        CHECK_FAILS(pdiff_sampler_sample(s, &po, N, q, N * D), PDIFF_ERR_CANCELLED);
        CHECK(last_error_says("pdiff_sampler_sample: cancelled"), "cancel message: %s", pdiff_last_error());
        CHECK(prog.calls == 3, "cancelled at step 3: %d calls", prog.calls);
        CHECK(((unsigned char *)q)[0] == 0xff && ((unsigned char *)q)[sizeof q - 1] == 0xff, "nothing written when cancelled");
        snprintf(dir, sizeof dir, "%s/cancelled", tmp);
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = 1;
        CHECK_FAILS(pdiff_sampler_sample_to_dir(s, &po, N, dir), PDIFF_ERR_CANCELLED);
        CHECK(!exists(dir), "a cancelled sample_to_dir writes nothing");
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = 2;
        CHECK_FAILS(pdiff_sampler_best_of_n(s, &po, N, score_cb, &sc, one, D, NULL, NULL), PDIFF_ERR_CANCELLED);
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = 2;
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &po, N, tb, 2), PDIFF_ERR_CANCELLED);
        CHECK(untouched.latents == 55 && untouched.values == 55, "no clip count written after a failure");

        /* A host built against an earlier layout: the new fields (a cancelling callback here)
           are never read. Both earlier sizes are accepted; a size between layouts is not. */
        pdiff_sample_options older = po;
        memset(&prog, 0, sizeof prog);
        prog.cancel_at = 1;
        older.struct_size = offsetof(pdiff_sample_options, progress);
        CHECK_OK(pdiff_sampler_sample(s, &older, N, q, N * D));
        CHECK(memcmp(q, a, sizeof q) == 0, "older layout (with condition fields): the same samples");
        older.struct_size = offsetof(pdiff_sample_options, condition);
        CHECK_OK(pdiff_sampler_sample(s, &older, N, q, N * D));
        CHECK(memcmp(q, a, sizeof q) == 0, "first layout: the same samples");
        CHECK(prog.calls == 0 && untouched.latents == 55, "older layouts: no callback, no clip count");
        older.struct_size = offsetof(pdiff_sample_options, progress) + 4;
        CHECK_FAILS(pdiff_sampler_sample(s, &older, N, q, N * D), PDIFF_ERR_STRUCT_SIZE);
    }

    /* Straight into the host's own tensors: equal to the flat samples bit for bit, by name or
     * by index, all tensors or some; every bad buffer refused, naming its tensor. */
    {
        enum { N = 3 };
        float w[N * ROWS * COLS], bias[N * ROWS], w2[N * ROWS * COLS];
        memset(w, 0xff, sizeof w);
        memset(bias, 0xff, sizeof bias);
        pdiff_tensor_buffer bufs[2] = {{"b", 0, bias, N * ROWS}, {NULL, 0, w, N * ROWS * COLS}}; /* b by name, w by index */
        CHECK_OK(pdiff_sampler_sample_tensors(s, &so, N, bufs, 2));
        int same = 1;
        for (int i = 0; i < N; i++) {
            same &= memcmp(w + i * ROWS * COLS, a + i * D, ROWS * COLS * sizeof(float)) == 0;
            same &= memcmp(bias + i * ROWS, a + i * D + ROWS * COLS, ROWS * sizeof(float)) == 0;
        }
        CHECK(same, "streamed tensors equal pdiff_sampler_sample's vectors bit for bit");
        pdiff_tensor_buffer one = {"w", 0, w2, N * ROWS * COLS};
        CHECK_OK(pdiff_sampler_sample_tensors(s, &so, N, &one, 1));
        CHECK(memcmp(w, w2, sizeof w) == 0, "one tensor alone: the same values");

        pdiff_tensor_buffer badb[2];
        badb[0] = (pdiff_tensor_buffer){"nope", 0, w, N * ROWS * COLS};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 1), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("no tensor 'nope'"), "unknown name named");
        badb[0] = (pdiff_tensor_buffer){"w", 0, w, N * ROWS * COLS - 1};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 1), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("tensor 'w' [4, 8]: len is 95 floats, n x numel = 3 x 32 = 96 are needed"), "wrong length named");
        badb[0] = (pdiff_tensor_buffer){"b", 0, NULL, N * ROWS};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 1), PDIFF_ERR_NULL_POINTER);
        CHECK(last_error_says("data for tensor 'b' is NULL"), "NULL data named");
        badb[0] = (pdiff_tensor_buffer){"b", 0, bias, N * ROWS};
        badb[1] = (pdiff_tensor_buffer){NULL, 1, w2, N * ROWS};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 2), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("tensor 'b' is given twice"), "duplicate named");
        badb[1] = (pdiff_tensor_buffer){NULL, 2, w2, N * ROWS};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 2), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("buffers[1]: tensor index 2 is out of range"), "index out of range");
        badb[0] = (pdiff_tensor_buffer){"w", 0, w, N * ROWS * COLS};
        badb[1] = (pdiff_tensor_buffer){"b", 0, w + 4, N * ROWS};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, badb, 2), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("overlap"), "overlapping buffers");
        badb[1] = (pdiff_tensor_buffer){"b", 0, (float *)((char *)bias + 1), N * ROWS - 1};
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N - 1, badb + 1, 1), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK(last_error_says("not aligned"), "misaligned data");
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, NULL, 1), PDIFF_ERR_NULL_POINTER);
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, N, bufs, 0), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK_FAILS(pdiff_sampler_sample_tensors(s, &so, 0, bufs, 2), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK_FAILS(pdiff_sampler_sample_tensors(NULL, &so, N, bufs, 2), PDIFF_ERR_NULL_POINTER);
        CHECK(memcmp(w, w2, sizeof w) == 0, "refused calls wrote nothing");
    }

    /* One model as an ONNX Runtime adapter in a host buffer: size query, a buffer too small
     * refused untouched, then the bytes: the identifier ONNX Runtime checks at 4..8, and each
     * tensor's floats of pdiff_sampler_sample's model 2 (same options) at an 8-aligned offset. */
    {
        size_t size = 0, size2 = 0;
        CHECK_OK(pdiff_sampler_sample_adapter(s, &so, 2, NULL, 0, &size));
        CHECK(size > D * sizeof(float) && size < D * sizeof(float) + 1024, "adapter size %zu for D = %d", size, D);
        unsigned char *buf = malloc(size + 8);
        memset(buf, 0xAB, size + 8);
        CHECK_FAILS(pdiff_sampler_sample_adapter(s, &so, 2, buf, size - 1, &size2), PDIFF_ERR_BUFFER_TOO_SMALL);
        CHECK(last_error_says("the adapter needs") && size2 == size, "too small: both sizes said, the size reported");
        CHECK(buf[0] == 0xAB && buf[size - 2] == 0xAB, "too small: nothing written");
        CHECK_OK(pdiff_sampler_sample_adapter(s, &so, 2, buf, size + 8, &size2));
        CHECK(size2 == size && memcmp(buf + 4, "TORT", 4) == 0 && buf[size] == 0xAB, "adapter written: %zu bytes, identifier TORT", size2);
        const float *model = a + 2 * D;
        const struct { const float *values; size_t len; } tensors[2] = {{model, ROWS * COLS}, {model + ROWS * COLS, ROWS}};
        for (int t = 0; t < 2; t++) {
            size_t bytes = tensors[t].len * sizeof(float), found = 0, at = 0;
            for (size_t i = 0; i + bytes <= size; i++) {
                if (memcmp(buf + i, tensors[t].values, bytes) == 0) {
                    found++;
                    at = i;
                }
            }
            CHECK(found == 1 && at % 8 == 0, "tensor %d of model 2 found once (%zu), 8-aligned (at %zu)", t, found, at);
        }
        CHECK_FAILS(pdiff_sampler_sample_adapter(s, &so, 2, buf, size, NULL), PDIFF_ERR_NULL_POINTER);
        CHECK(last_error_says("size is NULL"), "NULL size named");
        CHECK_FAILS(pdiff_sampler_sample_adapter(s, &so, 2, NULL, size, &size2), PDIFF_ERR_NULL_POINTER);
        free(buf);
    }

    if (with_ddpm) {
        pdiff_sample_options ddpm = so;
        ddpm.sampler = PDIFF_SAMPLER_DDPM;
        float d1[D];
        CHECK_OK(pdiff_sampler_sample(s, &ddpm, 1, d1, D));
        CHECK(all_finite(d1, D), "finite DDPM sample");
    }

    /* best of n */
    {
        enum { N = 5 };
        float best[D], all[N * D];
        size_t best_index = 99;
        double best_score = 0.0;
        score_state sc = {0};
        so.seed = 11;
        CHECK_OK(pdiff_sampler_best_of_n(s, &so, N, score_cb, &sc, best, D, &best_index, &best_score));
        CHECK(sc.calls == N && sc.len == D, "score called %d times with len %zu", sc.calls, sc.len);
        CHECK_OK(pdiff_sampler_sample(s, &so, N, all, N * D));
        size_t argmax = 0;
        for (size_t i = 1; i < N; i++)
            if (neg_sum_sq(all + i * D, D) > neg_sum_sq(all + argmax * D, D)) argmax = i;
        CHECK(best_index == argmax, "best index %zu, recomputed %zu", best_index, argmax);
        CHECK(best_score == neg_sum_sq(all + argmax * D, D), "best score %g", best_score);
        CHECK(memcmp(best, all + argmax * D, sizeof best) == 0, "best vector is the argmax sample");
        for (size_t i = 0; i < N; i++)
            CHECK(neg_sum_sq(all + i * D, D) <= best_score, "sample %zu scores above the best", i);
        CHECK_OK(pdiff_sampler_best_of_n(s, &so, N, score_cb, &sc, best, D, NULL, NULL));
        CHECK_FAILS(pdiff_sampler_best_of_n(s, &so, N, NULL, &sc, best, D, &best_index, &best_score),
                    PDIFF_ERR_NULL_POINTER);
        CHECK_FAILS(pdiff_sampler_best_of_n(s, &so, N, score_cb, &sc, best, D - 1, &best_index, &best_score),
                    PDIFF_ERR_BUFFER_TOO_SMALL);
        CHECK_FAILS(pdiff_sampler_best_of_n(NULL, &so, N, score_cb, &sc, best, D, &best_index, &best_score),
                    PDIFF_ERR_NULL_POINTER);
        so.seed = 7;
    }

    /* to a directory of safetensors files */
    {
        char dir[512], file[600];
        snprintf(dir, sizeof dir, "%s/generated", tmp);
        CHECK_OK(pdiff_sampler_sample_to_dir(s, &so, 2, dir));
        snprintf(file, sizeof file, "%s/gen_0000.safetensors", dir);
        CHECK(access(file, R_OK) == 0, "%s exists", file);
        snprintf(file, sizeof file, "%s/gen_0001.safetensors", dir);
        CHECK(access(file, R_OK) == 0, "%s exists", file);
        CHECK_FAILS(pdiff_sampler_sample_to_dir(s, &so, 2, NULL), PDIFF_ERR_NULL_POINTER);

        /* Outputs never destroy what libpdiff did not write. A previous output: replaced. */
        CHECK_OK(pdiff_sampler_sample_to_dir(s, &so, 1, dir));
        snprintf(file, sizeof file, "%s/gen_0001.safetensors", dir);
        CHECK(!exists(file), "the old gen_0001 went with the previous output");
        /* A regular file: refused even with force, unchanged. */
        char path[512], notes[600];
        snprintf(path, sizeof path, "%s/a-file", tmp);
        write_file(path, "a file of the host's");
        CHECK_FAILS(pdiff_sampler_sample_to_dir(s, &so, 2, path), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(last_error_says("pdiff_sampler_sample_to_dir: output ") && last_error_says("is a regular file"), "names the file");
        CHECK_FAILS(pdiff_sampler_sample_to_dir_ex(s, &so, 2, path, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(file_is(path, "a file of the host's"), "the file is unchanged");
        /* A symbolic link: refused even with force; its target untouched. */
        snprintf(path, sizeof path, "%s/a-link", tmp);
        CHECK(symlink(dir, path) == 0, "symlink");
        CHECK_FAILS(pdiff_sampler_sample_to_dir_ex(s, &so, 2, path, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(last_error_says("is a symbolic link"), "names the link");
        CHECK(!exists(file), "nothing written through the link");
        /* The bundle itself (another kind of output): refused even with force. */
        size_t manifest_len = 0;
        snprintf(file, sizeof file, "%s/pdiff.json", bundle);
        char *manifest = read_file(file, &manifest_len);
        CHECK_FAILS(pdiff_sampler_sample_to_dir_ex(s, &so, 2, bundle, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(last_error_says("holds a libpdiff bundle output, not samples"), "names the kind");
        char *after = read_file(file, NULL);
        CHECK(manifest && after && strcmp(manifest, after) == 0, "the bundle is unchanged");
        free(manifest);
        free(after);
        snprintf(file, sizeof file, "%s/gen_0000.safetensors", bundle);
        CHECK(!exists(file), "no model written into the bundle");
        /* A directory with a host's file: refused; forced, written beside it. */
        snprintf(path, sizeof path, "%s/sample-home", tmp);
        make_foreign_dir(path, notes, sizeof notes);
        CHECK_FAILS(pdiff_sampler_sample_to_dir(s, &so, 2, path), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(last_error_says("holds files libpdiff did not write (notes.txt)"), "names the foreign file");
        snprintf(file, sizeof file, "%s/gen_0000.safetensors", path);
        CHECK(!exists(file), "nothing written when refused");
        CHECK_FAILS(pdiff_sampler_sample_to_dir_ex(s, &so, 2, path, 0x100), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK_OK(pdiff_sampler_sample_to_dir_ex(s, &so, 2, path, PDIFF_OUTPUT_FORCE));
        CHECK(exists(file), "forced sample wrote %s", file);
        CHECK(file_is(notes, "my notes, not libpdiff's"), "the host's file is unchanged");
        /* Forced, but a host's file takes one of the names: refused, nothing changed. */
        snprintf(path, sizeof path, "%s/sample-taken", tmp);
        make_foreign_dir(path, notes, sizeof notes);
        snprintf(file, sizeof file, "%s/gen_0001.safetensors", path);
        write_file(file, "the host's own model");
        CHECK_FAILS(pdiff_sampler_sample_to_dir_ex(s, &so, 2, path, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(last_error_says("under names this output needs (gen_0001.safetensors)"), "names the taken name");
        CHECK(file_is(file, "the host's own model"), "the host's model is unchanged");
        snprintf(file, sizeof file, "%s/gen_0000.safetensors", path);
        CHECK(!exists(file), "nothing written when refused");
    }

    /* threads: one sampler, 8 threads, distinct seeds == sequential results */
    if (with_threads) thread_tests(s);

    pdiff_sampler_free(s);
}

#if defined(PDIFF_FEATURE_TRAIN)
/* ---- part 3: a conditional generator (two tasks, conditions (1,0) and (0,1)) ---- */
static void conditional_tests(const char *tmp) {
    float data[K * D], cond[K * 2];
    fill_dataset(data);
    for (int i = 0; i < K; i++) {
        cond[2 * i] = i % 2 == 0 ? 1.0f : 0.0f;
        cond[2 * i + 1] = i % 2 == 0 ? 0.0f : 1.0f;
    }
    size_t shape_w[2] = {ROWS, COLS}, shape_b[1] = {ROWS};
    pdiff_tensor_decl layout[2] = {{"w", 2, shape_w}, {"b", 1, shape_b}};
    pdiff_dataset *ds = NULL;
    CHECK_FAILS(pdiff_dataset_from_memory_conditional(layout, 2, data, K, cond, 0, &ds), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_FAILS(pdiff_dataset_from_memory_conditional(layout, 2, data, K, NULL, 2, &ds), PDIFF_ERR_NULL_POINTER);
    cond[3] = NAN;
    CHECK_FAILS(pdiff_dataset_from_memory_conditional(layout, 2, data, K, cond, 2, &ds), PDIFF_ERR_INVALID_ARGUMENT);
    cond[3] = 1.0f;
    CHECK_OK(pdiff_dataset_from_memory_conditional(layout, 2, data, K, cond, 2, &ds));
    if (!ds) return;
    CHECK(pdiff_dataset_condition_dim(ds) == 2, "dataset C = %zu", pdiff_dataset_condition_dim(ds));
    pdiff_train_options opts;
    CHECK_OK(pdiff_train_options_default(&opts));
    small_training(&opts);
    pdiff_generator *gen = NULL;
    CHECK_OK(pdiff_generator_train(ds, &opts, &gen));
    pdiff_dataset_free(ds);
    if (!gen) return;
    char bundle[600];
    snprintf(bundle, sizeof bundle, "%s/cond-bundle", tmp);
    CHECK_OK(pdiff_generator_export(gen, bundle));
    pdiff_generator_free(gen);

    pdiff_sampler *s = NULL;
    CHECK_OK(pdiff_sampler_open(bundle, NULL, &s));
    if (!s) return;
    CHECK(pdiff_sampler_condition_dim(s) == 2, "sampler C = %zu", pdiff_sampler_condition_dim(s));
    CHECK(pdiff_sampler_condition_name(s, 0) == NULL, "no names given");
    enum { N = 4 };
    static float to_a[N * D], to_b[N * D], again[N * D], mixed[N * D];
    const float a[2] = {1.0f, 0.0f}, b[2] = {0.0f, 1.0f};
    const float per_row[N * 2] = {1, 0, 0, 1, 1, 0, 0, 1};
    pdiff_sample_options o;
    CHECK_OK(pdiff_sample_options_default(&o));
    CHECK(o.condition == NULL && o.condition_len == 0 && o.guidance == 1.0, "condition defaults");
    o.seed = 5;
    o.ddim_steps = 10;
    o.condition = a;
    o.condition_len = 2;
    CHECK_OK(pdiff_sampler_sample(s, &o, N, to_a, N * D));
    CHECK_OK(pdiff_sampler_sample(s, &o, N, again, N * D));
    CHECK(memcmp(to_a, again, sizeof to_a) == 0, "same condition, same bits");
    o.condition = b;
    CHECK_OK(pdiff_sampler_sample(s, &o, N, to_b, N * D));
    CHECK(memcmp(to_a, to_b, sizeof to_a) != 0, "another condition, other vectors");
    o.condition = per_row;
    o.condition_len = N * 2;
    CHECK_OK(pdiff_sampler_sample(s, &o, N, mixed, N * D));
    CHECK(memcmp(mixed, to_a, D * sizeof(float)) == 0 && memcmp(mixed + D, to_b + D, D * sizeof(float)) == 0,
          "one condition per vector");
    o.condition = a;
    o.condition_len = 2;
    o.guidance = 3.0;
    CHECK_OK(pdiff_sampler_sample(s, &o, N, again, N * D));
    CHECK(memcmp(to_a, again, sizeof to_a) != 0, "guidance 3 differs from guidance 1");
    /* Errors: a condition of another length, NULL with a length, a non-finite guidance. */
    o.guidance = 1.0;
    o.condition_len = 3;
    CHECK_FAILS(pdiff_sampler_sample(s, &o, N, again, N * D), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK(last_error_says("expected C = 2"), "names C: %s", pdiff_last_error());
    o.condition = NULL;
    o.condition_len = 2;
    CHECK_FAILS(pdiff_sampler_sample(s, &o, N, again, N * D), PDIFF_ERR_NULL_POINTER);
    o.condition = a;
    o.guidance = NAN;
    CHECK_FAILS(pdiff_sampler_sample(s, &o, N, again, N * D), PDIFF_ERR_INVALID_ARGUMENT);
    /* A host built against the first layout (no condition fields): no condition, the
       unconditional model, as with condition NULL. */
    pdiff_sample_options old;
    CHECK_OK(pdiff_sample_options_default(&old));
    old.seed = 5;
    old.ddim_steps = 10;
    old.struct_size = offsetof(pdiff_sample_options, condition);
    CHECK_OK(pdiff_sampler_sample(s, &old, N, again, N * D));
    old.struct_size = sizeof old;
    CHECK_OK(pdiff_sampler_sample(s, &old, N, mixed, N * D));
    CHECK(memcmp(again, mixed, sizeof again) == 0, "older struct = no condition");
    pdiff_sampler_free(s);
}
#endif /* PDIFF_FEATURE_TRAIN */

int main(int argc, char **argv) {
    const char *given_bundle = NULL, *export_to = NULL;
    int with_threads = 1, threads_only_mode = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bundle") == 0 && i + 1 < argc) given_bundle = argv[++i];
        else if (strcmp(argv[i], "--export") == 0 && i + 1 < argc) export_to = argv[++i];
        else if (strcmp(argv[i], "--no-threads") == 0) with_threads = 0;
        else if (strcmp(argv[i], "--threads-only") == 0) threads_only_mode = 1;
        else {
            fprintf(stderr, "usage: %s [--bundle DIR [--threads-only] | --export DIR] [--no-threads]\n", argv[0]);
            return 2;
        }
    }
    if (threads_only_mode && (!given_bundle || !with_threads)) {
        fprintf(stderr, "%s: --threads-only needs --bundle DIR (and excludes --no-threads)\n", argv[0]);
        return 2;
    }
#if !defined(PDIFF_FEATURE_TRAIN)
    /* Compiled against a serve-only pdiff.h: no training, so the bundle must be given. */
    if (!given_bundle) {
        fprintf(stderr, "%s: built without PDIFF_FEATURE_TRAIN: --bundle DIR is required\n", argv[0]);
        return 2;
    }
#endif

    CHECK(pdiff_abi_version() == PDIFF_ABI_VERSION, "abi %u vs header %u", pdiff_abi_version(), PDIFF_ABI_VERSION);
    CHECK(pdiff_version() != NULL && pdiff_version()[0] != '\0', "version");
    CHECK(pdiff_last_error() != NULL, "last error never NULL");
    /* Every status has its header name; any other value a fixed one, never NULL. */
    {
        static const char *const names[] = {
            "PDIFF_OK", "PDIFF_ERR_INVALID_ARGUMENT", "PDIFF_ERR_NULL_POINTER", "PDIFF_ERR_BUFFER_TOO_SMALL",
            "PDIFF_ERR_IO", "PDIFF_ERR_CHECKPOINT", "PDIFF_ERR_BUNDLE", "PDIFF_ERR_RUNTIME",
            "PDIFF_ERR_DEVICE_UNAVAILABLE", "PDIFF_ERR_DIVERGED", "PDIFF_ERR_CANCELLED", "PDIFF_ERR_TORCH",
            "PDIFF_ERR_PANIC", "PDIFF_ERR_STRUCT_SIZE", "PDIFF_ERR_OUTPUT_EXISTS", "PDIFF_ERR_OUT_OF_MEMORY"};
        enum { N_NAMES = sizeof names / sizeof names[0] };
        CHECK(N_NAMES == PDIFF_ERR_OUT_OF_MEMORY + 1, "a name for every status");
        for (int i = 0; i < N_NAMES; i++)
            CHECK(strcmp(pdiff_status_name(i), names[i]) == 0, "status %d: %s", i, pdiff_status_name(i));
        CHECK(strcmp(pdiff_status_name(PDIFF_ERR_BUNDLE), "PDIFF_ERR_BUNDLE") == 0, "a pdiff_status passed as is");
        CHECK(strcmp(pdiff_status_name(N_NAMES), "PDIFF_STATUS_UNKNOWN") == 0 &&
                  strcmp(pdiff_status_name(-1), "PDIFF_STATUS_UNKNOWN") == 0 &&
                  strcmp(pdiff_status_name(INT32_MAX), "PDIFF_STATUS_UNKNOWN") == 0,
              "unknown statuses");
    }
    if (threads_only_mode) {
        threads_only(given_bundle);
        printf("%d passed, %d failed\n", passed, failed);
        return failed == 0 ? 0 : 1;
    }

    /* free functions accept NULL */
#if defined(PDIFF_FEATURE_TRAIN)
    pdiff_dataset_free(NULL);
    pdiff_generator_free(NULL);
#endif
    pdiff_sampler_free(NULL);
    passed++;

    char tmp[] = "/tmp/pdiff-c-test-XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    char bundle[512];
    snprintf(bundle, sizeof bundle, "%s/bundle", tmp);
    if (given_bundle) snprintf(bundle, sizeof bundle, "%s", given_bundle);
    else if (export_to) snprintf(bundle, sizeof bundle, "%s", export_to);
#if defined(PDIFF_FEATURE_TRAIN)
    int have_bundle = dataset_and_training(bundle, tmp, given_bundle == NULL);
#else
    int have_bundle = 1;
#endif

    if (have_bundle) sampler_tests(bundle, tmp, with_threads, given_bundle == NULL);
    else CHECK(0, "no bundle: sampler tests skipped");
#if defined(PDIFF_FEATURE_TRAIN)
    if (given_bundle == NULL) conditional_tests(tmp);
#endif

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
