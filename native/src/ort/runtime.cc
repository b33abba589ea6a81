#include "runtime.h"

#include <cstring>
#include <type_traits>

#ifndef _WIN32
#include <dlfcn.h>
#endif

namespace marginal::ort {

namespace {

#ifndef _WIN32
void* open_library(const char* path, int extra_flags) { return dlopen(path, RTLD_NOW | RTLD_LOCAL | extra_flags); }
void* symbol(void* handle, const char* name) { return dlsym(handle, name); }
std::string last_error() {
  const char* e = dlerror();
  return e ? e : "unknown error";
}
#else
// onnxruntime-node's Windows build names its library onnxruntime.dll and takes wide paths;
// the runner is not ported there, and the JavaScript session path serves Windows.
void* open_library(const char*, int) { return nullptr; }
void* symbol(void*, const char*) { return nullptr; }
std::string last_error() { return "the I/O-binding runner is not supported on Windows"; }
#endif

std::mutex load_mutex;

}  // namespace

Runtime& Runtime::load(const std::string& library_path) {
  static Runtime* runtime = nullptr;
  std::lock_guard<std::mutex> lock(load_mutex);
  if (runtime != nullptr) return *runtime;
  void* handle = open_library(library_path.c_str(), 0);
  if (handle == nullptr) throw Error("ORT_LIBRARY", "cannot load " + library_path + ": " + last_error());
  auto get_base = reinterpret_cast<OrtGetApiBaseFn>(symbol(handle, "OrtGetApiBase"));
  if (get_base == nullptr) throw Error("ORT_LIBRARY", library_path + " has no OrtGetApiBase: " + last_error());
  const OrtApiBase* base = get_base();
  const char* version = base->GetVersionString();
  const OrtApi* api = base->GetApi(kOrtApiVersion);
  if (api == nullptr) {
    throw Error("ORT_LIBRARY", library_path + " (ONNX Runtime " + (version ? version : "?") + ") does not serve C API version " + std::to_string(kOrtApiVersion));
  }
  auto* r = new Runtime();  // Process lifetime: sessions in any thread may use it until exit.
  r->handle_ = handle;
  r->api_ = api;
  r->version_ = version ? version : "";
  r->path_ = library_path;
  // The environment is a process-wide singleton inside ONNX Runtime (onnxruntime-node's
  // sessions share it); ours holds one reference for the life of the process.
  r->check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "marginal", &r->env_), "ORT_ENV", "cannot create ONNX Runtime's environment: ");
  runtime = r;
  return *runtime;
}

void Runtime::check(OrtStatus* status, const char* code, const std::string& prefix) const {
  if (status == nullptr) return;
  std::string message = prefix + api_->GetErrorMessage(status);
  api_->ReleaseStatus(status);
  throw Error(code, message);
}

CudaRuntime& CudaRuntime::load() {
  static CudaRuntime* cuda = nullptr;
  std::lock_guard<std::mutex> lock(load_mutex);
  if (cuda != nullptr) return *cuda;
  // ONNX Runtime's CUDA provider links libcudart.so.12, so once a CUDA session exists this
  // only finds the copy already in the process; the later names are for other layouts.
  const char* names[] = {"libcudart.so.12", "libcudart.so", "libcudart.so.13", "libcudart.so.11.0"};
  void* handle = nullptr;
  std::string tried;
  for (const char* n : names) {
    handle = open_library(n, 0);
    if (handle != nullptr) {
      tried = n;
      break;
    }
    tried += (tried.empty() ? "" : ", ") + std::string(n) + " (" + last_error() + ")";
  }
  if (handle == nullptr) throw Error("ORT_CUDA", "cannot load the CUDA runtime: " + tried);
  auto* c = new CudaRuntime();
  c->handle_ = handle;
  c->name_ = tried;
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(symbol(handle, name));
    if (fn == nullptr) throw Error("ORT_CUDA", std::string("the CUDA runtime lacks ") + name);
  };
  bind(c->set_device_, "cudaSetDevice");
  bind(c->malloc_, "cudaMalloc");
  bind(c->free_, "cudaFree");
  bind(c->malloc_host_, "cudaMallocHost");
  bind(c->free_host_, "cudaFreeHost");
  bind(c->memset_, "cudaMemset");
  bind(c->memcpy2d_async_, "cudaMemcpy2DAsync");
  bind(c->stream_sync_, "cudaStreamSynchronize");
  bind(c->mem_get_info_, "cudaMemGetInfo");
  bind(c->error_string_, "cudaGetErrorString");
  cuda = c;
  return *cuda;
}

void CudaRuntime::check(int err, const char* what) const {
  if (err == 0) return;
  const char* s = error_string_ ? error_string_(err) : nullptr;
  throw Error("ORT_CUDA", std::string(what) + " failed: " + (s ? s : "CUDA error " + std::to_string(err)));
}

// The current device is per thread, and runs and copies happen on libuv's pool as well as the
// JavaScript thread, so every entry point that touches memory names its device first.
void CudaRuntime::set_device(int device) const { check(set_device_(device), "cudaSetDevice"); }

void* CudaRuntime::malloc_device(size_t bytes) const {
  void* p = nullptr;
  check(malloc_(&p, bytes == 0 ? 1 : bytes), "cudaMalloc");
  int err = memset_(p, 0, bytes);
  if (err != 0) {
    free_(p);
    check(err, "cudaMemset");
  }
  // cudaMemset is asynchronous with respect to the host for device memory.
  check(stream_sync_(nullptr), "cudaStreamSynchronize");
  return p;
}

void CudaRuntime::free_device(void* p) const { free_(p); }

void* CudaRuntime::malloc_host(size_t bytes) const {
  void* p = nullptr;
  check(malloc_host_(&p, bytes == 0 ? 1 : bytes), "cudaMallocHost");
  std::memset(p, 0, bytes);
  return p;
}

void CudaRuntime::free_host(void* p) const { free_host_(p); }

void CudaRuntime::copy2d_async(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, CopyKind kind) const {
  check(memcpy2d_async_(dst, dpitch, src, spitch, width, rows, static_cast<int>(kind), nullptr), "cudaMemcpy2DAsync");
}

// ONNX Runtime runs on its own (non-blocking) stream and synchronizes it before a run
// returns; our copies go on the legacy default stream and are waited for before returning, so
// a run never starts while a copy into its inputs is in flight, nor a copy while a run is.
void CudaRuntime::sync() const { check(stream_sync_(nullptr), "cudaStreamSynchronize"); }

void CudaRuntime::copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, CopyKind kind) const {
  copy2d_async(dst, dpitch, src, spitch, width, rows, kind);
  sync();
}

void CudaRuntime::mem_info(size_t* free_bytes, size_t* total_bytes) const { check(mem_get_info_(free_bytes, total_bytes), "cudaMemGetInfo"); }

}  // namespace marginal::ort
