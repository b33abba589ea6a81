#include "runner.h"

#include <cmath>
#include <cstring>
#include <utility>

namespace marginal::ort {

namespace {

[[noreturn]] void Throw(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

[[noreturn]] void Throw(Napi::Env env, const Error& e) { Throw(env, e.code, e.what()); }

/** Runs `f`, turning an ort::Error into a JavaScript Error with the same code. */
template <typename F>
auto Guard(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    Throw(env, e);
  }
}

/** An integer in [0, 2^53) given as a JavaScript number. */
double Whole(const Napi::Value& v, const char* what) {
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d)) {
    Throw(v.Env(), "ERR_OUT_OF_RANGE", std::string(what) + " must be a non-negative integer");
  }
  return d;
}

size_t ElementSize(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL:
      return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16:
      return 2;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32:
      return 4;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64:
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return 8;
    default:
      return 0;  // strings and complex types cannot be bound to raw memory
  }
}

std::vector<TensorSlot> Describe(const Runtime& rt, OrtSession* session, bool inputs) {
  const OrtApi& api = rt.api();
  size_t count = 0;
  rt.check(inputs ? api.SessionGetInputCount(session, &count) : api.SessionGetOutputCount(session, &count), "ORT_SESSION", "cannot list the graph's values: ");
  OrtAllocator* alloc = nullptr;
  rt.check(api.GetAllocatorWithDefaultOptions(&alloc), "ORT_SESSION", "no default allocator: ");
  std::vector<TensorSlot> out(count);
  for (size_t i = 0; i < count; i++) {
    char* name = nullptr;
    rt.check(inputs ? api.SessionGetInputName(session, i, alloc, &name) : api.SessionGetOutputName(session, i, alloc, &name), "ORT_SESSION", "cannot read a value's name: ");
    out[i].name = name;
    alloc->Free(alloc, name);
    OrtTypeInfo* info = nullptr;
    rt.check(inputs ? api.SessionGetInputTypeInfo(session, i, &info) : api.SessionGetOutputTypeInfo(session, i, &info), "ORT_SESSION", "cannot read a value's type: ");
    ONNXType kind = ONNX_TYPE_UNKNOWN;
    OrtStatus* st = api.GetOnnxTypeFromTypeInfo(info, &kind);
    if (st == nullptr && kind == ONNX_TYPE_TENSOR) {
      const OrtTensorTypeAndShapeInfo* t = nullptr;
      st = api.CastTypeInfoToTensorInfo(info, &t);
      size_t rank = 0;
      if (st == nullptr) st = api.GetTensorElementType(t, &out[i].type);
      if (st == nullptr) st = api.GetDimensionsCount(t, &rank);
      if (st == nullptr) {
        out[i].dims.resize(rank);
        out[i].rank = static_cast<int64_t>(rank);
        st = api.GetDimensions(t, out[i].dims.data(), rank);
      }
    }
    api.ReleaseTypeInfo(info);
    rt.check(st, "ORT_SESSION", "cannot read a value's type: ");
  }
  return out;
}

class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, OpenOptions opts, Napi::FunctionReference& constructor)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), opts_(std::move(opts)), constructor_(constructor) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      Open();
    } catch (const Error& e) {
      code_ = e.code;
      SetError(e.what());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    try {
      auto* raw = prepared_.release();
      Napi::Object runner = constructor_.New({Napi::External<PreparedSession>::New(env, raw)});
      deferred_.Resolve(runner);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    err.Set("code", Napi::String::New(Env(), code_));
    deferred_.Reject(err.Value());
  }

 private:
  void Open() {
    Runtime& rt = Runtime::load(opts_.library);
    const OrtApi& api = rt.api();
    auto p = std::make_unique<PreparedSession>();
    p->runtime = &rt;
    p->device = opts_.device;
    OrtSessionOptions* so = nullptr;
    rt.check(api.CreateSessionOptions(&so), "ORT_SESSION", "cannot create session options: ");
    struct OptionsGuard {
      const OrtApi& api;
      OrtSessionOptions* so;
      ~OptionsGuard() { api.ReleaseSessionOptions(so); }
    } options_guard{api, so};
    rt.check(api.SetSessionGraphOptimizationLevel(so, opts_.optimization), "ORT_SESSION", "");
    rt.check(api.SetSessionLogSeverityLevel(so, 3), "ORT_SESSION", "");
    if (opts_.intra_op_threads > 0) rt.check(api.SetIntraOpNumThreads(so, opts_.intra_op_threads), "ORT_SESSION", "");
    if (opts_.inter_op_threads > 0) rt.check(api.SetInterOpNumThreads(so, opts_.inter_op_threads), "ORT_SESSION", "");
    if (!opts_.spinning) {
      // As the onnxruntime-node sessions are opened (src/engine/session.ts): idle intra-op
      // threads sleep instead of spinning, since the engine shares its cores.
      rt.check(api.AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"), "ORT_SESSION", "");
      rt.check(api.AddSessionConfigEntry(so, "session.inter_op.allow_spinning", "0"), "ORT_SESSION", "");
    }
    if (opts_.cuda) {
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      rt.check(api.CreateCUDAProviderOptions(&cuda), "ORT_PROVIDER", "CUDA execution provider unavailable: ");
      const std::string device = std::to_string(opts_.device);
      // kSameAsRequested: ONNX Runtime's arena would otherwise round each growth up to a power
      // of two, and the KV pool is allocated by us, not by it.
      const char* keys[] = {"device_id", "arena_extend_strategy"};
      const char* values[] = {device.c_str(), "kSameAsRequested"};
      OrtStatus* st = api.UpdateCUDAProviderOptions(cuda, keys, values, 2);
      if (st == nullptr) st = api.SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda);
      api.ReleaseCUDAProviderOptions(cuda);
      rt.check(st, "ORT_PROVIDER", "CUDA execution provider unavailable: ");
    }
    rt.check(api.CreateSession(rt.env(), opts_.model.c_str(), so, &p->session), "ORT_SESSION", "cannot load " + opts_.model + ": ");
    try {
      if (opts_.cuda) {
        p->cuda = &CudaRuntime::load();
        p->cuda->set_device(opts_.device);
        rt.check(api.CreateMemoryInfo("Cuda", OrtDeviceAllocator, opts_.device, OrtMemTypeDefault, &p->device_info), "ORT_SESSION", "");
      }
      rt.check(api.CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &p->host_info), "ORT_SESSION", "");
      p->inputs = Describe(rt, p->session, true);
      p->outputs = Describe(rt, p->session, false);
      rt.check(api.CreateIoBinding(p->session, &p->binding), "ORT_SESSION", "cannot create an I/O binding: ");
    } catch (...) {
      p->release();
      throw;
    }
    prepared_ = std::move(p);
  }

  Napi::Promise::Deferred deferred_;
  OpenOptions opts_;
  Napi::FunctionReference& constructor_;
  std::unique_ptr<PreparedSession> prepared_;
  std::string code_ = "ORT_SESSION";
};

Napi::Array Slots(Napi::Env env, const std::vector<TensorSlot>& slots) {
  Napi::Array arr = Napi::Array::New(env, slots.size());
  for (size_t i = 0; i < slots.size(); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", slots[i].name);
    o.Set("type", Napi::Number::New(env, slots[i].type));
    if (slots[i].rank < 0) {
      o.Set("dims", env.Null());
    } else {
      Napi::Array dims = Napi::Array::New(env, slots[i].dims.size());
      for (size_t d = 0; d < slots[i].dims.size(); d++) dims.Set(d, Napi::Number::New(env, static_cast<double>(slots[i].dims[d])));
      o.Set("dims", dims);
    }
    arr.Set(i, o);
  }
  return arr;
}

}  // namespace

void PreparedSession::release() {
  if (runtime == nullptr) return;
  const OrtApi& api = runtime->api();
  if (binding) api.ReleaseIoBinding(binding);
  if (session) api.ReleaseSession(session);
  if (host_info) api.ReleaseMemoryInfo(host_info);
  if (device_info) api.ReleaseMemoryInfo(device_info);
  binding = nullptr;
  session = nullptr;
  host_info = nullptr;
  device_info = nullptr;
}

Napi::Value OpenRunner(const Napi::CallbackInfo& info, Napi::FunctionReference& constructor) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject()) {
    Throw(env, "ERR_INVALID_ARG_TYPE", "openOrtRunner(libraryPath, modelPath, options)");
  }
  OpenOptions o;
  o.library = info[0].As<Napi::String>().Utf8Value();
  o.model = info[1].As<Napi::String>().Utf8Value();
  Napi::Object opts = info[2].As<Napi::Object>();
  const std::string provider = opts.Has("provider") ? opts.Get("provider").ToString().Utf8Value() : "cpu";
  if (provider != "cpu" && provider != "cuda") Throw(env, "ERR_INVALID_ARG_VALUE", "provider must be \"cpu\" or \"cuda\"");
  o.cuda = provider == "cuda";
  auto number = [&](const char* key, int max) {
    Napi::Value v = opts.Get(key);
    if (v.IsUndefined()) return 0;
    const double d = Whole(v, key);
    if (d > max) Throw(env, "ERR_OUT_OF_RANGE", std::string(key) + " must be at most " + std::to_string(max));
    return static_cast<int>(d);
  };
  o.device = number("deviceId", 1024);
  o.intra_op_threads = number("intraOpThreads", 4096);
  o.inter_op_threads = number("interOpThreads", 4096);
  o.spinning = opts.Get("spinning").ToBoolean().Value();
  Napi::Value level = opts.Get("graphOptimizationLevel");
  if (!level.IsUndefined()) {
    const std::string l = level.ToString().Utf8Value();
    if (l == "disabled") o.optimization = ORT_DISABLE_ALL;
    else if (l == "basic") o.optimization = ORT_ENABLE_BASIC;
    else if (l == "extended") o.optimization = ORT_ENABLE_EXTENDED;
    else if (l == "all") o.optimization = ORT_ENABLE_ALL;
    else Throw(env, "ERR_INVALID_ARG_VALUE", "graphOptimizationLevel must be disabled, basic, extended or all");
  }
  auto* worker = new OpenWorker(env, std::move(o), constructor);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

class Runner::RunWorker : public Napi::AsyncWorker {
 public:
  explicit RunWorker(Runner* r) : Napi::AsyncWorker(r->Env()), runner_(r), deferred_(Napi::Promise::Deferred::New(r->Env())) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    PreparedSession& s = *runner_->s_;
    try {
      if (s.cuda) s.cuda->set_device(s.device);
      s.runtime->check(s.runtime->api().RunWithBinding(s.session, nullptr, s.binding), "ORT_RUN", "");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override {
    Finish();
    runner_->FinishRun();
    deferred_.Resolve(Env().Undefined());
  }

  void OnError(const Napi::Error& e) override {
    Finish();
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    err.Set("code", Napi::String::New(Env(), "ORT_RUN"));
    deferred_.Reject(err.Value());
  }

 private:
  void Finish() {
    runner_->busy_ = false;
    runner_->Unref();
  }
  Runner* runner_;
  Napi::Promise::Deferred deferred_;
};

Napi::Function Runner::Define(Napi::Env env) {
  return DefineClass(env, "OrtRunner",
                     {
                         InstanceAccessor("inputs", &Runner::Inputs, nullptr),
                         InstanceAccessor("outputs", &Runner::Outputs, nullptr),
                         InstanceAccessor("provider", &Runner::Provider, nullptr),
                         InstanceAccessor("version", &Runner::Version, nullptr),
                         InstanceMethod("allocate", &Runner::Allocate),
                         InstanceMethod("view", &Runner::View),
                         InstanceMethod("free", &Runner::Free),
                         InstanceMethod("write", &Runner::Write),
                         InstanceMethod("read", &Runner::Read),
                         InstanceMethod("copy", &Runner::Copy),
                         InstanceMethod("bindInput", &Runner::BindInput),
                         InstanceMethod("bindOutput", &Runner::BindOutput),
                         InstanceMethod("clearOutputs", &Runner::ClearOutputs),
                         InstanceMethod("run", &Runner::Run),
                         InstanceMethod("runSync", &Runner::RunSync),
                         InstanceMethod("stats", &Runner::Stats),
                         InstanceMethod("deviceMemory", &Runner::DeviceMemory),
                         InstanceMethod("release", &Runner::Release),
                     });
}

Runner::Runner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Runner>(info) {
  if (info.Length() < 1 || !info[0].IsExternal()) Throw(info.Env(), "ERR_ILLEGAL_CONSTRUCTOR", "an OrtRunner comes from openOrtRunner()");
  s_.reset(info[0].As<Napi::External<PreparedSession>>().Data());
  bound_inputs_.resize(s_->inputs.size());
  bound_outputs_.resize(s_->outputs.size());
}

Runner::~Runner() { ReleaseAll(); }

void Runner::ReleaseAll() {
  if (!s_) return;
  if (s_->binding) {
    s_->runtime->api().ClearBoundInputs(s_->binding);
    s_->runtime->api().ClearBoundOutputs(s_->binding);
  }
  s_->release();
  for (Buffer& b : buffers_) {
    if (!b.live) continue;
    if (!b.addressable && s_->cuda) s_->cuda->free_device(b.data);
    b.owner.Reset();
    b.live = false;
  }
  buffers_.clear();
  s_.reset();
}

void Runner::Usable(Napi::Env env) const {
  if (!s_) Throw(env, "ORT_RELEASED", "this runner has been released");
  if (busy_) Throw(env, "ORT_BUSY", "this runner is running; wait for run() to settle");
}

Runner::Buffer& Runner::Live(Napi::Env env, const Napi::Value& id) {
  const double i = Whole(id, "buffer");
  if (i >= static_cast<double>(buffers_.size()) || !buffers_[static_cast<size_t>(i)].live) Throw(env, "ERR_OUT_OF_RANGE", "no buffer " + std::to_string(static_cast<int64_t>(i)));
  return buffers_[static_cast<size_t>(i)];
}

void Runner::Count(bool to_device, bool from_device, bool from_kv, double bytes) {
  if (to_device && !from_device) stats_[kUploadBytes] += bytes;
  else if (from_device && !to_device) stats_[kDownloadBytes] += bytes;
  else stats_[kLocalCopyBytes] += bytes;
  if (from_kv) stats_[kKvCopiedBytes] += bytes;
}

Napi::Value Runner::Inputs(const Napi::CallbackInfo& info) {
  Usable(info.Env());
  return Slots(info.Env(), s_->inputs);
}

Napi::Value Runner::Outputs(const Napi::CallbackInfo& info) {
  Usable(info.Env());
  return Slots(info.Env(), s_->outputs);
}

Napi::Value Runner::Provider(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), s_ && s_->cuda ? "cuda" : "cpu");
}

Napi::Value Runner::Version(const Napi::CallbackInfo& info) {
  if (!s_) return info.Env().Undefined();
  return Napi::String::New(info.Env(), s_->runtime->version());
}

// allocate(bytes, where: "device" | "host", kv?: boolean) -> id. Zero-filled.
Napi::Value Runner::Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  const double bytes_d = Whole(info[0], "bytes");
  const std::string where = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (where != "device" && where != "host") Throw(env, "ERR_INVALID_ARG_VALUE", "where must be \"device\" or \"host\"");
  const size_t bytes = static_cast<size_t>(bytes_d);
  Buffer b;
  b.bytes = bytes;
  b.device = where == "device";
  b.kv = info.Length() > 2 && info[2].ToBoolean().Value();
  Guard(env, [&] {
    if (s_->cuda && b.device) {
      s_->cuda->set_device(s_->device);
      b.data = s_->cuda->malloc_device(bytes);
      b.addressable = false;
    } else if (s_->cuda) {
      // Pinned, so that copies to and from the device are DMA transfers.
      s_->cuda->set_device(s_->device);
      void* p = s_->cuda->malloc_host(bytes);
      CudaRuntime* cuda = s_->cuda;
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, p, bytes, [cuda](Napi::Env, void* data) { cuda->free_host(data); });
      b.data = p;
      b.owner = Napi::Persistent(ab);
      b.addressable = true;
    } else {
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes);
      b.data = ab.Data();
      b.owner = Napi::Persistent(ab);
      b.addressable = true;
    }
  });
  b.live = true;
  size_t id = 0;
  while (id < buffers_.size() && buffers_[id].live) id++;
  if (id == buffers_.size()) buffers_.push_back(std::move(b));
  else buffers_[id] = std::move(b);
  return Napi::Number::New(env, static_cast<double>(id));
}

// view(id) -> ArrayBuffer over the buffer's memory when the host can address it, else undefined.
Napi::Value Runner::View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!s_) Throw(env, "ORT_RELEASED", "this runner has been released");
  Buffer& b = Live(env, info[0]);
  if (!b.addressable) return env.Undefined();
  return b.owner.Value();
}

Napi::Value Runner::Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  const int id = static_cast<int>(Whole(info[0], "buffer"));
  Buffer& b = Live(env, info[0]);
  for (size_t i = 0; i < bound_inputs_.size(); i++) {
    if (bound_inputs_[i].buffer == id) Throw(env, "ORT_BOUND", "buffer " + std::to_string(id) + " is bound to input " + s_->inputs[i].name);
  }
  for (size_t i = 0; i < bound_outputs_.size(); i++) {
    if (bound_outputs_[i].buffer == id) Throw(env, "ORT_BOUND", "buffer " + std::to_string(id) + " is bound to output " + s_->outputs[i].name);
  }
  if (!b.addressable) s_->cuda->free_device(b.data);
  b.owner.Reset();
  b.data = nullptr;
  b.live = false;
  return env.Undefined();
}

namespace {

struct Bytes {
  uint8_t* data;
  size_t length;
};

Bytes JsBytes(const Napi::Value& v, const char* what) {
  if (v.IsTypedArray()) {
    auto a = v.As<Napi::TypedArray>();
    return {static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), a.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    auto a = v.As<Napi::ArrayBuffer>();
    return {static_cast<uint8_t*>(a.Data()), a.ByteLength()};
  }
  Throw(v.Env(), "ERR_INVALID_ARG_TYPE", std::string(what) + " must be a TypedArray or an ArrayBuffer");
}

/**
 * Whether a region's destination rows overlap its source rows within one buffer. With equal
 * pitches (a block copied between blocks of the same head-strided pool) rows r1 and r2 overlap
 * when |(dst - src) + (r1 - r2)·pitch| < width, so only the row offsets nearest to cancelling
 * dst - src need checking; with unequal pitches the regions' extents must be disjoint.
 */
bool RowsOverlap(const double* g, double dst_end, double src_end) {
  const double delta = g[0] - g[2], width = g[4], rows = g[5], pitch = g[1];
  if (g[1] != g[3] || pitch == 0) return g[0] < src_end && g[2] < dst_end;
  const double nearest = -delta / pitch;
  for (double d : {std::floor(nearest), std::ceil(nearest)}) {
    const double clamped = std::max(-(rows - 1), std::min(rows - 1, d));
    if (std::fabs(delta + clamped * pitch) < width) return true;
  }
  return false;
}

}  // namespace

// write(id, byteOffset, source, byteLength?): the source's bytes (its first byteLength) into the buffer.
Napi::Value Runner::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  Buffer& b = Live(env, info[0]);
  const double offset = Whole(info[1], "byteOffset");
  Bytes src = JsBytes(info[2], "source");
  if (info.Length() > 3 && !info[3].IsUndefined()) {
    const double n = Whole(info[3], "byteLength");
    if (n > static_cast<double>(src.length)) Throw(env, "ERR_OUT_OF_RANGE", "byteLength exceeds the source");
    src.length = static_cast<size_t>(n);
  }
  if (offset + static_cast<double>(src.length) > static_cast<double>(b.bytes)) Throw(env, "ERR_OUT_OF_RANGE", "the write runs past the buffer");
  if (src.length == 0) return env.Undefined();
  uint8_t* dst = static_cast<uint8_t*>(b.data) + static_cast<size_t>(offset);
  if (b.addressable) std::memmove(dst, src.data, src.length);
  else Guard(env, [&] {
    s_->cuda->set_device(s_->device);
    s_->cuda->copy2d(dst, src.length, src.data, src.length, src.length, 1, CopyKind::HostToDevice);
  });
  Count(b.device, false, false, static_cast<double>(src.length));
  return env.Undefined();
}

// read(id, byteOffset, target): the buffer's bytes into the target.
Napi::Value Runner::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  Buffer& b = Live(env, info[0]);
  const double offset = Whole(info[1], "byteOffset");
  const Bytes dst = JsBytes(info[2], "target");
  if (offset + static_cast<double>(dst.length) > static_cast<double>(b.bytes)) Throw(env, "ERR_OUT_OF_RANGE", "the read runs past the buffer");
  if (dst.length == 0) return env.Undefined();
  const uint8_t* src = static_cast<const uint8_t*>(b.data) + static_cast<size_t>(offset);
  if (b.addressable) std::memmove(dst.data, src, dst.length);
  else Guard(env, [&] {
    s_->cuda->set_device(s_->device);
    s_->cuda->copy2d(dst.data, dst.length, src, dst.length, dst.length, 1, CopyKind::DeviceToHost);
  });
  Count(false, b.device, b.kv, static_cast<double>(dst.length));
  return env.Undefined();
}

// copy(dst, src, regions, count): regions holds 6 numbers per region, [dstOffset, dstPitch,
// srcOffset, srcPitch, width, rows] in bytes; row r copies `width` bytes from
// src + srcOffset + r*srcPitch to dst + dstOffset + r*dstPitch. Every region is checked before
// any byte moves, so a bad call copies nothing.
Napi::Value Runner::Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  Buffer& dst = Live(env, info[0]);
  Buffer& src = Live(env, info[1]);
  if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    Throw(env, "ERR_INVALID_ARG_TYPE", "regions must be a Float64Array");
  }
  auto regions = info[2].As<Napi::Float64Array>();
  const double count = Whole(info[3], "count");
  if (count * 6 > static_cast<double>(regions.ElementLength())) Throw(env, "ERR_OUT_OF_RANGE", "regions holds fewer than count regions");
  const double* r = regions.Data();
  const size_t n = static_cast<size_t>(count);
  const bool same = &dst == &src;
  double total = 0;
  for (size_t i = 0; i < n; i++) {
    const double* g = r + 6 * i;
    for (int k = 0; k < 6; k++) {
      if (!(g[k] >= 0 && g[k] <= 9007199254740991.0 && std::floor(g[k]) == g[k])) Throw(env, "ERR_OUT_OF_RANGE", "region " + std::to_string(i) + " has a value that is not a non-negative integer");
    }
    const double width = g[4], rows = g[5];
    if (width == 0 || rows == 0) continue;
    if (rows > 1 && (width > g[1] || width > g[3])) Throw(env, "ERR_OUT_OF_RANGE", "region " + std::to_string(i) + " has rows wider than their pitch");
    const double dst_end = g[0] + (rows - 1) * g[1] + width;
    const double src_end = g[2] + (rows - 1) * g[3] + width;
    if (dst_end > static_cast<double>(dst.bytes)) Throw(env, "ERR_OUT_OF_RANGE", "region " + std::to_string(i) + " runs past the destination buffer");
    if (src_end > static_cast<double>(src.bytes)) Throw(env, "ERR_OUT_OF_RANGE", "region " + std::to_string(i) + " runs past the source buffer");
    if (same && RowsOverlap(g, dst_end, src_end)) Throw(env, "ERR_OUT_OF_RANGE", "region " + std::to_string(i) + " overlaps itself");
    total += width * rows;
  }
  uint8_t* d = static_cast<uint8_t*>(dst.data);
  const uint8_t* s = static_cast<const uint8_t*>(src.data);
  if (dst.addressable && src.addressable) {
    for (size_t i = 0; i < n; i++) {
      const double* g = r + 6 * i;
      const size_t width = static_cast<size_t>(g[4]), rows = static_cast<size_t>(g[5]);
      for (size_t row = 0; row < rows; row++) {
        std::memmove(d + static_cast<size_t>(g[0]) + row * static_cast<size_t>(g[1]), s + static_cast<size_t>(g[2]) + row * static_cast<size_t>(g[3]), width);
      }
    }
  } else {
    const CopyKind kind = !src.addressable && !dst.addressable ? CopyKind::DeviceToDevice : src.addressable ? CopyKind::HostToDevice : CopyKind::DeviceToHost;
    Guard(env, [&] {
      s_->cuda->set_device(s_->device);
      for (size_t i = 0; i < n; i++) {
        const double* g = r + 6 * i;
        if (g[4] == 0 || g[5] == 0) continue;
        s_->cuda->copy2d_async(d + static_cast<size_t>(g[0]), static_cast<size_t>(g[1]), s + static_cast<size_t>(g[2]), static_cast<size_t>(g[3]), static_cast<size_t>(g[4]), static_cast<size_t>(g[5]), kind);
      }
      s_->cuda->sync();
    });
  }
  Count(dst.device, src.device, src.kv, total);
  return env.Undefined();
}

Napi::Value Runner::BindInput(const Napi::CallbackInfo& info) { return Bind(info, true); }
Napi::Value Runner::BindOutput(const Napi::CallbackInfo& info) { return Bind(info, false); }

// bindInput|bindOutput(index, buffer, byteOffset, type, dims: Float64Array, rank): binds the
// graph's input (output) `index` to `rank` dims of `type` starting at byteOffset in the buffer.
// Rebinding the same view again is free.
Napi::Value Runner::Bind(const Napi::CallbackInfo& info, bool input) {
  Napi::Env env = info.Env();
  Usable(env);
  const std::vector<TensorSlot>& slots = input ? s_->inputs : s_->outputs;
  const double index_d = Whole(info[0], "index");
  if (index_d >= static_cast<double>(slots.size())) Throw(env, "ERR_OUT_OF_RANGE", std::string("the graph has no ") + (input ? "input " : "output ") + std::to_string(static_cast<int64_t>(index_d)));
  const size_t index = static_cast<size_t>(index_d);
  const TensorSlot& slot = slots[index];
  Buffer& buf = Live(env, info[1]);
  const double offset = Whole(info[2], "byteOffset");
  const double type_d = Whole(info[3], "type");
  const auto type = static_cast<ONNXTensorElementDataType>(static_cast<int>(std::min(type_d, 64.0)));
  const size_t elem = ElementSize(type);
  if (elem == 0) Throw(env, "ERR_INVALID_ARG_VALUE", slot.name + ": element type " + std::to_string(static_cast<int>(type_d)) + " cannot be bound to memory");
  if (slot.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED && slot.type != type) {
    Throw(env, "ERR_INVALID_ARG_VALUE", slot.name + " has element type " + std::to_string(slot.type) + ", not " + std::to_string(type));
  }
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) Throw(env, "ERR_INVALID_ARG_TYPE", "dims must be a Float64Array");
  auto dims_arr = info[4].As<Napi::Float64Array>();
  const double rank_d = Whole(info[5], "rank");
  if (rank_d > static_cast<double>(dims_arr.ElementLength()) || rank_d > 16) Throw(env, "ERR_OUT_OF_RANGE", "rank exceeds the dims given");
  const size_t rank = static_cast<size_t>(rank_d);
  if (slot.rank >= 0 && static_cast<size_t>(slot.rank) != rank) Throw(env, "ERR_INVALID_ARG_VALUE", slot.name + " has rank " + std::to_string(slot.rank) + ", not " + std::to_string(rank));
  Bound b;
  b.buffer = static_cast<int>(Whole(info[1], "buffer"));
  b.offset = static_cast<size_t>(offset);
  b.type = type;
  b.dims.resize(rank);
  double elements = 1;
  for (size_t d = 0; d < rank; d++) {
    const double v = dims_arr[d];
    if (!(v >= 0 && v <= 9007199254740991.0 && std::floor(v) == v)) Throw(env, "ERR_OUT_OF_RANGE", slot.name + ": dimension " + std::to_string(d) + " must be a non-negative integer");
    if (slot.rank >= 0 && slot.dims[d] >= 0 && static_cast<double>(slot.dims[d]) != v) {
      Throw(env, "ERR_INVALID_ARG_VALUE", slot.name + ": dimension " + std::to_string(d) + " is fixed at " + std::to_string(slot.dims[d]) + ", not " + std::to_string(static_cast<int64_t>(v)));
    }
    b.dims[d] = static_cast<int64_t>(v);
    elements *= v;
  }
  const double bytes = elements * static_cast<double>(elem);
  if (std::fmod(offset, static_cast<double>(elem)) != 0) Throw(env, "ERR_OUT_OF_RANGE", slot.name + ": byteOffset must be a multiple of the element size");
  if (offset + bytes > static_cast<double>(buf.bytes)) Throw(env, "ERR_OUT_OF_RANGE", slot.name + ": the view runs past buffer " + std::to_string(b.buffer));
  b.bytes = static_cast<size_t>(bytes);
  Bound& current = (input ? bound_inputs_ : bound_outputs_)[index];
  // Under a device provider ONNX Runtime copies an input to wherever its consumer wants it
  // when it is bound (a host input to the device, and a device input that a CPU kernel reads —
  // TopK's k, say — to the host), so inputs are bound by run(), after everything was written.
  if (input && s_->cuda) {
    current = std::move(b);
    return env.Undefined();
  }
  if (current.buffer == b.buffer && current.offset == b.offset && current.type == b.type && current.dims == b.dims) return env.Undefined();
  Guard(env, [&] { BindValue(input, index, b); });
  current = std::move(b);
  return env.Undefined();
}

void Runner::BindValue(bool input, size_t index, const Bound& b) {
  const OrtApi& api = s_->runtime->api();
  const Buffer& buf = buffers_[b.buffer];
  const OrtMemoryInfo* where = buf.addressable ? s_->host_info : s_->device_info;
  OrtValue* value = nullptr;
  s_->runtime->check(api.CreateTensorWithDataAsOrtValue(where, static_cast<uint8_t*>(buf.data) + b.offset, b.bytes, b.dims.data(), b.dims.size(), b.type, &value), "ORT_BIND", "");
  const std::string& name = (input ? s_->inputs : s_->outputs)[index].name;
  OrtStatus* st = input ? api.BindInput(s_->binding, name.c_str(), value) : api.BindOutput(s_->binding, name.c_str(), value);
  // The binding keeps its own reference to the value (and so to the view), not to ours.
  api.ReleaseValue(value);
  s_->runtime->check(st, "ORT_BIND", "cannot bind " + name + ": ");
  // A host-memory input under a device provider is copied to the device when it is bound.
  // (A device input that a CPU kernel reads is copied the other way; those are a few bytes of
  // step inputs, which ONNX Runtime does not report, and are not counted.)
  if (input && s_->cuda && buf.addressable) Count(true, false, buf.kv, static_cast<double>(b.bytes));
}

// clearOutputs(): forgets every output binding (ONNX Runtime can only clear them all), so that
// a run computes only what is bound next.
Napi::Value Runner::ClearOutputs(const Napi::CallbackInfo& info) {
  Usable(info.Env());
  s_->runtime->api().ClearBoundOutputs(s_->binding);
  for (Bound& b : bound_outputs_) b = Bound();
  return info.Env().Undefined();
}

void Runner::PrepareRun(Napi::Env env) {
  Usable(env);
  for (size_t i = 0; i < bound_inputs_.size(); i++) {
    if (bound_inputs_[i].buffer < 0) Throw(env, "ORT_BIND", "input " + s_->inputs[i].name + " is not bound");
  }
  // See Bind: under a device provider every input is bound now, so whatever ONNX Runtime
  // copies at binding is copied from what was written last.
  if (s_->cuda) {
    for (size_t i = 0; i < bound_inputs_.size(); i++) Guard(env, [&] { BindValue(true, i, bound_inputs_[i]); });
  }
}

void Runner::FinishRun() {
  // Outputs bound in host memory under a device provider were copied there by the run.
  if (s_->cuda) {
    for (const Bound& b : bound_outputs_) {
      if (b.buffer >= 0 && !buffers_[b.buffer].device) Count(false, true, false, static_cast<double>(b.bytes));
    }
  }
  stats_[kRuns] += 1;
}

// runSync(): runs the session on what is bound, on this thread, as onnxruntime-node's own
// session.run does: no thread hop per run, at the price of holding this thread (an engine
// in a worker thread holds only that one).
Napi::Value Runner::RunSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PrepareRun(env);
  Guard(env, [&] {
    if (s_->cuda) s_->cuda->set_device(s_->device);
    s_->runtime->check(s_->runtime->api().RunWithBinding(s_->session, nullptr, s_->binding), "ORT_RUN", "");
  });
  FinishRun();
  return env.Undefined();
}

// run() -> Promise<void>: runs the session on what is bound, off the JavaScript thread.
Napi::Value Runner::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PrepareRun(env);
  auto* worker = new RunWorker(this);
  busy_ = true;
  Ref();
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// stats(into: Float64Array): [runs, uploadBytes, downloadBytes, localCopyBytes, kvCopiedBytes],
// cumulative. "Upload" is into a device buffer, "download" out of one; kvCopiedBytes counts
// every byte read out of a buffer allocated with kv = true (by read, copy, or a run that had to
// move a host-memory KV input to the device), which is what "copying the cache" means.
Napi::Value Runner::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) Throw(env, "ERR_INVALID_ARG_TYPE", "stats(into: Float64Array)");
  auto out = info[0].As<Napi::Float64Array>();
  for (size_t i = 0; i < kStatCount && i < out.ElementLength(); i++) out[i] = stats_[i];
  return env.Undefined();
}

// deviceMemory() -> {free, total} bytes of the CUDA device, or undefined on the CPU provider.
Napi::Value Runner::DeviceMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Usable(env);
  if (!s_->cuda) return env.Undefined();
  size_t free_b = 0, total_b = 0;
  Guard(env, [&] {
    s_->cuda->set_device(s_->device);
    s_->cuda->mem_info(&free_b, &total_b);
  });
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", Napi::Number::New(env, static_cast<double>(free_b)));
  o.Set("total", Napi::Number::New(env, static_cast<double>(total_b)));
  return o;
}

Napi::Value Runner::Release(const Napi::CallbackInfo& info) {
  if (busy_) Throw(info.Env(), "ORT_BUSY", "this runner is running; wait for run() to settle");
  ReleaseAll();
  return info.Env().Undefined();
}

}  // namespace marginal::ort
