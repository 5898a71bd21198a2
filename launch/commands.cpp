// train, eval, generate, inspect and tokenize: the subcommands of the `lora` CLI.
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

std::unique_ptr<Model> model_for_inference(const Config& cfg, const std::string& adapter) {
  configure_threads(cfg.device.threads);
  auto model = build_model(cfg);
  if (!adapter.empty()) load_checkpoint_weights(*model, cfg, adapter);
  return model;
}

}  // namespace

int run_train(World& world, const TrainArgs& args) {
  const Config cfg = load_config(args.config, args.overrides);
  comm::Communicator& comm =
      world.communicator(cfg.comm.backend, World::timeout_of(cfg.comm.timeout_s));
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

int run_eval(World& world, const std::string& config, const std::vector<std::string>& overrides,
             const std::string& adapter) {
  const Config cfg = load_config(config, overrides);
  LORA_INPUT_CHECK(!cfg.data.val.empty(), config, ": data.val: `lora eval` needs validation data");
  comm::Communicator& comm =
      world.communicator(cfg.comm.backend, World::timeout_of(cfg.comm.timeout_s));
  auto model = model_for_inference(cfg, adapter);
  const TokenStream val = load_token_stream(cfg, cfg.data.val, &comm);
  const double loss = evaluate(*model, val, cfg, comm);
  if (world.rank() == 0) {
    char line[256];
    std::snprintf(line, sizeof line, "val loss %.4f | perplexity %.3f | %ld sequences x %d tokens",
                  loss, std::exp(loss), static_cast<long>(cfg.train.eval_batches) * cfg.train.micro_batch,
                  cfg.data.seq_len);
    std::cout << line << (adapter.empty() ? "" : " | adapter " + adapter) << std::endl;
  }
  return 0;
}

int run_generate(World& world, const GenerateArgs& args) {
  const Config cfg = load_config(args.config, args.overrides);
  LORA_INPUT_CHECK(args.tokens >= 0, "--tokens: expected a non-negative integer, got ", args.tokens);
  LORA_INPUT_CHECK(args.temperature >= 0.0f, "--temperature: expected >= 0, got ", args.temperature);
  if (world.rank() != 0) return 0;  // generation is a single-process job
  auto model = model_for_inference(cfg, args.adapter);
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
