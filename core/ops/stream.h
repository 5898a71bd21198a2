// The CUDA stream type, declared without pulling CUDA headers into CPU code.
// Each op header declares `<op>_cpu(...)` and, when built with CUDA, `<op>_cuda(..., cudaStream_t)`
// with the same arguments on device pointers.
#pragma once

#ifdef LORA_WITH_CUDA
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
#endif
