// Typed errors used across the project.
//
// lora::Error      a runtime failure (I/O, communication, numerical): the CLI exits 1.
// lora::InputError invalid input from the user (CLI, config, data, weights, checkpoint): exit 2.
//                  The message names the file, key or tensor and what was expected.
// Code throws; only the launcher (launch/) decides how a process or a job ends.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lora {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace lora

// Internal invariant checks (argument validation at op entry points): throw lora::Error
// with file:line so a failing check in a test or on a cluster points at the source.
#define LORA_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      throw ::lora::Error(::lora::detail::concat(__FILE__, ":", __LINE__, ": check '", \
                                                 #cond, "' failed: ", __VA_ARGS__));   \
    }                                                                                  \
  } while (0)

// Invalid user input: throw lora::InputError with the given message (exit code 2).
#define LORA_INPUT_CHECK(cond, ...)                                           \
  do {                                                                        \
    if (!(cond)) throw ::lora::InputError(::lora::detail::concat(__VA_ARGS__)); \
  } while (0)
