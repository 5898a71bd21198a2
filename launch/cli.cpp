#include "launch/cli.h"

#include <cstdio>

namespace lora {

int cli_main(int, char**) {
  std::fprintf(stderr, "lora: not built yet\n");
  return 1;
}

}  // namespace lora
