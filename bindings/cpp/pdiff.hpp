// pdiff.hpp: header-only C++17 RAII wrapper over the stable C ABI of libpdiff (pdiff.h).
// SPDX-License-Identifier: Apache-2.0
//
//   #include <pdiff.hpp>          // includes pdiff.h; link with -lpdiff
//
//   auto ds  = pdiff::Dataset::from_memory({{"w", {4, 8}}, {"b", {4}}}, data);   // K x D floats
//   auto to  = pdiff::train_options();  to.seed = 3;  // to.threads: libtorch threads (0: cores available)
//   auto gen = pdiff::Generator::train(ds, to, [](const std::string&, size_t, size_t, double) {
//       return true;                                                            // false: cancel
//   });
//   gen.export_bundle("bundle");
//   pdiff::Sampler s("bundle");
//   std::vector<float> p = s.sample(100, pdiff::ddim(/*seed*/ 7, /*steps*/ 50)); // 100 x D
//   pdiff::ClipCount c = s.sample(100, p.data(), p.size(), pdiff::ddim(7, 50),
//                                 [](size_t step, size_t total) { return true; });  // false: cancel
//
// Conventions:
//  - Dataset, Generator and Sampler own one handle each: move-only, released by their
//    destructor (the NULL-safe pdiff_*_free). A moved-from object is empty (`!obj`); using it
//    throws pdiff::Error(PDIFF_ERR_NULL_POINTER).
//  - Every failing call throws pdiff::Error, carrying the pdiff_status and pdiff_last_error().
//  - Options are the C structs, initialised by the *_default functions (train_options(),
//    sampler_options(), sample_options()); change their fields before passing them.
//  - Every sampling call of Sampler takes an optional progress callback (step, total) as its
//    last argument (false cancels: pdiff::Error(PDIFF_ERR_CANCELLED)) and reports the call's
//    clip count (pdiff::ClipCount: returned, in Best::clipped, or through options.clipped).
//  - Exceptions thrown by a progress or score callback never cross the C boundary: they are
//    caught, the library call is stopped (progress) or the remaining candidates get NaN
//    (score), and the exception is rethrown once the C call has returned.
//  - Sampler's const member functions may be called concurrently from several threads.
//  - Dataset, Generator and train_options() exist when pdiff.h declares training
//    (PDIFF_FEATURE_TRAIN, a full build); with a serve-only libpdiff only Sampler does.
//    has_training() asks the library actually loaded.
#ifndef PDIFF_HPP
#define PDIFF_HPP

#include "pdiff.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pdiff {

// ---- errors ----

/// Name of a status, e.g. "PDIFF_ERR_BUNDLE" (pdiff_status_name(); "PDIFF_STATUS_UNKNOWN" for a
/// value this library does not know).
inline const char* status_name(pdiff_status status) noexcept { return pdiff_status_name(status); }

/// A failed pdiff call: `status()` is the pdiff_status, `what()` / `message()` the library's
/// message (pdiff_last_error() at the time of the failure).
class Error : public std::runtime_error {
public:
    Error(pdiff_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    pdiff_status status() const noexcept { return status_; }
    std::string message() const { return what(); }

private:
    pdiff_status status_;
};

namespace detail {
/// Throw pdiff::Error for a failed status, copying the thread's last error message.
inline void check(pdiff_status status) {
    if (status != PDIFF_OK) throw Error(status, pdiff_last_error());
}

template <class T>
void require(const T* handle, const char* what) {
    if (handle == nullptr)
        throw Error(PDIFF_ERR_NULL_POINTER, std::string(what) + " is empty (moved from?)");
}

inline size_t checked_mul(size_t a, size_t b) {
    if (b != 0 && a > std::numeric_limits<size_t>::max() / b)
        throw Error(PDIFF_ERR_INVALID_ARGUMENT, "size overflow: " + std::to_string(a) + " x " + std::to_string(b));
    return a * b;
}

#if defined(PDIFF_FEATURE_TRAIN)
struct DatasetFree { void operator()(pdiff_dataset* p) const noexcept { pdiff_dataset_free(p); } };
struct GeneratorFree { void operator()(pdiff_generator* p) const noexcept { pdiff_generator_free(p); } };
#endif
struct SamplerFree { void operator()(pdiff_sampler* p) const noexcept { pdiff_sampler_free(p); } };
}  // namespace detail

// ---- versions ----

/// The library version, e.g. "0.1.0".
inline std::string version() { return pdiff_version(); }

/// The ABI version of the loaded library (compare with PDIFF_ABI_VERSION).
inline uint32_t abi_version() noexcept { return pdiff_abi_version(); }

/// Throws pdiff::Error(PDIFF_ERR_INVALID_ARGUMENT) when the loaded library implements another
/// ABI than the header this program was compiled with.
inline void check_abi() {
    if (pdiff_abi_version() != PDIFF_ABI_VERSION)
        throw Error(PDIFF_ERR_INVALID_ARGUMENT,
                    "libpdiff implements ABI " + std::to_string(pdiff_abi_version()) + ", pdiff.h declares " +
                        std::to_string(PDIFF_ABI_VERSION));
}

/// Whether the loaded library has training (pdiff_capabilities() & PDIFF_CAPABILITY_TRAIN).
inline bool has_training() noexcept { return (pdiff_capabilities() & PDIFF_CAPABILITY_TRAIN) != 0; }

// ---- options: the C structs with the library's defaults ----

#if defined(PDIFF_FEATURE_TRAIN)
inline pdiff_train_options train_options() {
    pdiff_train_options o{};
    detail::check(pdiff_train_options_default(&o));
    return o;
}
#endif

inline pdiff_sampler_options sampler_options() {
    pdiff_sampler_options o{};
    detail::check(pdiff_sampler_options_default(&o));
    return o;
}

/// Sampler options with an explicit execution provider (e.g. PDIFF_PROVIDER_CPU) and, for
/// CUDA, its device index.
inline pdiff_sampler_options sampler_options(pdiff_provider provider, uint32_t device_index = 0) {
    pdiff_sampler_options o = sampler_options();
    o.provider = provider;
    o.device_index = device_index;
    return o;
}

inline pdiff_sample_options sample_options() {
    pdiff_sample_options o{};
    detail::check(pdiff_sample_options_default(&o));
    return o;
}

/// DDIM sampling with `seed`; `steps` = 0 keeps the library's default (50).
inline pdiff_sample_options ddim(uint64_t seed, size_t steps = 0) {
    pdiff_sample_options o = sample_options();
    o.sampler = PDIFF_SAMPLER_DDIM;
    o.seed = seed;
    if (steps != 0) o.ddim_steps = steps;
    return o;
}

/// `options` for a conditional generator: `condition` holds C floats (one condition for every
/// vector) or n x C (one per vector); `guidance` is the classifier-free guidance scale (1: the
/// plain conditional model). The options borrow `condition`: it must outlive the calls that
/// use them.
inline pdiff_sample_options with_condition(pdiff_sample_options options, const std::vector<float>& condition,
                                           double guidance = 1.0) {
    options.condition = condition.empty() ? nullptr : condition.data();
    options.condition_len = condition.size();
    options.guidance = guidance;
    return options;
}

/// Ancestral DDPM sampling (all T steps) with `seed`.
inline pdiff_sample_options ddpm(uint64_t seed) {
    pdiff_sample_options o = sample_options();
    o.sampler = PDIFF_SAMPLER_DDPM;
    o.seed = seed;
    return o;
}

// ---- layouts ----

/// Declaration of one tensor of a parameter vector pushed from memory.
struct TensorDecl {
    std::string name;
    std::vector<size_t> shape;  // empty: a scalar
};

/// One tensor of a generated parameter vector: name, shape and offset (in floats) in it.
struct TensorInfo {
    std::string name;
    std::vector<size_t> shape;
    size_t offset = 0;
    /// Number of elements (1 for a scalar).
    size_t size() const {
        size_t n = 1;
        for (size_t d : shape) n = detail::checked_mul(n, d);
        return n;
    }
};

/// Where one tensor of the generated models goes (Sampler::sample_tensors): the host's own
/// memory of `len` floats, n x numel of the tensor (model i's values at data[i * numel ..]).
/// The tensor is named by `name`, or by `index` when `name` is empty.
struct TensorBuffer {
    std::string name;
    size_t index = 0;
    float* data = nullptr;
    size_t len = 0;
    /// Tensor `name` into data[0..len].
    TensorBuffer(std::string tensor_name, float* out, size_t out_len) : name(std::move(tensor_name)), data(out), len(out_len) {}
    /// Tensor number `tensor_index` (layout order) into data[0..len].
    TensorBuffer(size_t tensor_index, float* out, size_t out_len) : index(tensor_index), data(out), len(out_len) {}
};

#if defined(PDIFF_FEATURE_TRAIN)
// ---- Dataset ----

/// K checkpoints of one network and their layout (pdiff_dataset). Move-only.
class Dataset {
public:
    Dataset() noexcept = default;
    /// Adopt a handle (ownership is transferred).
    explicit Dataset(pdiff_dataset* handle) noexcept : h_(handle) {}

    /// K flat parameter vectors, row-major: `data` holds `len` = K x D floats, D being the
    /// layout's element count. The values are copied.
    static Dataset from_memory(const std::vector<TensorDecl>& layout, const float* data, size_t len) {
        size_t d = 0;
        for (const TensorDecl& t : layout) {
            size_t n = 1;
            for (size_t x : t.shape) n = detail::checked_mul(n, x);
            d += n;
        }
        if (layout.empty()) throw Error(PDIFF_ERR_INVALID_ARGUMENT, "the layout declares no tensor");
        if (d == 0) throw Error(PDIFF_ERR_INVALID_ARGUMENT, "the layout has no elements");
        if (len % d != 0)
            throw Error(PDIFF_ERR_INVALID_ARGUMENT, "data holds " + std::to_string(len) +
                                                        " floats, not a multiple of D = " + std::to_string(d));
        const std::vector<pdiff_tensor_decl> decls = tensor_decls(layout);
        pdiff_dataset* out = nullptr;
        detail::check(pdiff_dataset_from_memory(decls.data(), decls.size(), data, len / d, &out));
        return Dataset(out);
    }

    static Dataset from_memory(const std::vector<TensorDecl>& layout, const std::vector<float>& data) {
        return from_memory(layout, data.data(), data.size());
    }

    /// As from_memory, for a conditional generator: `conditions` holds K x `condition_dim`
    /// floats, row-major, checkpoint i's condition in row i. Copied.
    static Dataset from_memory_conditional(const std::vector<TensorDecl>& layout, const std::vector<float>& data,
                                           const std::vector<float>& conditions, size_t condition_dim) {
        if (condition_dim == 0 || conditions.size() % condition_dim != 0)
            throw Error(PDIFF_ERR_INVALID_ARGUMENT, "conditions hold " + std::to_string(conditions.size()) +
                                                        " floats, not a multiple of C = " + std::to_string(condition_dim));
        const std::vector<pdiff_tensor_decl> decls = tensor_decls(layout);
        const size_t k = conditions.size() / condition_dim;
        pdiff_dataset* out = nullptr;
        detail::check(pdiff_dataset_from_memory_conditional(decls.data(), decls.size(), data.data(), k, conditions.data(),
                                                            condition_dim, &out));
        return Dataset(out);
    }

    /// As load_dir, with each checkpoint's condition vector from `conditions_file` (.json or
    /// .csv; see docs/api.md, "Conditional generation").
    static Dataset load_dir_conditional(const std::string& dir, const std::string& conditions_file,
                                        const std::vector<std::string>& patterns = {}) {
        const std::vector<const char*> p = c_strings(patterns);
        pdiff_dataset* out = nullptr;
        detail::check(pdiff_dataset_load_dir_conditional(dir.c_str(), p.empty() ? nullptr : p.data(), p.size(),
                                                         conditions_file.c_str(), &out));
        return Dataset(out);
    }

    /// C of the checkpoints' condition vectors; 0 without conditions.
    size_t condition_dim() const { return pdiff_dataset_condition_dim(checked()); }

    /// Every *.safetensors file of `dir` (sorted by name) as one checkpoint. `patterns`: exact
    /// tensor names or globs; empty: every floating-point tensor.
    static Dataset load_dir(const std::string& dir, const std::vector<std::string>& patterns = {}) {
        const std::vector<const char*> p = c_strings(patterns);
        pdiff_dataset* out = nullptr;
        detail::check(pdiff_dataset_load_dir(dir.c_str(), p.empty() ? nullptr : p.data(), p.size(), &out));
        return Dataset(out);
    }

    size_t k() const { return pdiff_dataset_k(checked()); }
    size_t param_count() const { return pdiff_dataset_param_count(checked()); }
    std::vector<std::string> warnings() const {
        const pdiff_dataset* h = checked();
        std::vector<std::string> w;
        const size_t n = pdiff_dataset_warning_count(h);
        for (size_t i = 0; i < n; i++) {
            const char* s = pdiff_dataset_warning(h, i);
            w.emplace_back(s ? s : "");
        }
        return w;
    }

    const pdiff_dataset* get() const noexcept { return h_.get(); }
    /// Give up ownership: the caller must pdiff_dataset_free the result.
    pdiff_dataset* release() noexcept { return h_.release(); }
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    /// The C declarations of `layout` (borrowing its names and shapes).
    static std::vector<pdiff_tensor_decl> tensor_decls(const std::vector<TensorDecl>& layout) {
        std::vector<pdiff_tensor_decl> decls;
        decls.reserve(layout.size());
        for (const TensorDecl& t : layout)
            decls.push_back(pdiff_tensor_decl{t.name.c_str(), t.shape.size(), t.shape.empty() ? nullptr : t.shape.data()});
        return decls;
    }
    /// The C strings of `strings` (borrowed).
    static std::vector<const char*> c_strings(const std::vector<std::string>& strings) {
        std::vector<const char*> p;
        p.reserve(strings.size());
        for (const std::string& s : strings) p.push_back(s.c_str());
        return p;
    }
    const pdiff_dataset* checked() const {
        detail::require(h_.get(), "pdiff::Dataset");
        return h_.get();
    }
    std::unique_ptr<pdiff_dataset, detail::DatasetFree> h_;
};

// ---- Generator ----

/// A trained generator (pdiff_generator). Move-only.
class Generator {
public:
    /// Training progress: stage ("autoencoder" / "diffusion"), step (1..total), total, loss.
    /// Return true to continue, false to cancel (train then throws PDIFF_ERR_CANCELLED).
    using Progress = std::function<bool(const std::string& stage, size_t step, size_t total, double loss)>;

    Generator() noexcept = default;
    explicit Generator(pdiff_generator* handle) noexcept : h_(handle) {}

    /// Train on `dataset` (blocks; `progress` runs on this thread after every step). With an
    /// empty `progress`, `options.progress` / `options.user_data` are passed unchanged.
    static Generator train(const Dataset& dataset, const pdiff_train_options& options = train_options(),
                           const Progress& progress = Progress()) {
        detail::require(dataset.get(), "pdiff::Dataset");
        pdiff_train_options o = options;
        struct Ctx {
            const Progress* fn;
            std::exception_ptr error;
        } ctx{&progress, nullptr};
        if (progress) {
            o.progress = [](void* user, const char* stage, size_t step, size_t total, double loss) -> int {
                Ctx* c = static_cast<Ctx*>(user);
                try {
                    return (*c->fn)(stage ? stage : "", step, total, loss) ? 0 : 1;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
            o.user_data = &ctx;
        }
        pdiff_generator* out = nullptr;
        const pdiff_status st = pdiff_generator_train(dataset.get(), &o, &out);
        if (ctx.error) {
            pdiff_generator_free(out);
            std::rethrow_exception(ctx.error);
        }
        detail::check(st);
        return Generator(out);
    }

    /// Write the bundle directory `dir`: created, or a previous bundle replaced atomically.
    /// Files libpdiff did not write there throw PDIFF_ERR_OUTPUT_EXISTS, unless `flags` is
    /// PDIFF_OUTPUT_FORCE (the bundle is then written beside them; they are kept).
    /// (`export` is a C++ keyword.)
    void export_bundle(const std::string& dir, uint32_t flags = 0) const {
        detail::check(pdiff_generator_export_ex(checked(), dir.c_str(), flags));
    }

    size_t param_count() const { return pdiff_generator_param_count(checked()); }

    /// Health warnings: the dataset's (few or misaligned checkpoints), then training's (a
    /// reconstruction error large against the checkpoints' spread).
    std::vector<std::string> warnings() const {
        const pdiff_generator* h = checked();
        std::vector<std::string> w;
        const size_t n = pdiff_generator_warning_count(h);
        for (size_t i = 0; i < n; i++) {
            const char* s = pdiff_generator_warning(h, i);
            w.emplace_back(s ? s : "");
        }
        return w;
    }

    const pdiff_generator* get() const noexcept { return h_.get(); }
    pdiff_generator* release() noexcept { return h_.release(); }
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    const pdiff_generator* checked() const {
        detail::require(h_.get(), "pdiff::Generator");
        return h_.get();
    }
    std::unique_ptr<pdiff_generator, detail::GeneratorFree> h_;
};
#endif  // PDIFF_FEATURE_TRAIN

// ---- Sampler ----

/// How many generated latents fell outside the training range over one sampling call (see
/// pdiff_clip_count): `latents` models, `values` latent values.
using ClipCount = pdiff_clip_count;

/// Progress of one sampling call: `step` of `total` denoising steps done (rising to total).
/// Return true to continue, false to cancel (the call then throws PDIFF_ERR_CANCELLED).
using SampleProgress = std::function<bool(size_t step, size_t total)>;

/// The best of N candidates.
struct Best {
    std::vector<float> params;  // D floats
    size_t index = 0;           // 0-based index among the N candidates
    double score = 0.0;
    ClipCount clipped{};        // the clip count of all N candidates
};

/// An exported bundle served by ONNX Runtime (pdiff_sampler). Move-only; its const member
/// functions are thread-safe.
class Sampler {
public:
    using Score = std::function<double(const float* params, size_t len)>;

    Sampler() noexcept = default;
    explicit Sampler(pdiff_sampler* handle) noexcept : h_(handle) {}
    /// Open (and verify) the bundle directory `bundle_dir`.
    explicit Sampler(const std::string& bundle_dir, const pdiff_sampler_options& options = sampler_options()) {
        pdiff_sampler* out = nullptr;
        detail::check(pdiff_sampler_open(bundle_dir.c_str(), &options, &out));
        h_.reset(out);
    }
    static Sampler open(const std::string& bundle_dir, const pdiff_sampler_options& options = sampler_options()) {
        return Sampler(bundle_dir, options);
    }

    /// "onnxruntime-cpu" or "onnxruntime-cuda".
    std::string backend() const { return pdiff_sampler_backend(checked()); }
    /// D: floats per generated vector.
    size_t param_count() const { return pdiff_sampler_param_count(checked()); }
    size_t tensor_count() const { return pdiff_sampler_tensor_count(checked()); }
    /// C of a conditional generator's condition; 0 for an unconditional one.
    size_t condition_dim() const { return pdiff_sampler_condition_dim(checked()); }
    /// The names of the condition's dimensions, or an empty vector when the bundle gives none.
    std::vector<std::string> condition_names() const {
        const pdiff_sampler* h = checked();
        std::vector<std::string> names;
        const size_t c = pdiff_sampler_condition_dim(h);
        for (size_t i = 0; i < c; i++) {
            const char* s = pdiff_sampler_condition_name(h, i);
            if (!s) return {};
            names.emplace_back(s);
        }
        return names;
    }

    /// The named tensors of one generated vector, in order.
    std::vector<TensorInfo> layout() const {
        const pdiff_sampler* h = checked();
        std::vector<TensorInfo> out;
        const size_t n = pdiff_sampler_tensor_count(h);
        out.reserve(n);
        for (size_t i = 0; i < n; i++) {
            const char* name = nullptr;
            size_t ndim = 0, offset = 0;
            const size_t* shape = nullptr;
            detail::check(pdiff_sampler_tensor_info(h, i, &name, &ndim, &shape, &offset));
            TensorInfo t;
            t.name = name ? name : "";
            if (shape) t.shape.assign(shape, shape + ndim);
            t.offset = offset;
            out.push_back(std::move(t));
        }
        return out;
    }

    /// Generate `n` vectors into the caller's buffer `out[0..out_len]` (row-major, n x D
    /// floats written; PDIFF_ERR_BUFFER_TOO_SMALL when out_len < n x D). Returns the clip count.
    ClipCount sample(size_t n, float* out, size_t out_len, const pdiff_sample_options& options = sample_options(),
                     const SampleProgress& progress = SampleProgress()) const {
        const pdiff_sampler* h = checked();
        return run(options, progress, [&](const pdiff_sample_options* o) { return pdiff_sampler_sample(h, o, n, out, out_len); });
    }

    /// Generate `n` vectors: n x D floats, row-major (the clip count goes to `options.clipped`
    /// when set).
    std::vector<float> sample(size_t n, const pdiff_sample_options& options = sample_options(),
                              const SampleProgress& progress = SampleProgress()) const {
        std::vector<float> out(detail::checked_mul(n, param_count()));
        sample(n, out.data(), out.size(), options, progress);
        return out;
    }

    /// Generate `n` models straight into the host's own tensors (pdiff_sampler_sample_tensors):
    /// the values sample() gives, bit for bit, with no n x D copy in between. Each tensor once;
    /// tensors without a buffer are dropped. A bad buffer (unknown name, wrong length, null
    /// data, a tensor twice) throws pdiff::Error naming the tensor, before anything is written.
    /// Returns the clip count.
    ClipCount sample_tensors(size_t n, const std::vector<TensorBuffer>& buffers, const pdiff_sample_options& options = sample_options(),
                             const SampleProgress& progress = SampleProgress()) const {
        const pdiff_sampler* h = checked();
        std::vector<pdiff_tensor_buffer> c(buffers.size());
        for (size_t i = 0; i < buffers.size(); i++) {
            const TensorBuffer& b = buffers[i];
            c[i] = pdiff_tensor_buffer{b.name.empty() ? nullptr : b.name.c_str(), b.index, b.data, b.len};
        }
        return run(options, progress, [&](const pdiff_sample_options* o) { return pdiff_sampler_sample_tensors(h, o, n, c.data(), c.size()); });
    }

    /// Model `model_index` of these options' request (the row sample() gives there, bit for
    /// bit) as ONNX Runtime adapter bytes (pdiff_sampler_sample_adapter), ready for
    /// Ort::LoraAdapter::CreateLoraAdapterFromArray: a FLOAT parameter per tensor, named as
    /// layout() names it. The clip count goes to `options.clipped` when set.
    std::vector<std::uint8_t> sample_adapter(size_t model_index, const pdiff_sample_options& options = sample_options(),
                                             const SampleProgress& progress = SampleProgress()) const {
        const pdiff_sampler* h = checked();
        size_t size = 0;
        detail::check(pdiff_sampler_sample_adapter(h, &options, model_index, nullptr, 0, &size));
        std::vector<std::uint8_t> out(size);
        run(options, progress, [&](const pdiff_sample_options* o) { return pdiff_sampler_sample_adapter(h, o, model_index, out.data(), out.size(), &size); });
        out.resize(size);
        return out;
    }

    /// Generate `n` candidates (as sample() with the same options), score each with `score`
    /// (called n times, in order, on this thread; higher is better, NaN ranks last) and copy
    /// the best into `out[0..out_len]` (D floats). Returns {index, score, clip count} in a Best
    /// whose params are left empty.
    Best best_of_n(size_t n, const Score& score, float* out, size_t out_len,
                   const pdiff_sample_options& options = sample_options(),
                   const SampleProgress& progress = SampleProgress()) const {
        const pdiff_sampler* h = checked();
        struct Ctx {
            const Score* fn;
            std::exception_ptr error;
        } ctx{&score, nullptr};
        pdiff_score_fn cb = nullptr;
        if (score) {
            cb = [](void* user, const float* params, size_t len) -> double {
                Ctx* c = static_cast<Ctx*>(user);
                if (c->error) return std::numeric_limits<double>::quiet_NaN();
                try {
                    return (*c->fn)(params, len);
                } catch (...) {
                    c->error = std::current_exception();
                    return std::numeric_limits<double>::quiet_NaN();
                }
            };
        }
        Best best;
        best.clipped = run(options, progress, [&](const pdiff_sample_options* o) {
            const pdiff_status st = pdiff_sampler_best_of_n(h, o, n, cb, &ctx, out, out_len, &best.index, &best.score);
            if (ctx.error) std::rethrow_exception(ctx.error);
            return st;
        });
        return best;
    }

    /// As above, returning the best vector in `Best::params`.
    Best best_of_n(size_t n, const Score& score, const pdiff_sample_options& options = sample_options(),
                   const SampleProgress& progress = SampleProgress()) const {
        std::vector<float> params(param_count());
        Best best = best_of_n(n, score, params.data(), params.size(), options, progress);
        best.params = std::move(params);
        return best;
    }

    /// Write `n` vectors as dir/gen_0000.safetensors, ...: created, or a previous output
    /// replaced atomically. Files libpdiff did not write there throw PDIFF_ERR_OUTPUT_EXISTS,
    /// unless `flags` is PDIFF_OUTPUT_FORCE (written beside them; they are kept). A cancelled
    /// call writes nothing. Returns the clip count.
    ClipCount sample_to_dir(size_t n, const std::string& dir, const pdiff_sample_options& options = sample_options(),
                            uint32_t flags = 0, const SampleProgress& progress = SampleProgress()) const {
        const pdiff_sampler* h = checked();
        return run(options, progress,
                   [&](const pdiff_sample_options* o) { return pdiff_sampler_sample_to_dir_ex(h, o, n, dir.c_str(), flags); });
    }

    const pdiff_sampler* get() const noexcept { return h_.get(); }
    pdiff_sampler* release() noexcept { return h_.release(); }
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

private:
    const pdiff_sampler* checked() const {
        detail::require(h_.get(), "pdiff::Sampler");
        return h_.get();
    }

    /// Make the C call `call(&o)` with `options` plus `progress` (when given) and a clip count
    /// of its own, rethrow an exception of `progress`, throw on failure, and return the clip
    /// count (also written to `options.clipped` when the caller set it). Options of an older
    /// layout (a smaller struct_size) have no progress or clip count: the count is then 0.
    template <class Call>
    static ClipCount run(const pdiff_sample_options& options, const SampleProgress& progress, Call call) {
        pdiff_sample_options o = options;
        ClipCount clipped{};
        o.clipped = &clipped;
        struct Ctx {
            const SampleProgress* fn;
            std::exception_ptr error;
        } ctx{&progress, nullptr};
        if (progress) {
            o.progress = [](void* user, size_t step, size_t total) -> int {
                Ctx* c = static_cast<Ctx*>(user);
                try {
                    return (*c->fn)(step, total) ? 0 : 1;
                } catch (...) {
                    c->error = std::current_exception();
                    return 1;
                }
            };
            o.progress_user_data = &ctx;
        }
        const pdiff_status st = call(&o);
        if (ctx.error) std::rethrow_exception(ctx.error);
        detail::check(st);
        if (options.clipped != nullptr) *options.clipped = clipped;
        return clipped;
    }

    std::unique_ptr<pdiff_sampler, detail::SamplerFree> h_;
};

}  // namespace pdiff

#endif  // PDIFF_HPP
