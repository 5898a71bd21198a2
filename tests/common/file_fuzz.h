// Random-corruption fuzzing of file readers: corrupted copies of a valid file, each read in a forked
// child (so a crash, a hang or a runaway allocation is one failed case, not a dead test binary), with
// the outcomes tallied.
//
// Case i of a run is a pure function of (seed, i): rerun one with LORA_FUZZ_SEED and the case number
// printed on failure. Corruptions (every one changes the file):
//   70%  1-8 bytes at uniformly random positions, each replaced by a different random value
//   20%  a burst: 1-8 consecutive bytes replaced, each by a different value
//   10%  the file cut at a random length, or 1-64 random bytes appended
// LORA_FUZZ_CASES sets the number of cases per file kind (the suite's default is small; the long
// runs reported in docs/benchmarks.md use 10000).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <iterator>
#include <new>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"

namespace lora::testing {

inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline long fuzz_env(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtol(v, nullptr, 10);
}

// Cases per file kind: LORA_FUZZ_CASES, else `fallback`.
inline long fuzz_cases(long fallback) { return fuzz_env("LORA_FUZZ_CASES", fallback); }
inline uint64_t fuzz_seed() { return static_cast<uint64_t>(fuzz_env("LORA_FUZZ_SEED", 1)); }

struct Corruption {
  std::string bytes;
  std::string what;  // "bytes at 17, 9000", "burst of 3 at 120", "cut to 77 bytes", ...
  size_t first_offset = 0;  // lowest offset changed (for a cut: the new length)
};

// Case `index` of the run `seed` for `original` (see the top of this file).
inline Corruption corrupt(const std::string& original, uint64_t seed, uint64_t index) {
  Rng rng(hash_u64(seed, index, 0xF022));
  auto below = [&](uint64_t n) { return n == 0 ? 0 : rng.next_u64() % n; };
  auto changed = [&](char c) { return static_cast<char>(static_cast<unsigned char>(c) + 1 + below(255)); };
  Corruption c;
  c.bytes = original;
  const size_t n = original.size();
  const uint64_t mode = below(10);
  if (mode < 7 && n > 0) {
    const size_t k = std::min<size_t>(1 + below(8), n);
    std::vector<size_t> at;
    while (at.size() < k) {
      const size_t p = below(n);
      if (std::find(at.begin(), at.end(), p) == at.end()) at.push_back(p);
    }
    std::sort(at.begin(), at.end());
    c.what = "bytes at";
    for (size_t p : at) {
      c.bytes[p] = changed(c.bytes[p]);
      c.what += " " + std::to_string(p);
    }
    c.first_offset = at.front();
  } else if (mode < 9 && n > 0) {
    const size_t k = std::min<size_t>(1 + below(8), n);
    const size_t start = below(n - k + 1);
    for (size_t p = start; p < start + k; ++p) c.bytes[p] = changed(c.bytes[p]);
    c.what = "burst of " + std::to_string(k) + " at " + std::to_string(start);
    c.first_offset = start;
  } else if (below(2) == 0 && n > 0) {
    const size_t len = below(n);
    c.bytes.resize(len);
    c.what = "cut to " + std::to_string(len) + " bytes";
    c.first_offset = len;
  } else {
    const size_t k = 1 + below(64);
    for (size_t i = 0; i < k; ++i) c.bytes += static_cast<char>(below(256));
    c.what = std::to_string(k) + " bytes appended";
    c.first_offset = n;
  }
  return c;
}

enum class Outcome {
  kAccepted,    // read without an error; `message` holds the reader's fingerprint of what it read
  kInputError,  // lora::InputError (exit 2 in the CLI)
  kOtherError,  // another exception (lora::Error: exit 1), including std::bad_alloc
  kCrash,       // killed by a signal
  kHang,        // still running after the time limit
};

inline const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::kAccepted: return "accepted";
    case Outcome::kInputError: return "input error";
    case Outcome::kOtherError: return "other error";
    case Outcome::kCrash: return "crash";
    case Outcome::kHang: return "hang";
  }
  return "?";
}

struct CaseResult {
  Outcome outcome = Outcome::kCrash;
  std::string message;  // the exception's text, the fingerprint, or the signal
};

// Runs `read` (which returns a fingerprint of what it read, or throws) in a forked child limited to
// `timeout_s` seconds and `extra_memory_bytes` more address space than the parent uses now.
inline CaseResult run_isolated(const std::function<std::string()>& read, unsigned timeout_s = 20,
                               size_t extra_memory_bytes = size_t{2} << 30) {
  size_t vm_bytes = 0;
  {
    std::ifstream statm("/proc/self/statm");
    size_t pages = 0;
    if (statm >> pages) vm_bytes = pages * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  }
  int fds[2];
  if (::pipe(fds) != 0) return {Outcome::kOtherError, "pipe failed"};
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return {Outcome::kOtherError, "fork failed"};
  if (pid == 0) {
    ::close(fds[0]);
    if (vm_bytes > 0) {
      const rlimit lim{vm_bytes + extra_memory_bytes, vm_bytes + extra_memory_bytes};
      ::setrlimit(RLIMIT_AS, &lim);
    }
    ::alarm(timeout_s);
    std::string out;
    try {
      out = "A" + read();
    } catch (const lora::InputError& e) {
      out = std::string("I") + e.what();
    } catch (const std::bad_alloc&) {
      out = "Estd::bad_alloc (an allocation beyond the memory limit)";
    } catch (const std::exception& e) {
      out = std::string("E") + e.what();
    } catch (...) {
      out = "Ea non-standard exception";
    }
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    if (sig == SIGALRM) return {Outcome::kHang, "no result after " + std::to_string(timeout_s) + " s"};
    return {Outcome::kCrash, std::string("signal ") + std::to_string(sig) + " (" + strsignal(sig) + ")"};
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || out.empty()) {
    return {Outcome::kCrash, "child exited with status " + std::to_string(WEXITSTATUS(status)) +
                                 " without a result"};
  }
  const char tag = out[0];
  out.erase(0, 1);
  if (tag == 'A') return {Outcome::kAccepted, out};
  if (tag == 'I') return {Outcome::kInputError, out};
  return {Outcome::kOtherError, out};
}

// Counts of a run, and up to a few failing cases to show.
struct FuzzTally {
  std::string kind;
  long n_cases = 0;
  long n_refused = 0;            // InputError naming the file
  long n_refused_unnamed = 0;    // InputError whose message lacks the file's path
  long n_accepted_same = 0;      // read, and everything read equals the original
  long n_accepted_changed = 0;   // read, and something read differs from the original
  long n_other_error = 0;
  long n_crash = 0;
  long n_hang = 0;
  std::vector<std::string> examples;

  void note(const std::string& line) {
    if (examples.size() < 12) examples.push_back(line);
  }
  std::string summary() const {
    std::string s = kind + ": " + std::to_string(n_cases) + " cases: " + std::to_string(n_refused) +
                    " refused (InputError naming the file), " + std::to_string(n_accepted_same) +
                    " accepted unchanged, " + std::to_string(n_accepted_changed) +
                    " accepted with changed content, " + std::to_string(n_refused_unnamed) +
                    " InputError not naming the file, " + std::to_string(n_other_error) +
                    " other errors, " + std::to_string(n_crash) + " crashes, " +
                    std::to_string(n_hang) + " hangs";
    for (const std::string& e : examples) s += "\n    " + e;
    return s;
  }
};

struct FuzzFile {
  std::string path;
  std::string original;  // its valid contents
};

// Case i corrupts files[i % files.size()] (every other file holds its original bytes) and runs
// `read` on the set in a child (run_isolated). `read` returns a fingerprint of everything it read;
// it is first run here on the intact files, and an accepted case counts as unchanged when its
// fingerprint equals that one. Records a test failure for every crash, hang, exception other than
// InputError, and InputError that does not name the corrupted file.
inline FuzzTally fuzz_files(const std::string& kind, const std::vector<FuzzFile>& files, long n_cases,
                            const std::function<std::string()>& read) {
  FuzzTally t;
  t.kind = kind;
  for (const FuzzFile& f : files) write_file_bytes(f.path, f.original);
  std::string intact;
  try {
    intact = read();
  } catch (const std::exception& e) {
    ADD_FAILURE() << kind << ": the intact files do not read: " << e.what();
    return t;
  }
  const uint64_t seed = fuzz_seed();
  for (long i = 0; i < n_cases; ++i) {
    const FuzzFile& target = files[static_cast<size_t>(i) % files.size()];
    const Corruption c = corrupt(target.original, seed, static_cast<uint64_t>(i));
    write_file_bytes(target.path, c.bytes);
    const CaseResult r = run_isolated(read);
    write_file_bytes(target.path, target.original);
    ++t.n_cases;
    const std::string where = kind + " case " + std::to_string(i) + " (seed " + std::to_string(seed) +
                              ", " + target.path.substr(target.path.find_last_of('/') + 1) + ", " +
                              c.what + "): ";
    switch (r.outcome) {
      case Outcome::kInputError:
        if (r.message.find(target.path) != std::string::npos) {
          ++t.n_refused;
        } else {
          ++t.n_refused_unnamed;
          t.note(where + "InputError without the path: " + r.message);
          ADD_FAILURE() << where << "InputError does not name the file: " << r.message;
        }
        break;
      case Outcome::kAccepted:
        if (r.message == intact) {
          ++t.n_accepted_same;
        } else {
          ++t.n_accepted_changed;
          t.note(where + "accepted with changed content");
        }
        break;
      default:
        if (r.outcome == Outcome::kOtherError) ++t.n_other_error;
        if (r.outcome == Outcome::kCrash) ++t.n_crash;
        if (r.outcome == Outcome::kHang) ++t.n_hang;
        t.note(where + outcome_name(r.outcome) + ": " + r.message.substr(0, 300));
        ADD_FAILURE() << where << outcome_name(r.outcome) << ": " << r.message.substr(0, 1000);
    }
  }
  std::printf("fuzz %s\n", t.summary().c_str());
  return t;
}

}  // namespace lora::testing
