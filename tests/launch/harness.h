// Helpers for tests that drive the `lora` binary: run a command and capture its output and exit
// code, make a scratch directory, write a tiny config and a small text corpus.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/temp_dir.h"

namespace lora::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// A child process running `sh -c "exec CMD"` whose stdout+stderr can be read line by line.
class Spawned {
 public:
  explicit Spawned(const std::string& cmd) {
    int fds[2];
    if (::pipe(fds) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::dup2(fds[1], 2);
      ::close(fds[0]);
      ::close(fds[1]);
      ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = ::fdopen(fds[0], "r");
  }
  ~Spawned() {
    if (out_) std::fclose(out_);
  }
  pid_t pid() const { return pid_; }
  // Reads until `needle` appears in the output (true) or the output ends (false).
  bool read_until(const std::string& needle) {
    char buf[1024];
    while (out_ && std::fgets(buf, sizeof buf, out_)) {
      output_ += buf;
      if (output_.find(needle) != std::string::npos) return true;
    }
    return false;
  }
  // Reads the rest of the output and returns the exit code (128 + signal when killed).
  int wait() {
    read_until("\x01never\x01");
    int status = 0;
    ::waitpid(pid_, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  std::string output_;
};

inline std::string lora_bin() { return LORA_BINARY; }

inline std::string mpirun(int np) {
  return std::string(LORA_MPIEXEC) + " --oversubscribe --allow-run-as-root --bind-to none -np " +
         std::to_string(np) + " -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1";
}

// A scratch directory for one test, named after it (see tests/common/temp_dir.h).
class ScratchDir : public TempDir {
 public:
  explicit ScratchDir(const std::string& tag) : TempDir("lora_test_" + tag) {}
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// How many times needle occurs in text (overlapping occurrences count).
inline size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A few KB of English-like text with structure a tiny model can pick up.
inline std::string small_corpus(int n_lines = 400) {
  static const char* subjects[] = {"the cat", "a dog", "my friend", "the old man", "a bird",
                                   "the child", "our teacher", "the sailor"};
  static const char* verbs[] = {"sees", "likes", "finds", "paints", "follows", "hears"};
  static const char* objects[] = {"the sea", "a red ball", "the moon", "an open door",
                                  "the river", "a small house", "the garden"};
  std::ostringstream os;
  unsigned x = 12345;
  for (int i = 0; i < n_lines; ++i) {
    x = x * 1103515245u + 12345u;
    os << subjects[(x >> 8) % 8] << " " << verbs[(x >> 13) % 6] << " " << objects[(x >> 18) % 7]
       << ".\n";
  }
  return os.str();
}

// A tiny config: 2 layers, d_model 32, byte-level text. Extra YAML lines are appended per section
// via --set in the tests.
inline std::string tiny_config(const std::string& dir, const std::string& mode = "lora") {
  std::ostringstream os;
  os << "run: {name: tiny, output_dir: " << dir << "/out, seed: 7}\n"
     << "model: {arch: gpt2, vocab_size: 256, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}\n"
     << "lora: {rank: 4, alpha: 8, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}\n"
     << "data: {train: " << dir << "/train.txt, val: " << dir << "/val.txt, format: text, seq_len: 32}\n"
     << "train: {mode: " << mode << ", micro_batch: 4, grad_accum: 1, steps: 6, lr: 0.01, "
        "warmup_steps: 1, eval_batches: 2, log_every: 1}\n"
     << "checkpoint: {every: 0, keep: 2}\n"
     << "device: {threads: 1}\n";
  return os.str();
}

// Parses metrics.jsonl lines into (step -> loss).
inline std::map<long, double> read_losses(const std::string& metrics_path) {
  std::map<long, double> out;
  std::ifstream f(metrics_path);
  std::string line;
  while (std::getline(f, line)) {
    auto field = [&](const std::string& key) -> std::string {
      auto p = line.find("\"" + key + "\": ");
      if (p == std::string::npos) return "";
      p += key.size() + 4;
      return line.substr(p, line.find_first_of(",}", p) - p);
    };
    const std::string step = field("step"), loss = field("loss");
    if (!step.empty() && !loss.empty()) out[std::stol(step)] = std::stod(loss);
  }
  return out;
}

}  // namespace lora::testing
