// The few CUDA runtime functions runner.cpp calls, declared as libcudart.so.12 exports them.
//
// Declaring them here means the build needs only libcudart.so.12 (pip's nvidia-cuda-runtime-cu12
// wheel has one), not a CUDA toolkit: the wheel's cuda_runtime.h includes headers it does not ship.
// Each is a plain C function of the CUDA runtime API; the values are those of CUDA's own headers.
#pragma once
#include <cstddef>

extern "C" {
typedef int cudaError_t;               // 0 = cudaSuccess
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

const int cudaSuccess = 0;
const unsigned int cudaStreamNonBlocking = 0x01;
const int cudaMemcpyHostToDevice = 1;

cudaError_t cudaGetDeviceCount(int* count);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError(void);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, int kind);
cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);
}
