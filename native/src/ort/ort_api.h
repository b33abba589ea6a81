// The part of ONNX Runtime's C API (onnxruntime_c_api.h) that the I/O-binding runner uses,
// declared here because onnxruntime-node ships libonnxruntime but not its headers.
//
// OrtApi is a struct of function pointers that ONNX Runtime only ever appends to: the slot of
// every function is fixed once its API version ships. The order below is that of
// `ort_api_1_to_N` in onnxruntime/core/session/onnxruntime_c_api.cc (versions 1 to 11; the
// runner asks GetApi for version 11, which every ONNX Runtime since 1.11 serves). Slots the
// runner does not call are `void*`; the static_asserts at the end are ONNX Runtime's own
// checks of where each shipped version ends, so a slip in this list fails the build.
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef _WIN32
#define ORT_API_CALL __stdcall
#define ORTCHAR_T wchar_t
#else
#define ORT_API_CALL
#define ORTCHAR_T char
#endif
#define NO_EXCEPTION noexcept

extern "C" {

/** The version whose layout this file declares: the runner asks GetApi for exactly this. */
constexpr uint32_t kOrtApiVersion = 11;

typedef enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16
} ONNXTensorElementDataType;

typedef enum ONNXType {
  ONNX_TYPE_UNKNOWN,
  ONNX_TYPE_TENSOR,
  ONNX_TYPE_SEQUENCE,
  ONNX_TYPE_MAP,
  ONNX_TYPE_OPAQUE,
  ONNX_TYPE_SPARSETENSOR,
  ONNX_TYPE_OPTIONAL
} ONNXType;

typedef enum OrtLoggingLevel {
  ORT_LOGGING_LEVEL_VERBOSE,
  ORT_LOGGING_LEVEL_INFO,
  ORT_LOGGING_LEVEL_WARNING,
  ORT_LOGGING_LEVEL_ERROR,
  ORT_LOGGING_LEVEL_FATAL,
} OrtLoggingLevel;

typedef enum OrtErrorCode {
  ORT_OK,
  ORT_FAIL,
  ORT_INVALID_ARGUMENT,
  ORT_NO_SUCHFILE,
  ORT_NO_MODEL,
  ORT_ENGINE_ERROR,
  ORT_RUNTIME_EXCEPTION,
  ORT_INVALID_PROTOBUF,
  ORT_MODEL_LOADED,
  ORT_NOT_IMPLEMENTED,
  ORT_INVALID_GRAPH,
  ORT_EP_FAIL,
} OrtErrorCode;

typedef enum GraphOptimizationLevel {
  ORT_DISABLE_ALL = 0,
  ORT_ENABLE_BASIC = 1,
  ORT_ENABLE_EXTENDED = 2,
  ORT_ENABLE_ALL = 99
} GraphOptimizationLevel;

typedef enum OrtAllocatorType {
  OrtInvalidAllocator = -1,
  OrtDeviceAllocator = 0,
  OrtArenaAllocator = 1
} OrtAllocatorType;

typedef enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeCPU = OrtMemTypeCPUOutput,
  OrtMemTypeDefault = 0,
} OrtMemType;

#define ORT_OPAQUE(X) \
  struct Ort##X;      \
  typedef struct Ort##X Ort##X;
ORT_OPAQUE(Env)
ORT_OPAQUE(Status)
ORT_OPAQUE(MemoryInfo)
ORT_OPAQUE(IoBinding)
ORT_OPAQUE(Session)
ORT_OPAQUE(Value)
ORT_OPAQUE(RunOptions)
ORT_OPAQUE(TypeInfo)
ORT_OPAQUE(TensorTypeAndShapeInfo)
ORT_OPAQUE(SessionOptions)
ORT_OPAQUE(CUDAProviderOptionsV2)
#undef ORT_OPAQUE

typedef struct OrtAllocator {
  uint32_t version;
  void*(ORT_API_CALL* Alloc)(struct OrtAllocator* this_, size_t size);
  void(ORT_API_CALL* Free)(struct OrtAllocator* this_, void* p);
  const struct OrtMemoryInfo*(ORT_API_CALL* Info)(const struct OrtAllocator* this_);
} OrtAllocator;

struct OrtApi;
typedef struct OrtApi OrtApi;

struct OrtApiBase {
  const OrtApi*(ORT_API_CALL* GetApi)(uint32_t version)NO_EXCEPTION;
  const char*(ORT_API_CALL* GetVersionString)(void)NO_EXCEPTION;
};
typedef struct OrtApiBase OrtApiBase;

/** The library's one exported entry point, looked up with dlsym. */
typedef const OrtApiBase*(ORT_API_CALL* OrtGetApiBaseFn)(void);

struct OrtApi {
  void* CreateStatus;  // 0
  OrtErrorCode (ORT_API_CALL* GetErrorCode)(const OrtStatus* status) NO_EXCEPTION;  // 1
  const char* (ORT_API_CALL* GetErrorMessage)(const OrtStatus* status) NO_EXCEPTION;  // 2
  OrtStatus* (ORT_API_CALL* CreateEnv)(OrtLoggingLevel log_severity_level, const char* logid, OrtEnv** out) NO_EXCEPTION;  // 3
  void* CreateEnvWithCustomLogger;  // 4
  void* EnableTelemetryEvents;  // 5
  void* DisableTelemetryEvents;  // 6
  OrtStatus* (ORT_API_CALL* CreateSession)(const OrtEnv* env, const ORTCHAR_T* model_path, const OrtSessionOptions* options, OrtSession** out) NO_EXCEPTION;  // 7
  void* CreateSessionFromArray;  // 8
  void* Run;  // 9
  OrtStatus* (ORT_API_CALL* CreateSessionOptions)(OrtSessionOptions** options) NO_EXCEPTION;  // 10
  void* SetOptimizedModelFilePath;  // 11
  void* CloneSessionOptions;  // 12
  void* SetSessionExecutionMode;  // 13
  void* EnableProfiling;  // 14
  void* DisableProfiling;  // 15
  void* EnableMemPattern;  // 16
  void* DisableMemPattern;  // 17
  void* EnableCpuMemArena;  // 18
  void* DisableCpuMemArena;  // 19
  void* SetSessionLogId;  // 20
  void* SetSessionLogVerbosityLevel;  // 21
  OrtStatus* (ORT_API_CALL* SetSessionLogSeverityLevel)(OrtSessionOptions* options, int session_log_severity_level) NO_EXCEPTION;  // 22
  OrtStatus* (ORT_API_CALL* SetSessionGraphOptimizationLevel)(OrtSessionOptions* options, GraphOptimizationLevel graph_optimization_level) NO_EXCEPTION;  // 23
  OrtStatus* (ORT_API_CALL* SetIntraOpNumThreads)(OrtSessionOptions* options, int intra_op_num_threads) NO_EXCEPTION;  // 24
  OrtStatus* (ORT_API_CALL* SetInterOpNumThreads)(OrtSessionOptions* options, int inter_op_num_threads) NO_EXCEPTION;  // 25
  void* CreateCustomOpDomain;  // 26
  void* CustomOpDomain_Add;  // 27
  void* AddCustomOpDomain;  // 28
  void* RegisterCustomOpsLibrary;  // 29
  OrtStatus* (ORT_API_CALL* SessionGetInputCount)(const OrtSession* session, size_t* out) NO_EXCEPTION;  // 30
  OrtStatus* (ORT_API_CALL* SessionGetOutputCount)(const OrtSession* session, size_t* out) NO_EXCEPTION;  // 31
  void* SessionGetOverridableInitializerCount;  // 32
  OrtStatus* (ORT_API_CALL* SessionGetInputTypeInfo)(const OrtSession* session, size_t index, OrtTypeInfo** type_info) NO_EXCEPTION;  // 33
  OrtStatus* (ORT_API_CALL* SessionGetOutputTypeInfo)(const OrtSession* session, size_t index, OrtTypeInfo** type_info) NO_EXCEPTION;  // 34
  void* SessionGetOverridableInitializerTypeInfo;  // 35
  OrtStatus* (ORT_API_CALL* SessionGetInputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value) NO_EXCEPTION;  // 36
  OrtStatus* (ORT_API_CALL* SessionGetOutputName)(const OrtSession* session, size_t index, OrtAllocator* allocator, char** value) NO_EXCEPTION;  // 37
  void* SessionGetOverridableInitializerName;  // 38
  void* CreateRunOptions;  // 39
  void* RunOptionsSetRunLogVerbosityLevel;  // 40
  void* RunOptionsSetRunLogSeverityLevel;  // 41
  void* RunOptionsSetRunTag;  // 42
  void* RunOptionsGetRunLogVerbosityLevel;  // 43
  void* RunOptionsGetRunLogSeverityLevel;  // 44
  void* RunOptionsGetRunTag;  // 45
  void* RunOptionsSetTerminate;  // 46
  void* RunOptionsUnsetTerminate;  // 47
  void* CreateTensorAsOrtValue;  // 48
  OrtStatus* (ORT_API_CALL* CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* p_data, size_t p_data_len, const int64_t* shape, size_t shape_len, ONNXTensorElementDataType type, OrtValue** out) NO_EXCEPTION;  // 49
  void* IsTensor;  // 50
  void* GetTensorMutableData;  // 51
  void* FillStringTensor;  // 52
  void* GetStringTensorDataLength;  // 53
  void* GetStringTensorContent;  // 54
  OrtStatus* (ORT_API_CALL* CastTypeInfoToTensorInfo)(const OrtTypeInfo* type_info, const OrtTensorTypeAndShapeInfo** out) NO_EXCEPTION;  // 55
  OrtStatus* (ORT_API_CALL* GetOnnxTypeFromTypeInfo)(const OrtTypeInfo* type_info, ONNXType* out) NO_EXCEPTION;  // 56
  void* CreateTensorTypeAndShapeInfo;  // 57
  void* SetTensorElementType;  // 58
  void* SetDimensions;  // 59
  OrtStatus* (ORT_API_CALL* GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out) NO_EXCEPTION;  // 60
  OrtStatus* (ORT_API_CALL* GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) NO_EXCEPTION;  // 61
  OrtStatus* (ORT_API_CALL* GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dim_values, size_t dim_values_length) NO_EXCEPTION;  // 62
  void* GetSymbolicDimensions;  // 63
  void* GetTensorShapeElementCount;  // 64
  void* GetTensorTypeAndShape;  // 65
  void* GetTypeInfo;  // 66
  void* GetValueType;  // 67
  OrtStatus* (ORT_API_CALL* CreateMemoryInfo)(const char* name, OrtAllocatorType type, int id, OrtMemType mem_type, OrtMemoryInfo** out) NO_EXCEPTION;  // 68
  OrtStatus* (ORT_API_CALL* CreateCpuMemoryInfo)(OrtAllocatorType type, OrtMemType mem_type, OrtMemoryInfo** out) NO_EXCEPTION;  // 69
  void* CompareMemoryInfo;  // 70
  void* MemoryInfoGetName;  // 71
  void* MemoryInfoGetId;  // 72
  void* MemoryInfoGetMemType;  // 73
  void* MemoryInfoGetType;  // 74
  void* AllocatorAlloc;  // 75
  OrtStatus* (ORT_API_CALL* AllocatorFree)(OrtAllocator* ort_allocator, void* p) NO_EXCEPTION;  // 76
  void* AllocatorGetInfo;  // 77
  OrtStatus* (ORT_API_CALL* GetAllocatorWithDefaultOptions)(OrtAllocator** out) NO_EXCEPTION;  // 78
  void* AddFreeDimensionOverride;  // 79
  void* GetValue;  // 80
  void* GetValueCount;  // 81
  void* CreateValue;  // 82
  void* CreateOpaqueValue;  // 83
  void* GetOpaqueValue;  // 84
  void* KernelInfoGetAttribute_float;  // 85
  void* KernelInfoGetAttribute_int64;  // 86
  void* KernelInfoGetAttribute_string;  // 87
  void* KernelContext_GetInputCount;  // 88
  void* KernelContext_GetOutputCount;  // 89
  void* KernelContext_GetInput;  // 90
  void* KernelContext_GetOutput;  // 91
  void (ORT_API_CALL* ReleaseEnv)(OrtEnv* input) NO_EXCEPTION;  // 92
  void (ORT_API_CALL* ReleaseStatus)(OrtStatus* input) NO_EXCEPTION;  // 93
  void (ORT_API_CALL* ReleaseMemoryInfo)(OrtMemoryInfo* input) NO_EXCEPTION;  // 94
  void (ORT_API_CALL* ReleaseSession)(OrtSession* input) NO_EXCEPTION;  // 95
  void (ORT_API_CALL* ReleaseValue)(OrtValue* input) NO_EXCEPTION;  // 96
  void* ReleaseRunOptions;  // 97
  void (ORT_API_CALL* ReleaseTypeInfo)(OrtTypeInfo* input) NO_EXCEPTION;  // 98
  void* ReleaseTensorTypeAndShapeInfo;  // 99
  void (ORT_API_CALL* ReleaseSessionOptions)(OrtSessionOptions* input) NO_EXCEPTION;  // 100
  void* ReleaseCustomOpDomain;  // 101
  void* GetDenotationFromTypeInfo;  // 102
  void* CastTypeInfoToMapTypeInfo;  // 103
  void* CastTypeInfoToSequenceTypeInfo;  // 104
  void* GetMapKeyType;  // 105
  void* GetMapValueType;  // 106
  void* GetSequenceElementType;  // 107
  void* ReleaseMapTypeInfo;  // 108
  void* ReleaseSequenceTypeInfo;  // 109
  void* SessionEndProfiling;  // 110
  void* SessionGetModelMetadata;  // 111
  void* ModelMetadataGetProducerName;  // 112
  void* ModelMetadataGetGraphName;  // 113
  void* ModelMetadataGetDomain;  // 114
  void* ModelMetadataGetDescription;  // 115
  void* ModelMetadataLookupCustomMetadataMap;  // 116
  void* ModelMetadataGetVersion;  // 117
  void* ReleaseModelMetadata;  // 118
  void* CreateEnvWithGlobalThreadPools;  // 119
  void* DisablePerSessionThreads;  // 120
  void* CreateThreadingOptions;  // 121
  void* ReleaseThreadingOptions;  // 122
  void* ModelMetadataGetCustomMetadataMapKeys;  // 123
  void* AddFreeDimensionOverrideByName;  // 124
  void* GetAvailableProviders;  // 125
  void* ReleaseAvailableProviders;  // 126
  void* GetStringTensorElementLength;  // 127
  void* GetStringTensorElement;  // 128
  void* FillStringTensorElement;  // 129
  OrtStatus* (ORT_API_CALL* AddSessionConfigEntry)(OrtSessionOptions* options, const char* config_key, const char* config_value) NO_EXCEPTION;  // 130
  void* CreateAllocator;  // 131
  void* ReleaseAllocator;  // 132
  OrtStatus* (ORT_API_CALL* RunWithBinding)(OrtSession* session, const OrtRunOptions* run_options, const OrtIoBinding* binding_ptr) NO_EXCEPTION;  // 133
  OrtStatus* (ORT_API_CALL* CreateIoBinding)(OrtSession* session, OrtIoBinding** out) NO_EXCEPTION;  // 134
  void (ORT_API_CALL* ReleaseIoBinding)(OrtIoBinding* input) NO_EXCEPTION;  // 135
  OrtStatus* (ORT_API_CALL* BindInput)(OrtIoBinding* binding_ptr, const char* name, const OrtValue* val_ptr) NO_EXCEPTION;  // 136
  OrtStatus* (ORT_API_CALL* BindOutput)(OrtIoBinding* binding_ptr, const char* name, const OrtValue* val_ptr) NO_EXCEPTION;  // 137
  void* BindOutputToDevice;  // 138
  void* GetBoundOutputNames;  // 139
  void* GetBoundOutputValues;  // 140
  void (ORT_API_CALL* ClearBoundInputs)(OrtIoBinding* binding_ptr) NO_EXCEPTION;  // 141
  void (ORT_API_CALL* ClearBoundOutputs)(OrtIoBinding* binding_ptr) NO_EXCEPTION;  // 142
  void* TensorAt;  // 143
  void* CreateAndRegisterAllocator;  // 144
  void* SetLanguageProjection;  // 145
  void* SessionGetProfilingStartTimeNs;  // 146
  void* SetGlobalIntraOpNumThreads;  // 147
  void* SetGlobalInterOpNumThreads;  // 148
  void* SetGlobalSpinControl;  // 149
  void* AddInitializer;  // 150
  void* CreateEnvWithCustomLoggerAndGlobalThreadPools;  // 151
  void* SessionOptionsAppendExecutionProvider_CUDA;  // 152
  void* SessionOptionsAppendExecutionProvider_ROCM;  // 153
  void* SessionOptionsAppendExecutionProvider_OpenVINO;  // 154
  void* SetGlobalDenormalAsZero;  // 155
  void* CreateArenaCfg;  // 156
  void* ReleaseArenaCfg;  // 157
  void* ModelMetadataGetGraphDescription;  // 158
  void* SessionOptionsAppendExecutionProvider_TensorRT;  // 159
  void* SetCurrentGpuDeviceId;  // 160
  void* GetCurrentGpuDeviceId;  // 161
  void* KernelInfoGetAttributeArray_float;  // 162
  void* KernelInfoGetAttributeArray_int64;  // 163
  void* CreateArenaCfgV2;  // 164
  void* AddRunConfigEntry;  // 165
  void* CreatePrepackedWeightsContainer;  // 166
  void* ReleasePrepackedWeightsContainer;  // 167
  void* CreateSessionWithPrepackedWeightsContainer;  // 168
  void* CreateSessionFromArrayWithPrepackedWeightsContainer;  // 169
  void* SessionOptionsAppendExecutionProvider_TensorRT_V2;  // 170
  void* CreateTensorRTProviderOptions;  // 171
  void* UpdateTensorRTProviderOptions;  // 172
  void* GetTensorRTProviderOptionsAsString;  // 173
  void* ReleaseTensorRTProviderOptions;  // 174
  void* EnableOrtCustomOps;  // 175
  void* RegisterAllocator;  // 176
  void* UnregisterAllocator;  // 177
  void* IsSparseTensor;  // 178
  void* CreateSparseTensorAsOrtValue;  // 179
  void* FillSparseTensorCoo;  // 180
  void* FillSparseTensorCsr;  // 181
  void* FillSparseTensorBlockSparse;  // 182
  void* CreateSparseTensorWithValuesAsOrtValue;  // 183
  void* UseCooIndices;  // 184
  void* UseCsrIndices;  // 185
  void* UseBlockSparseIndices;  // 186
  void* GetSparseTensorFormat;  // 187
  void* GetSparseTensorValuesTypeAndShape;  // 188
  void* GetSparseTensorValues;  // 189
  void* GetSparseTensorIndicesTypeShape;  // 190
  void* GetSparseTensorIndices;  // 191
  void* HasValue;  // 192
  void* KernelContext_GetGPUComputeStream;  // 193
  void* GetTensorMemoryInfo;  // 194
  void* GetExecutionProviderApi;  // 195
  void* SessionOptionsSetCustomCreateThreadFn;  // 196
  void* SessionOptionsSetCustomThreadCreationOptions;  // 197
  void* SessionOptionsSetCustomJoinThreadFn;  // 198
  void* SetGlobalCustomCreateThreadFn;  // 199
  void* SetGlobalCustomThreadCreationOptions;  // 200
  void* SetGlobalCustomJoinThreadFn;  // 201
  void* SynchronizeBoundInputs;  // 202
  void* SynchronizeBoundOutputs;  // 203
  OrtStatus* (ORT_API_CALL* SessionOptionsAppendExecutionProvider_CUDA_V2)(OrtSessionOptions* options, const OrtCUDAProviderOptionsV2* cuda_options) NO_EXCEPTION;  // 204
  OrtStatus* (ORT_API_CALL* CreateCUDAProviderOptions)(OrtCUDAProviderOptionsV2** out) NO_EXCEPTION;  // 205
  OrtStatus* (ORT_API_CALL* UpdateCUDAProviderOptions)(OrtCUDAProviderOptionsV2* cuda_options, const char* const* provider_options_keys, const char* const* provider_options_values, size_t num_keys) NO_EXCEPTION;  // 206
  void* GetCUDAProviderOptionsAsString;  // 207
  void (ORT_API_CALL* ReleaseCUDAProviderOptions)(OrtCUDAProviderOptionsV2* input) NO_EXCEPTION;  // 208
  void* SessionOptionsAppendExecutionProvider_MIGraphX;  // 209
};

}  // extern "C"

static_assert(offsetof(OrtApi, ReleaseCustomOpDomain) / sizeof(void*) == 101, "version 1 of OrtApi ends at slot 101");
static_assert(offsetof(OrtApi, ReleaseModelMetadata) / sizeof(void*) == 118, "version 2 of OrtApi ends at slot 118");
static_assert(offsetof(OrtApi, AddFreeDimensionOverrideByName) / sizeof(void*) == 124, "version 3 of OrtApi ends at slot 124");
static_assert(offsetof(OrtApi, ReleaseAvailableProviders) / sizeof(void*) == 126, "version 4 of OrtApi ends at slot 126");
static_assert(offsetof(OrtApi, SetGlobalSpinControl) / sizeof(void*) == 149, "version 5 of OrtApi ends at slot 149");
static_assert(offsetof(OrtApi, ReleaseArenaCfg) / sizeof(void*) == 157, "version 6 of OrtApi ends at slot 157");
static_assert(offsetof(OrtApi, GetCurrentGpuDeviceId) / sizeof(void*) == 161, "version 7 of OrtApi ends at slot 161");
static_assert(offsetof(OrtApi, CreateSessionFromArrayWithPrepackedWeightsContainer) / sizeof(void*) == 169, "version 8 of OrtApi ends at slot 169");
static_assert(offsetof(OrtApi, GetSparseTensorIndices) / sizeof(void*) == 191, "version 9 of OrtApi ends at slot 191");
static_assert(offsetof(OrtApi, SynchronizeBoundOutputs) / sizeof(void*) == 203, "version 10 of OrtApi ends at slot 203");
static_assert(offsetof(OrtApi, SessionOptionsAppendExecutionProvider_MIGraphX) / sizeof(void*) == 209, "version 11 of OrtApi ends at slot 209");
