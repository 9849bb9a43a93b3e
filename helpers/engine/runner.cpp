// The workbook's runner: one ONNX file through NVIDIA's libspconv, inputs and output as raw files.
//
//   runner MODEL.onnx int8|fp16 VOXELS.f16 COORDS.i32 N C GRID0 GRID1 GRID2 REPEAT OUTPUT.raw
//
// VOXELS.f16 holds N x C fp16 features, COORDS.i32 N x 4 int32 indices (batch first, then the
// grid axes in the graph's order), GRID the engine's grid size in that same order. The runner
// builds the engine, runs one verbose forward (the engine prints each layer and its precision),
// writes that forward's output, then times REPEAT forwards after a warm-up.
//
// It talks to python -m helpers.engine through lines that start with "runner:" on stdout:
//   runner: output DTYPE D0,D1,...     the output's dtype and shape (the file holds its bytes)
//   runner: ms X                       one timed forward, in milliseconds
// and fails with "runner: error ..." on stderr and exit code 2 (no GPU, unreadable input, a file
// the parser refuses) or 3 (a CUDA error while running). The engine's own messages pass through.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_api.h"  // the CUDA runtime functions used here
#include "onnx-parser.hpp"
#include "spconv/engine.hpp"
#include "spconv/tensor.hpp"

static int fail(int code, const std::string& message) {
  fprintf(stderr, "runner: error %s\n", message.c_str());
  return code;
}

// A CUDA call that must succeed; on failure: its name and CUDA's reason, exit code 3.
#define CUDA_OR_FAIL(call)                                                                     \
  do {                                                                                         \
    cudaError_t status = (call);                                                               \
    if (status != cudaSuccess) return fail(3, std::string(#call) + ": " + cudaGetErrorString(status)); \
  } while (0)

static bool read_file(const char* path, std::vector<char>& bytes, size_t expected) {
  FILE* f = fopen(path, "rb");
  if (!f) return false;
  bytes.resize(expected);
  size_t got = fread(bytes.data(), 1, expected, f);
  bool at_end = fgetc(f) == EOF;  // the file holds exactly the expected bytes
  fclose(f);
  return got == expected && at_end;
}

int main(int argc, char** argv) {
  if (argc != 12)
    return fail(2, "usage: runner MODEL.onnx int8|fp16 VOXELS.f16 COORDS.i32 N C GRID0 GRID1 GRID2 REPEAT OUTPUT.raw");
  const char* model = argv[1];
  std::string precision_name = argv[2];
  const char* voxels_path = argv[3];
  const char* coords_path = argv[4];
  long n = atol(argv[5]), channels = atol(argv[6]);
  std::vector<int> grid = {atoi(argv[7]), atoi(argv[8]), atoi(argv[9])};
  int repeat = atoi(argv[10]);
  const char* output_path = argv[11];
  if (precision_name != "int8" && precision_name != "fp16")
    return fail(2, "precision " + precision_name + ": expected int8 or fp16");
  if (n <= 0 || channels <= 0 || repeat < 1) return fail(2, "N, C and REPEAT must be positive");
  auto precision = precision_name == "int8" ? spconv::Precision::Int8 : spconv::Precision::Float16;

  // 1. a GPU, before anything touches the engine
  int devices = 0;
  cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess || devices == 0)
    return fail(2, std::string("no CUDA GPU: ") + (status == cudaSuccess ? "0 devices" : cudaGetErrorString(status)));

  // 2. the inputs, read on the host and copied to the GPU
  std::vector<char> voxels, coords;
  if (!read_file(voxels_path, voxels, n * channels * 2))
    return fail(2, std::string(voxels_path) + ": expected exactly N x C fp16 values");
  if (!read_file(coords_path, coords, n * 4 * 4))
    return fail(2, std::string(coords_path) + ": expected exactly N x 4 int32 values");
  cudaStream_t stream = nullptr;
  CUDA_OR_FAIL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* voxels_gpu = nullptr;
  void* coords_gpu = nullptr;
  CUDA_OR_FAIL(cudaMalloc(&voxels_gpu, voxels.size()));
  CUDA_OR_FAIL(cudaMalloc(&coords_gpu, coords.size()));
  CUDA_OR_FAIL(cudaMemcpy(voxels_gpu, voxels.data(), voxels.size(), cudaMemcpyHostToDevice));
  CUDA_OR_FAIL(cudaMemcpy(coords_gpu, coords.data(), coords.size(), cudaMemcpyHostToDevice));

  // 3. the engine: parse the file and build it in the asked precision (verbose: each layer is printed)
  spconv::set_verbose(true);
  std::shared_ptr<spconv::Engine> engine = spconv::load_engine_from_onnx(model, precision, stream);
  if (!engine) return fail(2, std::string(model) + ": the engine's ONNX parser refused the file");
  if (engine->num_input() != 1 || engine->num_output() != 1)
    return fail(2, std::string(model) + ": expected one input and one output in the engine");
  spconv::SparseDTensor* input = engine->input(0);
  input->features().reference(voxels_gpu, {n, channels}, spconv::DataType::Float16);
  input->indices().reference(coords_gpu, {n, 4}, spconv::DataType::Int32);
  input->set_grid_size(grid);

  // 4. one verbose forward, whose output is written
  engine->forward(stream);
  CUDA_OR_FAIL(cudaStreamSynchronize(stream));
  CUDA_OR_FAIL(cudaGetLastError());
  spconv::set_verbose(false);
  spconv::Tensor output = engine->output(0)->features().to_host(stream);
  CUDA_OR_FAIL(cudaStreamSynchronize(stream));
  FILE* f = fopen(output_path, "wb");
  if (!f || fwrite(output.ptr(), 1, output.bytes(), f) != output.bytes())
    return fail(2, std::string(output_path) + ": cannot write the output");
  fclose(f);
  std::string shape;
  for (size_t i = 0; i < output.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(output.shape[i]);
  printf("runner: output %s %s\n", spconv::dtype_string(output.dtype()), shape.c_str());

  // 5. the timing: a few warm-up forwards, then REPEAT timed ones, each between two CUDA events
  cudaEvent_t start, stop;
  CUDA_OR_FAIL(cudaEventCreate(&start));
  CUDA_OR_FAIL(cudaEventCreate(&stop));
  for (int i = 0; i < 5; ++i) engine->forward(stream);
  for (int i = 0; i < repeat; ++i) {
    CUDA_OR_FAIL(cudaEventRecord(start, stream));
    engine->forward(stream);
    CUDA_OR_FAIL(cudaEventRecord(stop, stream));
    CUDA_OR_FAIL(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OR_FAIL(cudaEventElapsedTime(&ms, start, stop));
    printf("runner: ms %.4f\n", ms);
  }
  CUDA_OR_FAIL(cudaGetLastError());
  fflush(stdout);

  engine.reset();  // before the inputs it references are freed
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(voxels_gpu);
  cudaFree(coords_gpu);
  cudaStreamDestroy(stream);
  return 0;
}
