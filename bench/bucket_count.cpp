// How the gradient reducer cuts one optimizer step's trainable gradients into all-reduce buckets
// for a model shape and comm.bucket_mb, as `lora train` does it: the real model's backward marks
// ranges ready (last block first) into the real comm::GradReducer, over a one-process communicator
// that records the element count of every all-reduce it is given. One forward/backward on a short
// random batch is enough, since bucket boundaries depend only on the marked ranges and the bucket
// size. The bucket size in elements is max(1, bucket_mb x 1024 x 1024 / 4), as in trainer.cpp.
// Prints one JSON object: n_trainable, bucket_elems, n_buckets and the bucket sizes in elements.
//
//   bucket_count [--layers 4] [--d-model 256] [--heads 4] [--vocab 256] [--rank 8]
//                [--targets attn.qkv,attn.proj] [--mode lora|full] [--bucket-mb 25]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/grad_reducer.h"
#include "core/error.h"
#include "core/model/transformer.h"
#include "core/rng.h"

using namespace lora;

namespace {

class DoneWork final : public comm::Work {
 public:
  void wait(std::chrono::milliseconds) override {}
  bool test() override { return true; }
};

// One rank; every all-reduce is an identity whose element count is recorded.
class RecordingCommunicator final : public comm::Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "recording"; }
  using Communicator::all_reduce_async;
  using Communicator::broadcast;
  std::unique_ptr<comm::Work> all_reduce_async(void*, size_t count, comm::DType type,
                                               comm::ReduceOp) override {
    counts_.push_back(count);
    stats_.all_reduce_bytes += count * comm::dtype_size(type);
    ++stats_.all_reduce_calls;
    return std::make_unique<DoneWork>();
  }
  void broadcast(void*, size_t, comm::DType, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override {
    return std::make_unique<RecordingCommunicator>();
  }
  [[noreturn]] void abort(int exit_code) override { std::exit(exit_code); }

  const std::vector<size_t>& counts() const { return counts_; }

 private:
  std::vector<size_t> counts_;
};

}  // namespace

int main(int argc, char** argv) try {
  ModelSpec shape = gpt2_spec(256, 128, 4, 4, 256);
  std::string mode = "lora", targets = "attn.qkv,attn.proj";
  double bucket_mb = 25.0;
  LoraSpec spec;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    LORA_INPUT_CHECK(i + 1 < argc, "bucket_count: ", k, " needs a value");
    const char* v = argv[++i];
    if (k == "--layers") shape.n_layer = std::atoi(v);
    else if (k == "--d-model") shape.d_model = std::atoi(v);
    else if (k == "--heads") shape.n_head = std::atoi(v);
    else if (k == "--vocab") shape.vocab_size = std::atoi(v);
    else if (k == "--rank") spec.rank = std::atoi(v);
    else if (k == "--targets") targets = v;
    else if (k == "--mode") mode = v;
    else if (k == "--bucket-mb") bucket_mb = std::atof(v);
    else throw InputError("bucket_count: unknown option " + k);
  }
  LORA_INPUT_CHECK(mode == "lora" || mode == "full", "bucket_count: --mode expects lora or full, got '",
                   mode, "'");
  LORA_INPUT_CHECK(bucket_mb > 0, "bucket_count: --bucket-mb expects a number > 0");
  spec.alpha = 2.0f * spec.rank;
  spec.targets.clear();
  std::stringstream ss(targets);
  for (std::string t; std::getline(ss, t, ',');) {
    const auto target = parse_lora_target(t, shape);
    LORA_INPUT_CHECK(target.has_value(), "bucket_count: unknown LoRA target '", t, "'");
    spec.targets.push_back(*target);
  }

  const bool full = mode == "full";
  std::optional<LoraSpec> lspec;
  if (!full) lspec = spec;
  const int n_seq = std::min(8, shape.max_seq_len);
  TransformerModel model(shape, full ? TrainMode::kFull : TrainMode::kLora, lspec);
  model.init_base_random(1);
  model.init_lora(2);
  std::vector<int32_t> tokens(n_seq), next(n_seq);
  for (int i = 0; i < n_seq; ++i) {
    tokens[i] = static_cast<int32_t>(hash_u64(3, i) % shape.vocab_size);
    next[i] = static_cast<int32_t>(hash_u64(4, i) % shape.vocab_size);
  }

  RecordingCommunicator comm;
  const size_t bucket_elems =
      std::max<size_t>(1, static_cast<size_t>(bucket_mb * 1024.0 * 1024.0 / sizeof(float)));
  comm::GradReducer reducer(comm, std::span<float>(model.trainable_grads(), model.n_trainable()),
                            bucket_elems, /*overlap=*/true);
  model.zero_grads();
  model.forward(tokens.data(), next.data(), 1, n_seq);
  reducer.begin_step();
  model.backward(1.0f, [&](size_t offset, size_t count) { reducer.mark_ready(offset, count); });
  reducer.finish();

  std::printf("{\"mode\": \"%s\", \"n_trainable\": %zu, \"bucket_mb\": %g, \"bucket_elems\": %zu, "
              "\"n_buckets\": %zu, \"bucket_elems_each\": [",
              mode.c_str(), model.n_trainable(), bucket_mb, bucket_elems,
              reducer.n_buckets_last_step());
  for (size_t i = 0; i < comm.counts().size(); ++i)
    std::printf("%s%zu", i ? ", " : "", comm.counts()[i]);
  std::printf("]}\n");
  LORA_CHECK(comm.counts().size() == reducer.n_buckets_last_step(),
             "recorded all-reduces differ from the reducer's bucket count");
  return 0;
} catch (const InputError& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 2;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bucket_count: %s\n", e.what());
  return 1;
}
