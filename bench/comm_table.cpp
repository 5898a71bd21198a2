// Gradient all-reduce volume per optimizer step for the GPT-2 family, LoRA against full
// fine-tuning, and the time a ring all-reduce of that volume takes in the bandwidth model.
//
// Every count comes from the model code: BaseLayout(shape).n_params() for the base (tied LM head,
// so the full fine-tuning gradient is every base parameter) and LoraLayout(shape, spec).n_params()
// for the adapters (sum over adapted linears of r * (d_in + d_out)). Neither allocates weights.
// Gradients are fp32, so bytes per step = 4 x trainable parameters, whatever the world size.
//
// Modelled ring all-reduce time (bandwidth term of the alpha-beta model, latency ignored):
//     t = 2 (N - 1) / N x bytes / bandwidth
// with N ranks and bandwidth the per-rank link bandwidth in GB/s (1 GB = 1e9 bytes).
//
// Prints markdown tables to stdout:
//   comm_table [--ranks 8,64,512] [--bandwidths 25,200] [--ranks-lora 4,8,16,64]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/model/base_layout.h"
#include "core/model/lora_layout.h"
#include "core/model/spec.h"

using namespace lora;

namespace {

struct NamedShape {
  const char* name;
  ModelSpec shape;
};

// Hugging Face GPT-2 checkpoints: vocab 50257, context 1024.
std::vector<NamedShape> gpt2_family() {
  auto shape = [](int n_layer, int d_model, int n_head) {
    return gpt2_spec(50257, 1024, n_layer, n_head, d_model);
  };
  return {{"GPT-2 124M", shape(12, 768, 12)},
          {"GPT-2 355M", shape(24, 1024, 16)},
          {"GPT-2 774M", shape(36, 1280, 20)},
          {"GPT-2 1.5B", shape(48, 1600, 25)}};
}

struct TargetSet {
  const char* name;
  std::vector<LoraTarget> targets;
};

std::vector<TargetSet> target_sets() {
  return {{"attn.qkv+attn.proj", {LoraTarget::kAttnQkv, LoraTarget::kAttnProj}},
          {"all four",
           {LoraTarget::kAttnQkv, LoraTarget::kAttnProj, LoraTarget::kMlpFc,
            LoraTarget::kMlpProj}}};
}

// One row of the tables: a model, a training setup, its trainable count.
struct Row {
  std::string model;
  std::string setup;  // "full" or "r=8, attn.qkv+attn.proj"
  size_t n_trainable = 0;
  size_t n_full = 0;
};

std::vector<int> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    LORA_INPUT_CHECK(end != item.c_str() && *end == '\0' && v > 0, "comm_table: ", flag,
                     " expects a comma-separated list of positive integers, got '", text, "'");
    out.push_back(static_cast<int>(v));
  }
  LORA_INPUT_CHECK(!out.empty(), "comm_table: ", flag, " needs at least one value");
  return out;
}

std::string with_commas(size_t v) {
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Bytes in MB (1e6 bytes), three significant decimals for small values.
std::string megabytes(double bytes) {
  char buf[64];
  const double mb = bytes / 1e6;
  std::snprintf(buf, sizeof buf, mb < 10 ? "%.3f" : (mb < 1000 ? "%.1f" : "%.0f"), mb);
  return buf;
}

std::string milliseconds(double ms) {
  char buf[64];
  std::snprintf(buf, sizeof buf, ms < 0.1 ? "%.4f" : (ms < 1 ? "%.3f" : (ms < 10 ? "%.2f" : "%.1f")), ms);
  return buf;
}

double ring_all_reduce_ms(double bytes, int n_ranks, double gb_per_s) {
  const double n = n_ranks;
  return 2.0 * (n - 1.0) / n * bytes / (gb_per_s * 1e9) * 1e3;
}

}  // namespace

int main(int argc, char** argv) try {
  std::vector<int> world_sizes{8, 64, 512};
  std::vector<int> bandwidths{25, 200};
  std::vector<int> lora_ranks{4, 8, 16, 64};
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf("usage: comm_table [--ranks 8,64,512] [--bandwidths 25,200] "
                  "[--ranks-lora 4,8,16,64]\n");
      return 0;
    }
    LORA_INPUT_CHECK(i + 1 < argc, "comm_table: ", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--ranks") world_sizes = parse_int_list(v, "--ranks");
    else if (k == "--bandwidths") bandwidths = parse_int_list(v, "--bandwidths");
    else if (k == "--ranks-lora") lora_ranks = parse_int_list(v, "--ranks-lora");
    else throw InputError("comm_table: unknown option " + k + " (see --help)");
  }

  const auto family = gpt2_family();
  std::vector<Row> rows;
  std::printf("## Gradient all-reduce per step: LoRA vs full fine-tuning (GPT-2 family)\n\n");
  std::printf("Counts from `lora::BaseLayout(shape).n_params()` and "
              "`lora::LoraLayout(shape, spec).n_params()`.\n");
  std::printf("Shapes: vocab 50257, context 1024, LM head tied to `wte` (counted once), "
              "`wpe` [1024, d_model].\n\n");
  std::printf("| model | n_layer | d_model | n_head | base parameters |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  for (const auto& m : family) {
    const size_t n_full = BaseLayout(m.shape).n_params();
    std::printf("| %s | %d | %d | %d | %s |\n", m.name, m.shape.n_layer, m.shape.d_model,
                m.shape.n_head, with_commas(n_full).c_str());
    rows.push_back({m.name, "full fine-tuning", n_full, n_full});
    for (const auto& ts : target_sets()) {
      for (int r : lora_ranks) {
        LoraSpec spec;
        spec.rank = r;
        spec.alpha = 2.0f * r;
        spec.targets = ts.targets;
        const size_t n = LoraLayout(m.shape, spec).n_params();
        rows.push_back({m.name, "LoRA r=" + std::to_string(r) + ", " + ts.name, n, n_full});
      }
    }
  }
  const size_t n_124m = BaseLayout(family[0].shape).n_params();
  std::printf("\nCheck: GPT-2 124M has %s parameters here; the Hugging Face checkpoint has "
              "124,439,808 (tied embeddings, wpe 1024x768): %s.\n\n",
              with_commas(n_124m).c_str(), n_124m == 124439808 ? "match" : "MISMATCH");

  std::printf("### Bytes per step\n\n");
  std::printf("bytes per step = 4 x trainable parameters (fp32 gradients), the same on every "
              "rank and for any number of ranks; MB = 1e6 bytes. \"full / this\" is how many "
              "times fewer bytes than full fine-tuning.\n\n");
  std::printf("| model | setup | trainable parameters | %% of base | MB per step | full / this |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  for (const auto& r : rows) {
    const double bytes = 4.0 * double(r.n_trainable);
    std::printf("| %s | %s | %s | %.4f | %s | %.0fx |\n", r.model.c_str(), r.setup.c_str(),
                with_commas(r.n_trainable).c_str(), 100.0 * double(r.n_trainable) / double(r.n_full),
                megabytes(bytes).c_str(), double(r.n_full) / double(r.n_trainable));
  }

  std::printf("\n### Modelled ring all-reduce time per step\n\n");
  std::printf("t = 2 (N - 1) / N x bytes / B, in milliseconds, for N ranks and per-rank link "
              "bandwidth B in GB/s (1 GB = 1e9 bytes). Bandwidth term only: the latency term "
              "(2 (N - 1) messages of fixed cost each) is left out, and it dominates for small "
              "LoRA gradients at large N; no overlap with backward is assumed.\n");
  for (int bw : bandwidths) {
    std::printf("\n#### B = %d GB/s\n\n| model | setup |", bw);
    for (int n : world_sizes) std::printf(" N=%d (ms) |", n);
    std::printf("\n|---|---|");
    for (size_t i = 0; i < world_sizes.size(); ++i) std::printf("---:|");
    std::printf("\n");
    for (const auto& r : rows) {
      const double bytes = 4.0 * double(r.n_trainable);
      std::printf("| %s | %s |", r.model.c_str(), r.setup.c_str());
      for (int n : world_sizes)
        std::printf(" %s |", milliseconds(ring_all_reduce_ms(bytes, n, bw)).c_str());
      std::printf("\n");
    }
  }
  return n_124m == 124439808 ? 0 : 1;
} catch (const InputError& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 2;
} catch (const std::exception& e) {
  std::fprintf(stderr, "comm_table: %s\n", e.what());
  return 1;
}
