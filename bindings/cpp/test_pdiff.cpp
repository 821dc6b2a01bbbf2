// C++ test of bindings/cpp/pdiff.hpp (the RAII wrapper over include/pdiff.h).
//
//   g++ -std=c++17 -Wall -Werror -Iinclude -Ibindings/cpp bindings/cpp/test_pdiff.cpp
//       -Ltarget/release -lpdiff -Wl,-rpath,$PWD/target/release -pthread -o target/test_pdiff_cpp
//   target/test_pdiff_cpp                       # train (the C test's tiny config), export, sample
//   target/test_pdiff_cpp --bundle DIR --expect FILE [--out FILE]
//       also open the bundle DIR (e.g. the one tests/c/test_pdiff.c exported), sample n = 3 with
//       seed 42, DDIM 10 steps, CPU, and require the floats to equal FILE (raw little-endian f32,
//       written by tests/c/sample_dump.c) bit for bit; --out writes them for the Python test.
//       The generator trained here with the same options must reproduce FILE too.
//
// Prints "N passed, 0 failed" and exits nonzero on any failure.
#include "pdiff.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace fs = std::filesystem;

static int passed = 0, failed = 0;

#define CHECK(cond, msg)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            passed++;                                                                         \
        } else {                                                                              \
            failed++;                                                                         \
            std::cerr << "FAIL " << __FILE__ << ":" << __LINE__ << ": " << #cond << ": " << msg \
                      << "\n";                                                                \
        }                                                                                     \
    } while (0)

// `expr` must throw pdiff::Error with status `want` and a non-empty message.
#define CHECK_THROWS(expr, want)                                                                   \
    do {                                                                                           \
        bool thrown_ = false;                                                                      \
        try {                                                                                      \
            (void)(expr);                                                                          \
        } catch (const pdiff::Error& e_) {                                                         \
            thrown_ = true;                                                                        \
            CHECK(e_.status() == (want), #expr << " threw " << pdiff::status_name(e_.status())     \
                                               << " (" << e_.what() << "), expected "              \
                                               << pdiff::status_name(want));                       \
            CHECK(std::strlen(e_.what()) > 0, "empty message from " #expr);                        \
        } catch (const std::exception& e_) {                                                       \
            thrown_ = true;                                                                        \
            CHECK(false, #expr << " threw a non-pdiff exception: " << e_.what());                  \
        }                                                                                          \
        CHECK(thrown_, #expr << " did not throw");                                                 \
    } while (0)

constexpr size_t K = 6, ROWS = 4, COLS = 8, D = ROWS * COLS + ROWS;

// Ownership is unique: no copies, moves only.
static_assert(!std::is_copy_constructible_v<pdiff::Dataset> && !std::is_copy_assignable_v<pdiff::Dataset>);
static_assert(!std::is_copy_constructible_v<pdiff::Generator> && !std::is_copy_assignable_v<pdiff::Generator>);
static_assert(!std::is_copy_constructible_v<pdiff::Sampler> && !std::is_copy_assignable_v<pdiff::Sampler>);
static_assert(std::is_nothrow_move_constructible_v<pdiff::Dataset> && std::is_nothrow_move_assignable_v<pdiff::Sampler>);
static_assert(std::is_nothrow_move_constructible_v<pdiff::Generator> && std::is_nothrow_move_constructible_v<pdiff::Sampler>);

// The C test's data (tests/c/test_pdiff.c: lcg, fill_dataset), bit for bit.
static float lcg(unsigned* state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static std::vector<float> c_test_data() {
    std::vector<float> data(K * D);
    unsigned st = 12345u;
    float base[D], pert[D];
    for (size_t j = 0; j < D; j++) base[j] = 0.5f * lcg(&st);
    for (size_t j = 0; j < D; j++) pert[j] = lcg(&st);
    for (size_t i = 0; i < K; i++)
        for (size_t j = 0; j < D; j++) data[i * D + j] = base[j] + 0.02f * (float)(i + 1) * pert[j];
    return data;
}

static const std::vector<pdiff::TensorDecl> LAYOUT = {{"w", {ROWS, COLS}}, {"b", {ROWS}}};

// The C test's training options.
static pdiff_train_options c_test_options() {
    pdiff_train_options o = pdiff::train_options();
    o.ae_steps = 20;
    o.diffusion_steps = 20;
    o.batch_size = 4;
    o.seed = 3;
    o.device = PDIFF_DEVICE_CPU;
    return o;
}

static double neg_sum_sq(const float* p, size_t len) {
    double s = 0.0;
    for (size_t i = 0; i < len; i++) s += (double)p[i] * (double)p[i];
    return -s;
}

static bool all_finite(const std::vector<float>& v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

static std::vector<float> read_f32(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<float> v(bytes.size() / sizeof(float));
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
    return v;
}

static bool write_f32(const std::string& path, const std::vector<float>& v) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(v.data()), (std::streamsize)(v.size() * sizeof(float)));
    return static_cast<bool>(f);
}

// The reference sampling of the cross-language checks: n = 3, seed 42, DDIM 10 steps, CPU.
static std::vector<float> reference_samples(const std::string& bundle) {
    pdiff::Sampler s(bundle, pdiff::sampler_options(PDIFF_PROVIDER_CPU));
    return s.sample(3, pdiff::ddim(42, 10));
}

static void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

static std::string read_text(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

static void dataset_tests(const std::vector<float>& data) {
    auto ds = pdiff::Dataset::from_memory(LAYOUT, data);
    CHECK(ds && ds.k() == K && ds.param_count() == D, "k " << ds.k() << ", D " << ds.param_count());
    // K = 6 is below the 50 checkpoints recommended: one warning.
    CHECK(ds.warnings().size() == 1 && ds.warnings()[0].rfind("K = 6 checkpoints is few", 0) == 0,
          ds.warnings().size() << " warnings");
    // pointer + length overload
    auto ds2 = pdiff::Dataset::from_memory(LAYOUT, data.data(), data.size());
    CHECK(ds2.k() == K, "k " << ds2.k());
    // move: the source becomes empty, using it throws NULL_POINTER
    pdiff::Dataset moved(std::move(ds2));
    CHECK(moved && !ds2, "move transfers the handle");
    CHECK_THROWS(ds2.k(), PDIFF_ERR_NULL_POINTER);
    ds2 = std::move(moved);
    CHECK(ds2 && !moved && ds2.param_count() == D, "move assignment");

    std::vector<float> one(data.begin(), data.begin() + D);
    CHECK_THROWS(pdiff::Dataset::from_memory(LAYOUT, one), PDIFF_ERR_INVALID_ARGUMENT);  // K = 1
    std::vector<float> ragged(data.begin(), data.end() - 1);
    CHECK_THROWS(pdiff::Dataset::from_memory(LAYOUT, ragged), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(pdiff::Dataset::from_memory({}, data), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(pdiff::Dataset::from_memory({{"w", {ROWS, COLS}}, {"w", {ROWS}}}, data), PDIFF_ERR_INVALID_ARGUMENT);
    std::vector<float> bad = data;
    bad[3 * D + 5] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS(pdiff::Dataset::from_memory(LAYOUT, bad), PDIFF_ERR_CHECKPOINT);
    CHECK_THROWS(pdiff::Dataset::load_dir("/nonexistent/pdiff-ckpts"), PDIFF_ERR_IO);
    try {
        pdiff::Dataset::load_dir("/nonexistent/pdiff-ckpts", {"fc*"});
        CHECK(false, "no exception");
    } catch (const pdiff::Error& e) {
        CHECK(e.message() == pdiff_last_error(), "message is pdiff_last_error(): " << e.message());
        CHECK(std::string(e.what()).find("/nonexistent/pdiff-ckpts") != std::string::npos, e.what());
    }
}

static pdiff::Generator training_tests(const std::vector<float>& data, const std::string& tmp) {
    auto ds = pdiff::Dataset::from_memory(LAYOUT, data);
    pdiff_train_options o = c_test_options();
    CHECK(o.struct_size == sizeof(pdiff_train_options) && o.preset == PDIFF_PRESET_AUTO && o.threads == 0, "train defaults");

    // Errors become exceptions with the right status.
    pdiff_train_options wrong = o;
    wrong.struct_size = 1;
    CHECK_THROWS(pdiff::Generator::train(ds, wrong), PDIFF_ERR_STRUCT_SIZE);
    wrong = o;
    wrong.preset = 7;
    CHECK_THROWS(pdiff::Generator::train(ds, wrong), PDIFF_ERR_INVALID_ARGUMENT);
    CHECK_THROWS(pdiff::Generator::train(pdiff::Dataset(), o), PDIFF_ERR_NULL_POINTER);

    // Cancel from the progress callback.
    int cancel_calls = 0;
    CHECK_THROWS(pdiff::Generator::train(ds, o,
                                         [&](const std::string&, size_t, size_t, double) {
                                             cancel_calls++;
                                             return false;
                                         }),
                 PDIFF_ERR_CANCELLED);
    CHECK(cancel_calls == 1, "cancelled after the first step, " << cancel_calls << " calls");

    // An exception in the callback stops training and reaches the caller unchanged.
    bool got = false;
    try {
        pdiff::Generator::train(ds, o, [](const std::string&, size_t step, size_t, double) -> bool {
            if (step == 3) throw std::logic_error("from the callback");
            return true;
        });
    } catch (const std::logic_error& e) {
        got = std::string(e.what()) == "from the callback";
    }
    CHECK(got, "callback exception propagated");

    // Real training, the C test's configuration.
    int calls = 0, ae = 0, diffusion = 0, bad = 0;
    size_t last_step = 0, last_total = 0;
    auto gen = pdiff::Generator::train(ds, o, [&](const std::string& stage, size_t step, size_t total, double loss) {
        calls++;
        if (stage == "autoencoder") ae++;
        else if (stage == "diffusion") diffusion++;
        else bad++;
        if (step < 1 || step > total || std::isnan(loss)) bad++;
        last_step = step;
        last_total = total;
        return true;
    });
    CHECK(calls == 40 && ae == 20 && diffusion == 20 && bad == 0,
          "progress " << calls << " (ae " << ae << ", diffusion " << diffusion << ", bad " << bad << ")");
    CHECK(last_step == 20 && last_total == 20, "last step " << last_step << "/" << last_total);
    CHECK(gen.param_count() == D, "generator D " << gen.param_count());
    // The dataset's warning first, then training's, if any (20 autoencoder steps).
    const std::vector<std::string> w = gen.warnings();
    CHECK(!w.empty() && w.size() <= 2 && w[0] == ds.warnings()[0], w.size() << " generator warnings");
    for (size_t i = 1; i < w.size(); i++) CHECK(w[i].rfind("the autoencoder reconstructs", 0) == 0, w[i]);
    CHECK_THROWS(pdiff::Generator().warnings(), PDIFF_ERR_NULL_POINTER);
    CHECK_THROWS(pdiff::Generator().export_bundle(tmp + "/never"), PDIFF_ERR_NULL_POINTER);
    {
        // Never over what libpdiff did not write: refused; forced, beside it, untouched.
        const std::string home = tmp + "/export-home";
        fs::create_directory(home);
        write_text(home + "/notes.txt", "my notes");
        CHECK_THROWS(gen.export_bundle(home), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(!fs::exists(home + "/pdiff.json"), "nothing written when refused");
        CHECK_THROWS(gen.export_bundle(home, 0x80), PDIFF_ERR_INVALID_ARGUMENT);
        gen.export_bundle(home, PDIFF_OUTPUT_FORCE);
        CHECK(fs::exists(home + "/pdiff.json") && read_text(home + "/notes.txt") == "my notes",
              "forced: the bundle beside the host's file, which is unchanged");
    }
    return gen;
}

static void sampler_tests(const std::string& bundle, const std::string& tmp) {
    CHECK_THROWS(pdiff::Sampler(tmp + "/no-such-bundle", pdiff::sampler_options(PDIFF_PROVIDER_CPU)),
                 PDIFF_ERR_BUNDLE);
    pdiff_sampler_options bad = pdiff::sampler_options(PDIFF_PROVIDER_CPU);
    bad.struct_size = 1;
    CHECK_THROWS(pdiff::Sampler(bundle, bad), PDIFF_ERR_STRUCT_SIZE);
    bad = pdiff::sampler_options();
    bad.provider = 42;
    CHECK_THROWS(pdiff::Sampler::open(bundle, bad), PDIFF_ERR_INVALID_ARGUMENT);
    bad = pdiff::sampler_options(PDIFF_PROVIDER_CPU, 0x80000000u);  // device_index beyond INT32_MAX
    CHECK(bad.device_index == 0x80000000u && pdiff::sampler_options().device_index == 0, "device_index");
    CHECK_THROWS(pdiff::Sampler(bundle, bad), PDIFF_ERR_INVALID_ARGUMENT);

    pdiff_sampler_options so = pdiff::sampler_options(PDIFF_PROVIDER_CPU);
    so.intra_threads = 1;
    pdiff::Sampler s = pdiff::Sampler::open(bundle, so);
    CHECK(s.backend() == "onnxruntime-cpu", s.backend());
    CHECK(s.param_count() == D && s.tensor_count() == 2, "D " << s.param_count() << ", tensors " << s.tensor_count());
    auto layout = s.layout();
    CHECK(layout.size() == 2, layout.size());
    if (layout.size() == 2) {
        CHECK(layout[0].name == "w" && layout[0].shape == std::vector<size_t>({ROWS, COLS}) && layout[0].offset == 0,
              layout[0].name);
        CHECK(layout[1].name == "b" && layout[1].shape == std::vector<size_t>({ROWS}) && layout[1].offset == ROWS * COLS,
              layout[1].name);
        CHECK(layout[0].size() == ROWS * COLS && layout[1].size() == ROWS, "sizes");
    }

    // Sampling: vector and caller-buffer overloads agree, seeds are deterministic.
    auto opts = pdiff::ddim(7, 10);
    CHECK(opts.struct_size == sizeof(pdiff_sample_options) && opts.sampler == PDIFF_SAMPLER_DDIM && opts.ddim_steps == 10,
          "ddim options");
    std::vector<float> a = s.sample(3, opts);
    CHECK(a.size() == 3 * D && all_finite(a), "size " << a.size());
    std::vector<float> b(3 * D + 5, -1.0f);
    s.sample(3, b.data(), b.size(), opts);
    CHECK(std::memcmp(a.data(), b.data(), 3 * D * sizeof(float)) == 0, "buffer overload equals vector overload");
    CHECK(b[3 * D] == -1.0f && b[3 * D + 4] == -1.0f, "nothing written past n x D");
    CHECK(!same_bits(a, s.sample(3, pdiff::ddim(8, 10))), "different seed, different samples");
    CHECK(same_bits(a, s.sample(3, pdiff::ddim(7, 10))), "same seed, same samples");
    CHECK(s.sample(1).size() == D, "library defaults");
    std::vector<float> d1 = s.sample(1, pdiff::ddpm(5));
    CHECK(d1.size() == D && all_finite(d1), "DDPM");

    // One model as an ONNX Runtime adapter: identifier TORT, model 1's tensors inside.
    {
        std::vector<std::uint8_t> ad = s.sample_adapter(1, opts);
        CHECK(ad.size() > D * sizeof(float) && std::memcmp(ad.data() + 4, "TORT", 4) == 0, "adapter of " << ad.size() << " bytes");
        const std::uint8_t* w = reinterpret_cast<const std::uint8_t*>(a.data() + D);
        bool found = false;
        for (size_t i = 0; i + ROWS * COLS * sizeof(float) <= ad.size() && !found; i++) {
            found = std::memcmp(ad.data() + i, w, ROWS * COLS * sizeof(float)) == 0;
        }
        CHECK(found, "model 1's tensor w in its adapter bit for bit");
    }

    // Straight into the host's tensors: the same bits as sample(), by name and by index.
    {
        std::vector<float> w(3 * ROWS * COLS, -1.0f), bias(3 * ROWS, -1.0f);
        s.sample_tensors(3, {{"b", bias.data(), bias.size()}, {size_t(0), w.data(), w.size()}}, opts);
        bool same = true;
        for (size_t i = 0; i < 3; i++) {
            same = same && std::memcmp(w.data() + i * ROWS * COLS, a.data() + i * D, ROWS * COLS * sizeof(float)) == 0;
            same = same && std::memcmp(bias.data() + i * ROWS, a.data() + i * D + ROWS * COLS, ROWS * sizeof(float)) == 0;
        }
        CHECK(same, "sample_tensors equals sample() bit for bit");
        CHECK_THROWS(s.sample_tensors(3, {{"nope", w.data(), w.size()}}, opts), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK_THROWS(s.sample_tensors(3, {{"w", w.data(), w.size() - 1}}, opts), PDIFF_ERR_INVALID_ARGUMENT);
        CHECK_THROWS(s.sample_tensors(3, {{"b", nullptr, bias.size()}}, opts), PDIFF_ERR_NULL_POINTER);
        CHECK_THROWS(s.sample_tensors(3, {{"b", bias.data(), bias.size()}, {size_t(1), bias.data(), bias.size()}}, opts),
                     PDIFF_ERR_INVALID_ARGUMENT);
        try {
            s.sample_tensors(3, {{"w", w.data(), 5}}, opts);
        } catch (const pdiff::Error& e) {
            CHECK(std::strstr(e.what(), "tensor 'w'") != nullptr, e.what());
        }
    }

    CHECK_THROWS(s.sample(3, b.data(), 3 * D - 1, opts), PDIFF_ERR_BUFFER_TOO_SMALL);
    CHECK_THROWS(s.sample(0, opts), PDIFF_ERR_INVALID_ARGUMENT);
    auto sbad = opts;
    sbad.ddim_steps = 0;
    CHECK_THROWS(s.sample(3, sbad), PDIFF_ERR_INVALID_ARGUMENT);
    sbad = opts;
    sbad.struct_size += 8;
    CHECK_THROWS(s.sample(3, sbad), PDIFF_ERR_STRUCT_SIZE);

    // Progress and clip count: the same count from every way out, steps rising to the total,
    // false cancels, an exception stops the call and reaches the caller.
    {
        size_t calls = 0, last = 0, total = 0;
        bool rising = true;
        const pdiff::SampleProgress count = [&](size_t step, size_t t) {
            calls++;
            rising = rising && step > last && step <= t;
            last = step;
            total = t;
            return true;
        };
        std::vector<float> p(3 * D);
        const pdiff::ClipCount flat = s.sample(3, p.data(), p.size(), opts, count);
        CHECK(same_bits(p, a) && calls == 10 && last == 10 && total == 10 && rising,
              "progress " << calls << " calls, last " << last << "/" << total);
        CHECK(flat.latents <= 3 && flat.values >= flat.latents, "clip count " << flat.latents << "/" << flat.values);
        std::vector<float> w(3 * ROWS * COLS), bias(3 * ROWS);
        const pdiff::ClipCount tensors = s.sample_tensors(3, {{"w", w.data(), w.size()}, {"b", bias.data(), bias.size()}}, opts);
        const pdiff::ClipCount files = s.sample_to_dir(3, tmp + "/progress", opts, 0, count);
        const pdiff::Best best = s.best_of_n(3, [](const float* x, size_t len) { return neg_sum_sq(x, len); }, opts, count);
        pdiff::ClipCount through_options{99, 99};
        auto with_out = opts;
        with_out.clipped = &through_options;
        CHECK(same_bits(s.sample(3, with_out), a), "options.clipped: same samples");
        const auto same = [&](const pdiff::ClipCount& c) { return c.latents == flat.latents && c.values == flat.values; };
        CHECK(same(tensors) && same(files) && same(best.clipped) && same(through_options),
              "one clip count for the same models: " << flat.latents << ", " << tensors.latents << ", " << files.latents
                                                     << ", " << best.clipped.latents << ", " << through_options.latents);

        calls = 0;
        CHECK_THROWS(s.sample(3, opts, [&](size_t step, size_t) { calls++; return step < 4; }), PDIFF_ERR_CANCELLED);
        CHECK(calls == 4, "cancelled at step 4 after " << calls << " calls");
        CHECK_THROWS(s.sample_to_dir(3, tmp + "/cancelled", opts, 0, [](size_t, size_t) { return false; }),
                     PDIFF_ERR_CANCELLED);
        CHECK(!fs::exists(tmp + "/cancelled"), "a cancelled sample_to_dir writes nothing");
        bool got = false;
        try {
            s.sample_tensors(3, {{"w", w.data(), w.size()}}, opts, [](size_t step, size_t) -> bool {
                if (step == 2) throw std::runtime_error("from the progress callback");
                return true;
            });
        } catch (const std::runtime_error& e) {
            got = std::string(e.what()) == "from the progress callback";
        }
        CHECK(got, "progress exception propagated");
    }

    // Best of N with a std::function.
    {
        const size_t n = 5;
        auto bo = pdiff::ddim(11, 10);
        int calls = 0;
        auto best = s.best_of_n(
            n,
            [&](const float* p, size_t len) {
                calls++;
                return len == D ? neg_sum_sq(p, len) : 0.0;
            },
            bo);
        std::vector<float> all = s.sample(n, bo);
        size_t argmax = 0;
        for (size_t i = 1; i < n; i++)
            if (neg_sum_sq(&all[i * D], D) > neg_sum_sq(&all[argmax * D], D)) argmax = i;
        CHECK(calls == (int)n, calls << " score calls");
        CHECK(best.index == argmax, "best " << best.index << ", recomputed " << argmax);
        CHECK(best.score == neg_sum_sq(&all[argmax * D], D), best.score);
        CHECK(best.params.size() == D && std::memcmp(best.params.data(), &all[argmax * D], D * sizeof(float)) == 0,
              "best vector is the argmax sample");
        float buf[D];
        auto best2 = s.best_of_n(n, [](const float* p, size_t len) { return neg_sum_sq(p, len); }, buf, D, bo);
        CHECK(best2.index == argmax && best2.params.empty() && std::memcmp(buf, best.params.data(), sizeof buf) == 0,
              "buffer overload");
        CHECK_THROWS(s.best_of_n(n, [](const float*, size_t) { return 0.0; }, buf, D - 1, bo),
                     PDIFF_ERR_BUFFER_TOO_SMALL);
        CHECK_THROWS(s.best_of_n(n, pdiff::Sampler::Score(), bo), PDIFF_ERR_NULL_POINTER);
        CHECK_THROWS(s.best_of_n(n, [](const float*, size_t) { return std::nan(""); }, bo), PDIFF_ERR_INVALID_ARGUMENT);
        int thrown_calls = 0;
        bool got = false;
        try {
            s.best_of_n(n, [&](const float*, size_t) -> double {
                thrown_calls++;
                throw std::out_of_range("score failed");
            }, bo);
        } catch (const std::out_of_range& e) {
            got = std::string(e.what()) == "score failed";
        }
        CHECK(got && thrown_calls == 1, "score exception propagated after " << thrown_calls << " call(s)");
    }

    // To a directory.
    s.sample_to_dir(2, tmp + "/generated", opts);
    CHECK(fs::exists(tmp + "/generated/gen_0000.safetensors") && fs::exists(tmp + "/generated/gen_0001.safetensors"),
          "generated files");
    s.sample_to_dir(1, tmp + "/generated", opts);  // a previous output: replaced
    CHECK(!fs::exists(tmp + "/generated/gen_0001.safetensors"), "the old gen_0001 went with the previous output");
    {
        // Never over what libpdiff did not write: refused; forced, beside it, untouched.
        const std::string home = tmp + "/sample-home";
        fs::create_directory(home);
        write_text(home + "/notes.txt", "my notes");
        CHECK_THROWS(s.sample_to_dir(2, home, opts), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(!fs::exists(home + "/gen_0000.safetensors"), "nothing written when refused");
        s.sample_to_dir(2, home, opts, PDIFF_OUTPUT_FORCE);
        CHECK(fs::exists(home + "/gen_0001.safetensors") && read_text(home + "/notes.txt") == "my notes",
              "forced: written beside the host's file, which is unchanged");
        write_text(tmp + "/a-file", "a file");
        CHECK_THROWS(s.sample_to_dir(2, tmp + "/a-file", opts, PDIFF_OUTPUT_FORCE), PDIFF_ERR_OUTPUT_EXISTS);
        CHECK(read_text(tmp + "/a-file") == "a file", "the file is unchanged");
    }

    // Threads: one sampler, const calls from several threads == sequential results.
    {
        const int threads = 4;
        std::vector<std::vector<float>> got(threads), expect(threads);
        for (int i = 0; i < threads; i++) expect[i] = s.sample(2, pdiff::ddim(1000 + i, 10));
        std::vector<std::thread> pool;
        for (int i = 0; i < threads; i++)
            pool.emplace_back([&, i] { got[i] = s.sample(2, pdiff::ddim(1000 + i, 10)); });
        for (auto& t : pool) t.join();
        for (int i = 0; i < threads; i++) CHECK(same_bits(got[i], expect[i]), "thread " << i);
    }

    // Moved-from sampler.
    pdiff::Sampler other = std::move(s);
    CHECK(other && !s, "moved");
    CHECK_THROWS(s.sample(1), PDIFF_ERR_NULL_POINTER);
    CHECK_THROWS(s.backend(), PDIFF_ERR_NULL_POINTER);
}

// A conditional generator through the C++ API: the C test's checkpoints split into two tasks,
// conditioned on (1, 0) and (0, 1). Short training: the API's contract, not the quality
// (tests/conditional.rs and the Python test check that).
static void conditional_tests(const std::vector<float>& data, const std::string& tmp) {
    const size_t k = data.size() / D;
    std::vector<float> conditions;
    for (size_t i = 0; i < k; i++) {
        conditions.push_back(i % 2 == 0 ? 1.0f : 0.0f);
        conditions.push_back(i % 2 == 0 ? 0.0f : 1.0f);
    }
    auto ds = pdiff::Dataset::from_memory_conditional(LAYOUT, data, conditions, 2);
    CHECK(ds.condition_dim() == 2 && ds.k() == k, "conditional dataset: C " << ds.condition_dim());
    CHECK_THROWS(pdiff::Dataset::from_memory_conditional(LAYOUT, data, std::vector<float>(3, 0.0f), 2),
                 PDIFF_ERR_INVALID_ARGUMENT);
    pdiff::Generator gen = pdiff::Generator::train(ds, c_test_options());
    gen.export_bundle(tmp + "/cond-bundle");
    pdiff::Sampler s(tmp + "/cond-bundle");
    CHECK(s.condition_dim() == 2 && s.condition_names().empty(), "sampler condition dim " << s.condition_dim());
    const std::vector<float> a = {1.0f, 0.0f}, b = {0.0f, 1.0f};
    std::vector<float> to_a = s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), a));
    std::vector<float> to_b = s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), b));
    CHECK(to_a.size() == 4 * D && all_finite(to_a) && !same_bits(to_a, to_b), "conditions give different vectors");
    CHECK(same_bits(to_a, s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), a))), "same condition, same bits");
    // One condition per vector: row i as if sampled with its own condition alone.
    std::vector<float> per_row = {1.0f, 0.0f, 0.0f, 1.0f, 1.0f, 0.0f, 0.0f, 1.0f};
    std::vector<float> mixed = s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), per_row));
    CHECK(std::equal(mixed.begin(), mixed.begin() + D, to_a.begin()) &&
              std::equal(mixed.begin() + D, mixed.begin() + 2 * D, to_b.begin() + D),
          "per-row conditions");
    std::vector<float> guided = s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), a, 3.0));
    CHECK(!same_bits(guided, to_a), "guidance 3 differs from guidance 1");
    std::vector<float> three = {1.0f, 0.0f, 0.0f};
    CHECK_THROWS(s.sample(4, pdiff::with_condition(pdiff::ddim(5, 10), three)), PDIFF_ERR_INVALID_ARGUMENT);
    // The unconditional bundle refuses a condition.
    pdiff::Sampler plain(tmp + "/bundle");
    CHECK(plain.condition_dim() == 0, "unconditional bundle");
    CHECK_THROWS(plain.sample(1, pdiff::with_condition(pdiff::ddim(5, 10), a)), PDIFF_ERR_INVALID_ARGUMENT);
}

int main(int argc, char** argv) {
    std::string given_bundle, expect_file, out_file;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "--bundle" && i + 1 < argc) given_bundle = argv[++i];
        else if (a == "--expect" && i + 1 < argc) expect_file = argv[++i];
        else if (a == "--out" && i + 1 < argc) out_file = argv[++i];
        else {
            std::cerr << "usage: " << argv[0] << " [--bundle DIR [--expect FILE] [--out FILE]]\n";
            return 2;
        }
    }

    try {
        pdiff::check_abi();
        passed++;
        // Status names come from the library (pdiff_status_name).
        CHECK(std::string(pdiff::status_name(PDIFF_ERR_BUNDLE)) == "PDIFF_ERR_BUNDLE" &&
                  std::string(pdiff::status_name(PDIFF_OK)) == "PDIFF_OK" &&
                  std::string(pdiff::status_name(PDIFF_ERR_OUTPUT_EXISTS)) == "PDIFF_ERR_OUTPUT_EXISTS",
              "status names");
        CHECK(std::string(pdiff_status_name(99)) == "PDIFF_STATUS_UNKNOWN", "unknown status");
        CHECK(pdiff::abi_version() == PDIFF_ABI_VERSION && !pdiff::version().empty(), "versions");

        char tmpl[] = "/tmp/pdiff-cpp-test-XXXXXX";
        if (!mkdtemp(tmpl)) {
            std::perror("mkdtemp");
            return 1;
        }
        const std::string tmp = tmpl;

        const std::vector<float> data = c_test_data();
        dataset_tests(data);
        {
            pdiff::Generator gen = training_tests(data, tmp);
            gen.export_bundle(tmp + "/bundle");
        }  // the bundle outlives the generator
        sampler_tests(tmp + "/bundle", tmp);
        conditional_tests(data, tmp);

        if (!given_bundle.empty()) {
            std::vector<float> theirs = reference_samples(given_bundle);
            CHECK(theirs.size() == 3 * D && all_finite(theirs), "given bundle: " << theirs.size() << " floats");
            if (!expect_file.empty()) {
                std::vector<float> expect = read_f32(expect_file);
                CHECK(expect.size() == 3 * D, expect_file << ": " << expect.size() << " floats");
                CHECK(same_bits(theirs, expect), "the given bundle reproduces the C program's samples bit for bit");
                // Training is deterministic on the CPU: the generator trained here from the
                // C test's data and options reproduces the C-trained bundle's samples.
                CHECK(same_bits(reference_samples(tmp + "/bundle"), expect),
                      "the generator trained in C++ reproduces the C program's samples bit for bit");
            }
            if (!out_file.empty()) CHECK(write_f32(out_file, theirs), "cannot write " << out_file);
        }
        fs::remove_all(tmp);
    } catch (const pdiff::Error& e) {
        failed++;
        std::cerr << "FAIL: uncaught pdiff::Error " << pdiff::status_name(e.status()) << ": " << e.what() << "\n";
    } catch (const std::exception& e) {
        failed++;
        std::cerr << "FAIL: uncaught exception: " << e.what() << "\n";
    }

    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
