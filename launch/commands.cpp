// train, eval, generate, inspect, tokenize, export and merge: the subcommands of the `lora` CLI.
#include "launch/commands.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/json.h"
#include "core/model/hf_model.h"
#include "core/model/merge.h"
#include "core/model/transformer.h"
#include "core/rng.h"
#include "core/tokenizer.h"
#include "core/unicode.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/data.h"
#include "trainer/trainer.h"

namespace lora {

namespace {

constexpr int kExitSignal = 75;       // stopped by SIGTERM/SIGUSR1 after a checkpoint
constexpr int kExitInterrupted = 130; // stopped by Ctrl-C after a checkpoint

// The model eval and generate run: without an adapter the base alone (whatever lora.init says:
// the adapters are zero); with one, the adapter's LoRA settings and parameters (a PEFT directory
// or a lora-mode checkpoint), or a full-mode checkpoint's whole model. `what` says which.
std::unique_ptr<Model> model_for_inference(const Config& cfg, const std::string& adapter,
                                           std::string* what) {
  configure_threads(cfg.device.threads);
  if (adapter.empty()) {
    Config base = cfg;
    base.lora.init_a = LoraInitA::kZeros;
    base.lora.init_b = LoraInitB::kZeros;
    if (what) *what = "the base model alone (no --adapter)";
    return build_model(base);
  }
  if (!is_adapter_dir(adapter)) {
    auto ckpt = std::make_shared<const CheckpointState>(read_checkpoint(adapter));
    if (ckpt->mode == TrainMode::kFull) {
      auto model = build_model(cfg);
      load_checkpoint_weights(*model, cfg, adapter);
      if (what) *what = "the full-mode checkpoint " + adapter;
      return model;
    }
    if (what) *what = "adapter " + adapter + " (checkpoint at step " + std::to_string(ckpt->step) + ")";
    return build_model_with_adapter(cfg, adapter_from_checkpoint(ckpt, adapter, cfg.model.spec),
                                    "--adapter");
  }
  const Adapter a = read_peft_adapter(adapter, cfg.model.spec);
  if (what)
    *what = "adapter " + adapter + " (PEFT" +
            (a.base_model.empty() ? std::string() : ", made for " + a.base_model) + ")";
  return build_model_with_adapter(cfg, a, "--adapter");
}

}  // namespace

int run_train(World& world, const TrainArgs& args) {
  const Config cfg = load_config(args.config, args.overrides);
  comm::Communicator& comm =
      world.communicator(cfg.comm.backend, World::timeout_of(cfg.comm.timeout_s));
  world.select_device(cfg);
  TrainOptions opts;
  if (args.resume == "auto") {
    opts.resume = ResumeMode::kAuto;
  } else if (args.resume == "none" || args.resume.empty()) {
    opts.resume = ResumeMode::kNone;
  } else {
    opts.resume = ResumeMode::kPath;
    opts.resume_path = args.resume;
  }
  opts.overrides = args.overrides;
  opts.stop_signal = args.stop_signal;
  opts.log_all_ranks = args.log_all_ranks;
  if (world.rank() == 0 && world.size() > 1)
    std::cout << "lora: " << describe(world.env()) << ", " << world.size() << " ranks" << std::endl;
  const TrainSummary s = train(cfg, comm, opts);
  if (world.rank() == 0) {
    char line[256];
    std::snprintf(line, sizeof line, "lora: done at step %ld | train loss %.4f", s.steps_done,
                  s.final_train_loss);
    std::cout << line;
    if (!std::isnan(s.final_val_loss)) {
      std::snprintf(line, sizeof line, " | val loss %.4f (best %.4f at step %ld)",
                    s.final_val_loss, s.best_val_loss, s.best_val_step);
      std::cout << line;
    }
    if (!s.last_checkpoint.empty()) std::cout << " | checkpoint " << s.last_checkpoint;
    std::cout << std::endl;
  }
  if (s.stop_signal != 0) {
    if (world.rank() == 0)
      std::cout << "lora: stopped by signal " << s.stop_signal << " after a checkpoint; continue with --resume auto"
                << std::endl;
    return s.stop_signal == SIGINT ? kExitInterrupted : kExitSignal;
  }
  return 0;
}

int run_eval(World& world, const EvalArgs& args) {
  const Config cfg = load_config(args.config, args.overrides);
  LORA_INPUT_CHECK(!cfg.data.val.empty(), args.config, ": data.val: `lora eval` needs validation data");
  LORA_INPUT_CHECK(args.max_windows >= 0, "--max-windows: expected a positive integer, got ",
                   args.max_windows);
  comm::Communicator& comm =
      world.communicator(cfg.comm.backend, World::timeout_of(cfg.comm.timeout_s));
  world.select_device(cfg);
  std::string what;
  auto model = model_for_inference(cfg, args.adapter, &what);
  const TokenStream val = load_token_stream(cfg, cfg.data.val, &comm);
  const WindowEval r = evaluate_windows(*model, val, cfg.data.seq_len, cfg.train.micro_batch,
                                        args.max_windows, comm);
  if (world.rank() != 0) return 0;
  if (args.json) {
    json::Value o = json::Value::object();
    o.set("loss", r.loss);
    o.set("perplexity", std::exp(r.loss));
    o.set("tokens", r.tokens);
    o.set("windows", r.windows);
    o.set("seq_len", cfg.data.seq_len);
    o.set("adapter", args.adapter.empty() ? json::Value() : json::Value(args.adapter));
    std::cout << json::dump(o) << std::endl;
    return 0;
  }
  char line[256];
  std::snprintf(line, sizeof line, "val loss %.6f | perplexity %.4f | %ld tokens in %ld windows of %d",
                r.loss, std::exp(r.loss), r.tokens, r.windows, cfg.data.seq_len);
  std::cout << line << (args.max_windows > 0 ? " (--max-windows)" : "") << " | " << what << std::endl;
  return 0;
}

int run_export(const std::string& checkpoint, const std::string& out_dir) {
  LORA_INPUT_CHECK(!out_dir.empty(), "lora export: --peft OUT_DIR is required");
  std::cout << export_peft(checkpoint, out_dir) << std::endl;
  return 0;
}

int run_merge(const MergeArgs& args) {
  LORA_INPUT_CHECK(!args.adapter.empty(), "lora merge: --adapter CKPT.h5|PEFT_DIR is required");
  LORA_INPUT_CHECK(!args.out.empty(), "lora merge: --out MODEL_DIR is required");
  Config cfg = load_config(args.config, args.overrides);
  cfg.device.backend = DeviceBackend::kCpu;  // merging folds host weights: always on the CPU
  LORA_INPUT_CHECK(cfg.train.mode == TrainMode::kLora, args.config,
                   ": train.mode: full; lora merge folds LoRA adapters into the base (expected lora)");
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(args.out, ec)) {
    const bool replaceable = fs::is_directory(args.out, ec) &&
                             (fs::is_empty(args.out, ec) || fs::exists(fs::path(args.out) / "config.json", ec));
    LORA_INPUT_CHECK(replaceable, args.out,
                     ": exists and is not a model directory (refusing to replace it)");
  }
  configure_threads(cfg.device.threads);
  const Adapter adapter = read_adapter(args.adapter, cfg.model.spec, "--adapter");
  Config eff;
  auto model = build_model_with_adapter(cfg, adapter, "--adapter", &eff);
  auto* cpu = dynamic_cast<TransformerModel*>(model.get());
  LORA_CHECK(cpu != nullptr, "lora merge needs the CPU model");
  merge_lora_into_base(cpu->base_layout(), cpu->base_params(), *cpu->lora_layout(), cpu->lora_params());
  if (!cfg.model.path.empty()) {
    const HfModelDir dir = read_hf_model_dir(cfg.model.path);
    save_hf_model_dir_like(args.out, dir.weight_files, cfg.model.path, cpu->base_layout(),
                           cpu->base_params(), hf_config_for(cfg.model.spec, &dir.config));
  } else if (!cfg.model.weights.empty()) {
    save_hf_model_dir_like(args.out, {cfg.model.weights}, "", cpu->base_layout(), cpu->base_params(),
                           hf_config_for(cfg.model.spec));
  } else {
    save_hf_model_dir(args.out, cpu->base_layout(), cpu->base_params(), hf_config_for(cfg.model.spec));
  }
  std::cout << "lora: merged " << cpu->lora_layout()->modules().size() << " adapters of "
            << args.adapter << " into " << (cfg.model.path.empty() ? std::string("the base") : cfg.model.path)
            << " -> " << args.out << std::endl;
  return 0;
}

int run_generate(World& world, const GenerateArgs& args) {
  const Config cfg = load_config(args.config, args.overrides);
  LORA_INPUT_CHECK(args.tokens >= 0, "--tokens: expected a non-negative integer, got ", args.tokens);
  LORA_INPUT_CHECK(args.temperature >= 0.0f, "--temperature: expected >= 0, got ", args.temperature);
  if (world.rank() != 0) return 0;  // generation is a single-process job
  world.select_device(cfg);
  auto model = model_for_inference(cfg, args.adapter, nullptr);
  const int V = cfg.model.spec.vocab_size, max_t = cfg.model.spec.max_seq_len;
  // With a tokenizer the prompt is tokenized (BOS first when the tokenizer adds one) and the
  // output decoded; generation stops at EOS.
  std::optional<Tokenizer> tokenizer;
  if (!tokenizer_source(cfg).empty()) tokenizer = Tokenizer::load(tokenizer_source(cfg));
  const bool text = !tokenizer && cfg.data.format == DataFormat::kText;

  std::vector<int32_t> context;
  std::vector<int32_t> stop_ids;
  if (tokenizer) stop_ids.push_back(tokenizer->eos_id());
  LORA_INPUT_CHECK(!args.chat || tokenizer, args.config,
                   ": --chat needs a tokenizer (data.tokenizer, or model.path with tokenizer.json)");
  if (args.chat) {
    const ChatPrompt chat = render_chat_prompt(args.prompt, cfg.data.chat_template, *tokenizer);
    if (chat.add_bos) context.push_back(tokenizer->bos_id());
    const std::vector<int32_t> ids = tokenizer->encode(chat.text);
    context.insert(context.end(), ids.begin(), ids.end());
    stop_ids = chat.stop_ids;
    for (int32_t id : context)
      LORA_INPUT_CHECK(id < V, "--prompt: token id ", id, " of the tokenized prompt is >= model.vocab_size ", V);
  } else if (tokenizer) {
    if (tokenizer->add_bos()) context.push_back(tokenizer->bos_id());
    const std::vector<int32_t> ids = tokenizer->encode(args.prompt);
    context.insert(context.end(), ids.begin(), ids.end());
    for (int32_t id : context)
      LORA_INPUT_CHECK(id < V, "--prompt: token id ", id, " of the tokenized prompt is >= model.vocab_size ", V);
  } else if (text) {
    for (unsigned char ch : args.prompt) context.push_back(ch);
  } else {
    std::stringstream ss(args.prompt);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        const long id = std::stol(item);
        LORA_INPUT_CHECK(id >= 0 && id < V, "--prompt: token id ", id, " outside [0, ", V, ")");
        context.push_back(static_cast<int32_t>(id));
      } catch (const std::invalid_argument&) {
        throw InputError("--prompt: token-format models take comma-separated token ids, got '" +
                         item + "'");
      }
    }
  }
  LORA_INPUT_CHECK(!context.empty(), "--prompt: expected a non-empty prompt");

  Rng rng(hash_u64(args.seed, 0x67656eull));
  std::vector<int32_t> generated;
  std::vector<double> probs(V);
  for (int i = 0; i < args.tokens; ++i) {
    const int n = static_cast<int>(std::min<size_t>(context.size(), max_t));
    const int32_t* window = context.data() + context.size() - n;
    model->forward(window, nullptr, 1, n);
    const float* logits = model->logits() + static_cast<size_t>(n - 1) * V;
    int next = 0;
    if (args.temperature == 0.0f) {
      next = static_cast<int>(std::max_element(logits, logits + V) - logits);
    } else {
      const float mx = *std::max_element(logits, logits + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += probs[v] = std::exp((logits[v] - mx) / args.temperature);
      double u = rng.next_uniform() * sum;
      next = V - 1;
      for (int v = 0; v < V; ++v) {
        if ((u -= probs[v]) <= 0) {
          next = v;
          break;
        }
      }
    }
    if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
    context.push_back(next);
    generated.push_back(next);
  }
  if (args.chat) {
    std::cout << tokenizer->decode(generated) << std::endl;  // the reply alone
  } else if (tokenizer) {
    // The continuation decoded in context (SentencePiece decoders treat a leading "▁" specially).
    std::vector<int32_t> prompt_ids = tokenizer->encode(args.prompt), all = prompt_ids;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string before = tokenizer->decode(prompt_ids), whole = tokenizer->decode(all);
    std::cout << (whole.starts_with(before) ? args.prompt + whole.substr(before.size()) : whole) << std::endl;
  } else if (text) {
    std::string s = args.prompt;
    for (int32_t t : generated) s.push_back(static_cast<char>(t));
    std::cout << s << std::endl;
  } else {
    for (size_t i = 0; i < context.size(); ++i) std::cout << (i ? "," : "") << context[i];
    std::cout << std::endl;
  }
  return 0;
}

int run_inspect(const std::string& checkpoint) {
  std::cout << describe_checkpoint(checkpoint);
  return 0;
}

int run_tokenize(const TokenizeArgs& args) {
  const Tokenizer tokenizer = Tokenizer::load(args.tokenizer);
  std::ifstream file;
  if (!args.input.empty()) {
    std::error_code ec;
    LORA_INPUT_CHECK(std::filesystem::is_regular_file(args.input, ec), args.input,
                     ": input file does not exist or is not a regular file");
    file.open(args.input, std::ios::binary);
    LORA_INPUT_CHECK(file, args.input, ": input file cannot be read");
  }
  std::istream& in = args.input.empty() ? std::cin : file;
  const std::string name = args.input.empty() ? "<stdin>" : args.input;
  Encoder encoder(tokenizer);
  std::vector<int32_t> ids;
  std::string line, out;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = detail::concat(name, ":", line_no);
    out.clear();
    ids.clear();
    if (!args.decode) {
      const size_t bad = unicode::invalid_utf8_offset(line);
      LORA_INPUT_CHECK(bad == std::string::npos, where, ": byte ", bad, " of the line is not valid UTF-8");
      encoder.encode(line, &ids);
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i) out.push_back(' ');
        out += std::to_string(ids[i]);
      }
    } else {
      std::istringstream ss(line);
      std::string item;
      while (ss >> item) {
        int64_t id = -1;
        const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
        LORA_INPUT_CHECK(ec == std::errc() && ptr == item.data() + item.size(), where,
                         ": expected token ids separated by spaces, got '", item, "'");
        LORA_INPUT_CHECK(id >= 0 && id < tokenizer.vocab_size() && id <= INT32_MAX, where, ": token id ", id,
                         " is not in the vocabulary of ", tokenizer.source(), " (", tokenizer.vocab_size(), " ids)");
        ids.push_back(static_cast<int32_t>(id));
      }
      try {
        out = tokenizer.decode(ids);
      } catch (const InputError& e) {
        throw InputError(detail::concat(where, ": ", e.what()));
      }
    }
    out.push_back('\n');
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  LORA_CHECK(!in.bad(), name, ": read failed");
  std::fflush(stdout);
  return 0;
}

}  // namespace lora
