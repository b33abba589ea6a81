{
  "targets": [
    {
      "target_name": "marginal_native",
      "sources": ["src/addon.cc", "src/sampler.cc", "src/kernels.cc", "src/ort/runtime.cc", "src/ort/runner.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      # CPP_EXCEPTIONS_ALL: a std::bad_alloc (a huge vocab) becomes a JavaScript Error, not an abort.
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NODE_ADDON_API_CPP_EXCEPTIONS_ALL"],
      # -ffp-contract=off: a fused multiply-add rounds once where the JavaScript sampler rounds
      # twice (GCC fuses by default wherever the target has FMA, e.g. arm64), which would break
      # bit-for-bit agreement with it. No -ffast-math for the same reason: sums must stay in order.
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi"],
      "xcode_settings": {
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "GCC_OPTIMIZATION_LEVEL": "3",
        "OTHER_CPLUSPLUSFLAGS": ["-ffp-contract=off", "-fno-fast-math"]
      },
      # ONNX Runtime and the CUDA runtime are opened with dlopen at run time (no link-time
      # dependency, no headers): only libdl, which glibc before 2.34 keeps separate.
      "conditions": [["OS=='linux'", {"libraries": ["-ldl"]}]],
      "msvs_settings": {
        "VCCLCompilerTool": {"AdditionalOptions": ["/std:c++17", "/fp:precise"]}
      }
    }
  ]
}
