// Process-wide handles on the libraries the I/O-binding runner loads at run time, never at link
// time: ONNX Runtime (the libonnxruntime that ships inside onnxruntime-node) and, for device
// memory and device-side copies under CUDA, the CUDA runtime that ONNX Runtime's CUDA provider
// already loaded. The addon builds and loads where neither exists; only a runner needs them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>

#include "ort_api.h"

namespace marginal::ort {

/** Thrown for anything the caller did wrong or the machine lacks; the message says which. */
struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& message) : std::runtime_error(message), code(std::move(c)) {}
};

/** ONNX Runtime, loaded once per process from the path the first caller names. */
class Runtime {
 public:
  /** Loads the library (first call) and returns the process's runtime; throws Error on failure. */
  static Runtime& load(const std::string& library_path);

  const OrtApi& api() const { return *api_; }
  OrtEnv* env() const { return env_; }
  const std::string& version() const { return version_; }
  const std::string& path() const { return path_; }

  /** Throws Error(code, prefix + ORT's message) and releases the status when it is not OK. */
  void check(OrtStatus* status, const char* code, const std::string& prefix) const;

 private:
  Runtime() = default;
  void* handle_ = nullptr;
  const OrtApi* api_ = nullptr;
  OrtEnv* env_ = nullptr;
  std::string version_;
  std::string path_;
};

enum class CopyKind : int { HostToHost = 0, HostToDevice = 1, DeviceToHost = 2, DeviceToDevice = 3 };

/**
 * The few CUDA runtime entry points the runner needs (cudart's C ABI, stable across CUDA
 * releases): device and pinned host allocations, and synchronous copies, including strided
 * (2D) ones so that one call moves a block's rows for every head.
 */
class CudaRuntime {
 public:
  /** The runtime ONNX Runtime's CUDA provider loaded (libcudart.so.12), or throws Error. */
  static CudaRuntime& load();

  void set_device(int device) const;
  void* malloc_device(size_t bytes) const;
  void free_device(void* p) const;
  void* malloc_host(size_t bytes) const;
  void free_host(void* p) const;
  /** Row r of `rows` copies `width` bytes from src + r*spitch to dst + r*dpitch; returns when done. */
  void copy2d(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, CopyKind kind) const;
  /** Issues a strided copy on the default stream without waiting; `sync` waits for all of them. */
  void copy2d_async(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t rows, CopyKind kind) const;
  void sync() const;
  void mem_info(size_t* free_bytes, size_t* total_bytes) const;
  const std::string& name() const { return name_; }

 private:
  CudaRuntime() = default;
  void check(int err, const char* what) const;
  void* handle_ = nullptr;
  std::string name_;
  int (*set_device_)(int) = nullptr;
  int (*malloc_)(void**, size_t) = nullptr;
  int (*free_)(void*) = nullptr;
  int (*malloc_host_)(void**, size_t) = nullptr;
  int (*free_host_)(void*) = nullptr;
  int (*memset_)(void*, int, size_t) = nullptr;
  int (*memcpy2d_async_)(void*, size_t, const void*, size_t, size_t, size_t, int, void*) = nullptr;
  int (*stream_sync_)(void*) = nullptr;
  int (*mem_get_info_)(size_t*, size_t*) = nullptr;
  const char* (*error_string_)(int) = nullptr;
};

}  // namespace marginal::ort
