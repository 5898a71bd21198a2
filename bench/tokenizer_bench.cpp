// Tokenizer speed: ours against Hugging Face `tokenizers` (Rust) on the same text and the same
// tokenizer.json, in one run, and the multi-threaded corpus path.
//
//   tokenizer_bench TOKENIZER TEXT [--repeats N] [--chunk-kb K] [--peer PYTHON]
//       Splits TEXT into chunks of whole lines (a chunk closes once it holds K KiB, default 64),
//       encodes every chunk N times (default 5) on one thread with a fresh Encoder each time
//       (cold pre-token cache), then runs bench/tokenizer_peer.py under PYTHON (default .venv's)
//       to do the same with tokenizers single-threaded (RAYON_NUM_THREADS=1). Checks the ids are
//       identical and prints MB/s (median of the repeats) of each and the ratio. --peer none:
//       ours only.
//   tokenizer_bench TOKENIZER TEXT --corpus OUT.bin [--threads T]
//       Tokenizes TEXT into a token shard as `format: text` training data does (all threads,
//       bounded memory) and prints MB/s and the peak resident memory.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json.h"
#include "core/tokenizer.h"
#include "trainer/data.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw lora::InputError(path + ": cannot be read");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string_view> chunks(std::string_view data, size_t chunk_bytes) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < data.size()) {
    size_t end = std::min(data.size(), start + chunk_bytes);
    if (end < data.size()) {
      const size_t nl = data.find('\n', end - 1);
      end = nl == std::string_view::npos ? data.size() : nl + 1;
    }
    out.push_back(data.substr(start, end - start));
    start = end;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out.push_back(c);
  }
  return out + "'";
}

double peak_rss_mib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

int compare(const std::string& tokenizer_path, const std::string& text_path, int repeats, int chunk_kb,
            const std::string& python) {
  const lora::Tokenizer tok = lora::Tokenizer::load(tokenizer_path);
  const std::string data = read_file(text_path);
  const auto parts = chunks(data, static_cast<size_t>(chunk_kb) * 1024);
  const double mb = static_cast<double>(data.size()) / 1e6;
  std::vector<double> ours;
  std::vector<int32_t> ids;
  for (int r = 0; r < repeats; ++r) {
    lora::Encoder encoder(tok);
    std::vector<int32_t> out;
    out.reserve(data.size() / 3);
    const auto t0 = Clock::now();
    for (std::string_view p : parts) encoder.encode(p, &out);
    ours.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (r == 0) ids = std::move(out);
  }

  if (python == "none") {
    std::printf("ours: %.2f MB/s (median of %d), %zu tokens\n", mb / median(ours), repeats, ids.size());
    return 0;
  }
  const std::string ids_path = text_path + ".peer_ids.bin";
  const std::string cmd = quote(python) + " " + quote(std::string(LORA_SOURCE_DIR) + "/bench/tokenizer_peer.py") +
                          " " + quote(tokenizer_path) + " " + quote(text_path) + " --repeats " +
                          std::to_string(repeats) + " --chunk-kb " + std::to_string(chunk_kb) +
                          " --ids-out " + quote(ids_path);
  FILE* pipe = ::popen(cmd.c_str(), "r");
  std::string peer_out;
  char buf[4096];
  size_t n;
  while (pipe && (n = std::fread(buf, 1, sizeof buf, pipe)) > 0) peer_out.append(buf, n);
  if (!pipe || ::pclose(pipe) != 0) {
    std::fprintf(stderr, "tokenizer_bench: the peer failed: %s\n", cmd.c_str());
    return 1;
  }
  const lora::json::Value peer = lora::json::parse(peer_out);
  std::vector<double> theirs;
  for (const auto& s : peer.find("seconds")->as_array()) theirs.push_back(s.as_double());
  const std::string peer_ids_bytes = read_file(ids_path);
  std::remove(ids_path.c_str());
  std::vector<int32_t> peer_ids(peer_ids_bytes.size() / 4);
  std::memcpy(peer_ids.data(), peer_ids_bytes.data(), peer_ids.size() * 4);
  const bool same = peer_ids == ids;

  const double ours_mbps = mb / median(ours), theirs_mbps = mb / median(theirs);
  std::printf("text: %s (%.2f MB, %zu chunks of >= %d KiB)\n", text_path.c_str(), mb, parts.size(), chunk_kb);
  std::printf("tokenizer: %s (vocab %d)\n", tokenizer_path.c_str(), tok.vocab_size());
  std::printf("tokens: %zu (ours) %zu (tokenizers), ids identical: %s\n", ids.size(), peer_ids.size(),
              same ? "yes" : "NO");
  auto list = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += (s.empty() ? "" : " ") + std::to_string(x).substr(0, 6);
    return s;
  };
  std::printf("ours:       %7.2f MB/s  (median of %d; seconds %s)\n", ours_mbps, repeats, list(ours).c_str());
  std::printf("tokenizers: %7.2f MB/s  (median of %d; seconds %s)\n", theirs_mbps, repeats, list(theirs).c_str());
  std::printf("ratio ours/tokenizers: %.2fx\n", ours_mbps / theirs_mbps);
  return same ? 0 : 1;
}

int corpus(const std::string& tokenizer_path, const std::string& text_path, const std::string& out_path,
           int threads) {
  const lora::Tokenizer tok = lora::Tokenizer::load(tokenizer_path);
  const auto t0 = Clock::now();
  const lora::CorpusStats s = lora::tokenize_text_to_shard(tok, {text_path}, out_path, threads);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("corpus: %s, %.1f MB -> %llu tokens in %.2f s: %.2f MB/s on %d threads; peak RSS %.0f MiB\n",
              text_path.c_str(), static_cast<double>(s.n_bytes) / 1e6,
              static_cast<unsigned long long>(s.n_tokens), secs, static_cast<double>(s.n_bytes) / 1e6 / secs,
              s.n_threads, peak_rss_mib());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string tokenizer, text, corpus_out, python = std::string(LORA_SOURCE_DIR) + "/.venv/bin/python";
  int repeats = 5, chunk_kb = 64, threads = 0;
  try {
    for (size_t i = 0; i < args.size(); ++i) {
      auto value = [&]() -> std::string {
        if (i + 1 >= args.size()) throw lora::InputError(args[i] + ": expected a value");
        return args[++i];
      };
      if (args[i] == "--repeats") repeats = std::stoi(value());
      else if (args[i] == "--chunk-kb") chunk_kb = std::stoi(value());
      else if (args[i] == "--peer") python = value();
      else if (args[i] == "--corpus") corpus_out = value();
      else if (args[i] == "--threads") threads = std::stoi(value());
      else if (tokenizer.empty()) tokenizer = args[i];
      else if (text.empty()) text = args[i];
      else throw lora::InputError("unexpected argument " + args[i]);
    }
    if (tokenizer.empty() || text.empty() || repeats < 1 || chunk_kb < 1) {
      std::fprintf(stderr, "usage: tokenizer_bench TOKENIZER TEXT [--repeats N] [--chunk-kb K] [--peer PYTHON]\n"
                           "       tokenizer_bench TOKENIZER TEXT --corpus OUT.bin [--threads T]\n");
      return 2;
    }
    if (!corpus_out.empty()) return corpus(tokenizer, text, corpus_out, threads);
    return compare(tokenizer, text, repeats, chunk_kb, python);
  } catch (const lora::InputError& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 1;
  }
}
