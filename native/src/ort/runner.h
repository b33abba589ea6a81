// OrtRunner: one ONNX Runtime session driven through the C API with I/O binding. The caller
// allocates buffers where it wants them (the session's device, or host memory), binds named
// inputs and outputs to views of them, runs, and moves bytes between buffers with counted,
// batched, strided copies that execute where the memory lives. Nothing is copied that the
// caller did not ask for, except what ONNX Runtime must move for a value bound in host memory
// under a device provider, which is counted as well.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime.h"

namespace marginal::ort {

struct TensorSlot {
  std::string name;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  /** -1 for a symbolic dimension; empty with rank -1 when the value is not a tensor. */
  std::vector<int64_t> dims;
  int64_t rank = -1;
};

/** What the open worker prepares off the JavaScript thread for the Runner's constructor. */
struct PreparedSession {
  Runtime* runtime = nullptr;
  CudaRuntime* cuda = nullptr;
  int device = 0;
  OrtSession* session = nullptr;
  OrtIoBinding* binding = nullptr;
  OrtMemoryInfo* host_info = nullptr;
  OrtMemoryInfo* device_info = nullptr;
  std::vector<TensorSlot> inputs;
  std::vector<TensorSlot> outputs;
  void release();
};

struct OpenOptions {
  std::string library;
  std::string model;
  bool cuda = false;
  int device = 0;
  int intra_op_threads = 0;
  int inter_op_threads = 0;
  bool spinning = false;
  GraphOptimizationLevel optimization = ORT_ENABLE_ALL;
};

/** Opens a session off the JavaScript thread; resolves to a Runner built with `constructor`. */
Napi::Value OpenRunner(const Napi::CallbackInfo& info, Napi::FunctionReference& constructor);

class Runner : public Napi::ObjectWrap<Runner> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Runner(const Napi::CallbackInfo& info);
  ~Runner() override;

  // Stats slots, in the order stats(into) writes them.
  enum Stat { kRuns, kUploadBytes, kDownloadBytes, kLocalCopyBytes, kKvCopiedBytes, kStatCount };

 private:
  struct Buffer {
    void* data = nullptr;
    size_t bytes = 0;
    bool device = false;     // declared where: the session's device (true) or host memory
    bool addressable = false;  // host-addressable (CPU provider, or host memory)
    bool kv = false;
    bool live = false;
    Napi::Reference<Napi::ArrayBuffer> owner;  // host-addressable memory belongs to this ArrayBuffer
  };
  struct Bound {
    int buffer = -1;
    size_t offset = 0;
    size_t bytes = 0;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::vector<int64_t> dims;
  };
  class RunWorker;

  Napi::Value Inputs(const Napi::CallbackInfo& info);
  Napi::Value Outputs(const Napi::CallbackInfo& info);
  Napi::Value Provider(const Napi::CallbackInfo& info);
  Napi::Value Version(const Napi::CallbackInfo& info);
  Napi::Value Allocate(const Napi::CallbackInfo& info);
  Napi::Value View(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Copy(const Napi::CallbackInfo& info);
  Napi::Value BindInput(const Napi::CallbackInfo& info);
  Napi::Value BindOutput(const Napi::CallbackInfo& info);
  Napi::Value ClearOutputs(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value RunSync(const Napi::CallbackInfo& info);
  void PrepareRun(Napi::Env env);
  void FinishRun();
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value DeviceMemory(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);

  void Usable(Napi::Env env) const;
  Buffer& Live(Napi::Env env, const Napi::Value& id);
  Napi::Value Bind(const Napi::CallbackInfo& info, bool input);
  void BindValue(bool input, size_t index, const Bound& b);
  void Count(bool to_device, bool from_device, bool from_kv, double bytes);
  void ReleaseAll();

  std::unique_ptr<PreparedSession> s_;
  std::vector<Buffer> buffers_;
  std::vector<Bound> bound_inputs_;
  std::vector<Bound> bound_outputs_;
  double stats_[kStatCount] = {};
  bool busy_ = false;
};

}  // namespace marginal::ort
