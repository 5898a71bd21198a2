// Runs fn and returns the message of the lora::InputError it throws; records a test failure (and
// returns "") when it throws something else or nothing.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <string>

#include "core/error.h"

namespace lora::testing {

template <typename Fn>
std::string input_error_of(Fn&& fn) {
  try {
    fn();
  } catch (const lora::InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lora::InputError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected lora::InputError, nothing was thrown";
  return "";
}

}  // namespace lora::testing
