// Node-API surface of marginal_native. Every entry point validates all of its inputs before it
// writes anything, so a bad call throws without having advanced any random state or copied any
// part of a block (the TypeScript wrappers check the same things first, with the same results).
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "fdlibm.h"
#include "sampler.h"
#include "kernels.h"
#include "ort/runner.h"

namespace {

// Bumped whenever an export's signature or meaning changes, so that a stale build left in
// native/build is refused by src/native/index.ts instead of being called with the wrong layout.
constexpr int32_t kAbiVersion = 3;

template <typename T>
struct Span {
  T* data;
  size_t length;
};

template <typename T>
Span<T> typed_array(const Napi::Value& v, napi_typedarray_type type, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " has the wrong type");
  }
  auto a = v.As<Napi::TypedArrayOf<T>>();
  return {a.Data(), a.ElementLength()};
}

std::vector<Span<float>> float32_arrays(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an array of Float32Array");
  auto arr = v.As<Napi::Array>();
  std::vector<Span<float>> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) out.push_back(typed_array<float>(arr.Get(i), napi_float32_array, what));
  return out;
}

/** A JavaScript number that must be an integer in [0, 2^53); returned as a double for exact bounds math. */
double whole(const Napi::Value& v, const char* what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d)) {
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a non-negative integer");
  }
  return d;
}

class MarginalNative : public Napi::Addon<MarginalNative> {
 public:
  MarginalNative(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {
                             InstanceValue("abiVersion", Napi::Number::New(env, kAbiVersion)),
                             InstanceValue("hardwareThreads", Napi::Number::New(env, std::max(1u, std::thread::hardware_concurrency()))),
                             InstanceMethod("sampleBatch", &MarginalNative::SampleBatch),
                             InstanceMethod("adjustLogits", &MarginalNative::AdjustLogits),
                             InstanceMethod("kvCopy", &MarginalNative::KvCopy),
                             InstanceMethod("fdlibmExp", &MarginalNative::FdlibmExp),
                             InstanceMethod("fdlibmLog", &MarginalNative::FdlibmLog),
                             InstanceMethod("softmaxWeights", &MarginalNative::SoftmaxWeights),
                             InstanceMethod("argmax", &MarginalNative::Argmax),
                             InstanceMethod("firstAbove", &MarginalNative::FirstAbove),
                             InstanceValue("kernels", Napi::String::New(env, marginal::kernel_name())),
                             InstanceMethod("openOrtRunner", &MarginalNative::OpenOrtRunner),
                             InstanceMethod("cudaMemory", &MarginalNative::CudaMemory),
                         });
    runner_class_ = Napi::Persistent(marginal::ort::Runner::Define(env));
  }

 private:
  // Scratch per sampling thread (a few vocab-sized buffers each), kept between calls, and per
  // addon instance, so engines in different worker_threads never share one.
  std::vector<std::unique_ptr<marginal::RowSampler>> samplers_;
  // The OrtRunner class of this addon instance (one per worker_thread).
  Napi::FunctionReference runner_class_;

  // openOrtRunner(libraryPath, modelPath, options) -> Promise<OrtRunner>: loads ONNX Runtime
  // from libraryPath (dlopen, once per process) and opens modelPath on the named provider.
  Napi::Value OpenOrtRunner(const Napi::CallbackInfo& info) { return marginal::ort::OpenRunner(info, runner_class_); }

  // cudaMemory(deviceId) -> {free, total} bytes of a CUDA device, through the CUDA runtime
  // (dlopen); throws (code ORT_CUDA) where there is none. Sizes a device KV pool before any
  // session exists.
  Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int device = static_cast<int>(whole(info[0], "deviceId"));
    size_t free_b = 0, total_b = 0;
    try {
      const marginal::ort::CudaRuntime& cuda = marginal::ort::CudaRuntime::load();
      cuda.set_device(device);
      cuda.mem_info(&free_b, &total_b);
    } catch (const marginal::ort::Error& e) {
      Napi::Error err = Napi::Error::New(env, e.what());
      err.Set("code", Napi::String::New(env, e.code));
      throw err;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("free", Napi::Number::New(env, static_cast<double>(free_b)));
    o.Set("total", Napi::Number::New(env, static_cast<double>(total_b)));
    return o;
  }

  marginal::RowSampler& sampler(size_t index, int32_t vocab) {
    if (samplers_.size() <= index) samplers_.resize(index + 1);
    auto& s = samplers_[index];
    if (!s || s->vocab() != vocab) s = std::make_unique<marginal::RowSampler>(vocab);
    return *s;
  }

  // sampleBatch(logits, vocab, rows, params, rngState, out, threads?): threads is the most it
  // may use (default 1).
  Napi::Value SampleBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 6) throw Napi::TypeError::New(env, "sampleBatch(logits, vocab, rows, params, rngState, out, threads?)");
    const auto logits = typed_array<float>(info[0], napi_float32_array, "logits");
    const double vocab_d = whole(info[1], "vocab");
    if (vocab_d < 1 || vocab_d > 2147483647.0) throw Napi::RangeError::New(env, "vocab must be in [1, 2^31)");
    const int32_t vocab = static_cast<int32_t>(vocab_d);
    const auto rows = typed_array<int32_t>(info[2], napi_int32_array, "rows");
    const auto params = typed_array<double>(info[3], napi_float64_array, "params");
    const auto state = typed_array<uint32_t>(info[4], napi_uint32_array, "rngState");
    const auto out = typed_array<int32_t>(info[5], napi_int32_array, "out");
    size_t threads = 1;
    if (info.Length() > 6 && !info[6].IsUndefined()) threads = static_cast<size_t>(std::max(1.0, std::min(64.0, whole(info[6], "threads"))));

    const size_t n = rows.length;
    if (params.length < 4 * n) throw Napi::RangeError::New(env, "params needs 4 numbers per row (temperature, topP, topK, minP)");
    if (state.length < 4 * n) throw Napi::RangeError::New(env, "rngState needs 4 words per row");
    if (out.length < n) throw Napi::RangeError::New(env, "out is shorter than rows");
    // Copied before checking: `out` or `rngState` may share memory with `rows`, and a row index
    // overwritten after its check would let a read escape `logits`.
    std::vector<int32_t> row_ids(rows.data, rows.data + n);
    for (size_t i = 0; i < n; i++) {
      const int32_t r = row_ids[i];
      if (r < 0 || (static_cast<uint64_t>(r) + 1) * static_cast<uint64_t>(vocab) > logits.length) {
        throw Napi::RangeError::New(env, "row " + std::to_string(r) + " is outside logits");
      }
    }
    if (n == 0) return env.Undefined();

    // Rows are independent (own random state, own output), so spreading them over threads
    // cannot change any result. A thread is spawned per call, so only for enough work to
    // cover the spawn: rows are weighted by their mode's rough cost per logit (greedy and
    // top-k scan the row; full and top-p exponentiate it), in units of about 0.15 ns.
    double work = 0;
    for (size_t i = 0; i < n; i++) {
      const double* p = params.data + 4 * i;
      const bool scans = !(p[0] > 0) || (p[2] > 0 && p[2] < vocab_d);
      work += vocab_d * (scans ? 4 : 40);
    }
    constexpr double kWorkPerThread = 700000;  // ~100 us
    threads = std::min({threads, n, static_cast<size_t>(std::max(1.0, work / kWorkPerThread))});
    for (size_t t = 0; t < threads; t++) sampler(t, vocab);
    std::atomic<size_t> next{0};
    auto run = [&](size_t t) {
      marginal::RowSampler& s = *samplers_[t];
      for (size_t i = next.fetch_add(1, std::memory_order_relaxed); i < n; i = next.fetch_add(1, std::memory_order_relaxed)) {
        const float* row = logits.data + static_cast<size_t>(row_ids[i]) * static_cast<size_t>(vocab);
        const double* p = params.data + 4 * i;
        out.data[i] = s.sample(row, p[0], p[1], p[2], p[3], state.data + 4 * i);
      }
    };
    if (threads == 1) {
      run(0);
      return env.Undefined();
    }
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (size_t t = 1; t < threads; t++) {
      try {
        pool.emplace_back(run, t);
      } catch (const std::system_error&) {
        break;  // Out of threads: rows are handed out one at a time, so fewer workers still do them all.
      }
    }
    run(0);
    for (auto& th : pool) th.join();
    return env.Undefined();
  }

  // adjustLogits(logits, vocab, row, tokens, counts, flags, bias, n, presence, frequency, repetition)
  Napi::Value AdjustLogits(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 11) throw Napi::TypeError::New(env, "adjustLogits(logits, vocab, row, tokens, counts, flags, bias, n, presence, frequency, repetition)");
    const auto logits = typed_array<float>(info[0], napi_float32_array, "logits");
    const double vocab = whole(info[1], "vocab");
    const double row = whole(info[2], "row");
    const auto tokens = typed_array<int32_t>(info[3], napi_int32_array, "tokens");
    const auto counts = typed_array<int32_t>(info[4], napi_int32_array, "counts");
    const auto flags = typed_array<uint8_t>(info[5], napi_uint8_array, "flags");
    const auto bias = typed_array<double>(info[6], napi_float64_array, "bias");
    const double n = whole(info[7], "n");
    if (!info[8].IsNumber() || !info[9].IsNumber() || !info[10].IsNumber()) throw Napi::TypeError::New(env, "presence, frequency and repetition must be numbers");
    if ((row + 1) * vocab > static_cast<double>(logits.length)) throw Napi::RangeError::New(env, "row is outside logits");
    if (n > static_cast<double>(tokens.length) || n > static_cast<double>(counts.length) || n > static_cast<double>(flags.length) || n > static_cast<double>(bias.length)) {
      throw Napi::RangeError::New(env, "n exceeds an entry array");
    }
    const size_t count = static_cast<size_t>(n);
    for (size_t j = 0; j < count; j++) {
      if (tokens.data[j] < 0 || static_cast<double>(tokens.data[j]) >= vocab) throw Napi::RangeError::New(env, "token " + std::to_string(tokens.data[j]) + " is outside the vocabulary");
    }
    marginal::adjust_logits(logits.data + static_cast<size_t>(row * vocab), tokens.data, counts.data, flags.data, bias.data, static_cast<int32_t>(count),
                            info[8].As<Napi::Number>().DoubleValue(), info[9].As<Napi::Number>().DoubleValue(), info[10].As<Napi::Number>().DoubleValue());
    return env.Undefined();
  }

  // kvCopy(toCache, keys[], values[], packed[], kvHeads, capacity, headDim, slot, from, n)
  //
  // Cache arrays (one per layer) are [slot][kvHead][capacity][headDim]; packed[b] is
  // [layer][k|v][kvHead][n][headDim] and pairs with positions [from + b*n, from + (b+1)*n).
  Napi::Value KvCopy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 10) throw Napi::TypeError::New(env, "kvCopy(toCache, keys, values, packed, kvHeads, capacity, headDim, slot, from, n)");
    const bool to_cache = info[0].ToBoolean().Value();
    const auto keys = float32_arrays(info[1], "keys");
    const auto values = float32_arrays(info[2], "values");
    const auto packed = float32_arrays(info[3], "packed");
    const double H = whole(info[4], "kvHeads");
    const double capacity = whole(info[5], "capacity");
    const double hd = whole(info[6], "headDim");
    const double slot = whole(info[7], "slot");
    const double from = whole(info[8], "from");
    const double n = whole(info[9], "n");
    if (keys.size() != values.size()) throw Napi::RangeError::New(env, "keys and values must have one array per layer each");
    const double layers = static_cast<double>(keys.size());
    const double blocks = static_cast<double>(packed.size());
    // Bounds in doubles: exact below 2^53, and anything beyond is far past any array length.
    if (from + blocks * n > capacity) throw Napi::RangeError::New(env, "positions run past the slot's capacity");
    if (n == 0 || H == 0 || hd == 0 || layers == 0 || blocks == 0) return env.Undefined();
    const double slot_base = slot * H * capacity * hd;
    const double cache_end = slot_base + (H - 1) * capacity * hd + (from + blocks * n) * hd;
    for (size_t l = 0; l < keys.size(); l++) {
      if (cache_end > static_cast<double>(keys[l].length) || cache_end > static_cast<double>(values[l].length)) {
        throw Napi::RangeError::New(env, "slot " + std::to_string(static_cast<int64_t>(slot)) + " is outside layer " + std::to_string(l) + "'s cache");
      }
    }
    const double packed_len = layers * 2 * H * n * hd;
    for (size_t b = 0; b < packed.size(); b++) {
      if (packed_len > static_cast<double>(packed[b].length)) throw Napi::RangeError::New(env, "packed[" + std::to_string(b) + "] is too short");
    }

    const size_t heads = static_cast<size_t>(H);
    const size_t head_stride = static_cast<size_t>(capacity * hd);
    const size_t base = static_cast<size_t>(slot_base);
    const size_t span = static_cast<size_t>(n * hd);
    const size_t bytes = span * sizeof(float);
    for (size_t b = 0; b < packed.size(); b++) {
      const size_t pos_off = static_cast<size_t>((from + static_cast<double>(b) * n) * hd);
      float* p = packed[b].data;
      for (size_t l = 0; l < keys.size(); l++) {
        float* k = keys[l].data;
        float* v = values[l].data;
        const size_t k_base = l * 2 * heads * span;
        const size_t v_base = k_base + heads * span;
        for (size_t h = 0; h < heads; h++) {
          const size_t c = base + h * head_stride + pos_off;
          // memmove: TypedArray.prototype.set is defined for overlapping views, so the fallback is too.
          if (to_cache) {
            std::memmove(k + c, p + k_base + h * span, bytes);
            std::memmove(v + c, p + v_base + h * span, bytes);
          } else {
            std::memmove(p + k_base + h * span, k + c, bytes);
            std::memmove(p + v_base + h * span, v + c, bytes);
          }
        }
      }
    }
    return env.Undefined();
  }

  // Test hooks: the port of V8's exp and log, element-wise, so the test can compare them with
  // Math.exp and Math.log directly rather than only through sampled tokens.
  Napi::Value FdlibmExp(const Napi::CallbackInfo& info) { return Elementwise(info, marginal::fdlibm::exp); }
  Napi::Value FdlibmLog(const Napi::CallbackInfo& info) { return Elementwise(info, marginal::fdlibm::log); }

  // Test hooks for one named kernel set (default: the one in use), so the test can hold every
  // set this machine has to the TypeScript definitions. Each returns undefined when the named
  // set is unavailable here.
  static const marginal::KernelSet* NamedKernels(const Napi::CallbackInfo& info, size_t at) {
    if (info.Length() > at && info[at].IsString()) return marginal::kernel_set(info[at].As<Napi::String>().Utf8Value().c_str());
    return marginal::kernel_set(marginal::kernel_name());
  }

  static Span<float> Row(const Napi::CallbackInfo& info) {
    const auto row = typed_array<float>(info[0], napi_float32_array, "row");
    if (row.length > 2147483647u) throw Napi::RangeError::New(info.Env(), "row is too long");
    return row;
  }

  // softmaxWeights(row, max, invT, out, prefix, kernel?): out[i] = the sampler's weight of
  // row[i] (or with prefix, the running sum through i); returns the sum.
  Napi::Value SoftmaxWeights(const Napi::CallbackInfo& info) {
    const auto row = Row(info);
    const double max = info[1].As<Napi::Number>().DoubleValue();
    const double inv_t = info[2].As<Napi::Number>().DoubleValue();
    const auto out = typed_array<double>(info[3], napi_float64_array, "out");
    if (out.length < row.length) throw Napi::RangeError::New(info.Env(), "out is shorter than row");
    const bool prefix = info[4].ToBoolean().Value();
    const marginal::KernelSet* k = NamedKernels(info, 5);
    if (k == nullptr) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), k->weights(row.data, static_cast<int32_t>(row.length), max, inv_t, out.data, prefix));
  }

  // argmax(row, kernel?)
  Napi::Value Argmax(const Napi::CallbackInfo& info) {
    const auto row = Row(info);
    const marginal::KernelSet* k = NamedKernels(info, 1);
    if (k == nullptr) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), k->argmax(row.data, static_cast<int32_t>(row.length)));
  }

  // firstAbove(row, from, threshold, kernel?)
  Napi::Value FirstAbove(const Napi::CallbackInfo& info) {
    const auto row = Row(info);
    const double from = whole(info[1], "from");
    if (from > static_cast<double>(row.length)) throw Napi::RangeError::New(info.Env(), "from is past the row");
    const float threshold = static_cast<float>(info[2].As<Napi::Number>().DoubleValue());
    const marginal::KernelSet* k = NamedKernels(info, 3);
    if (k == nullptr) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), k->first_above(row.data, static_cast<int32_t>(from), static_cast<int32_t>(row.length), threshold));
  }

  Napi::Value Elementwise(const Napi::CallbackInfo& info, double (*f)(double)) {
    const auto in = typed_array<double>(info[0], napi_float64_array, "input");
    const auto out = typed_array<double>(info[1], napi_float64_array, "output");
    if (out.length < in.length) throw Napi::RangeError::New(info.Env(), "output is shorter than input");
    for (size_t i = 0; i < in.length; i++) out.data[i] = f(in.data[i]);
    return info.Env().Undefined();
  }
};

}  // namespace

NODE_API_ADDON(MarginalNative)
