// The `lora` command line: subcommands train, eval, generate, inspect, sweep, report (and --help).
// cli_main returns the process exit code (DESIGN.md section 4): 0 done, 1 runtime failure,
// 2 invalid input, 75 stopped by a signal after a checkpoint.
#pragma once

namespace lora {

int cli_main(int argc, char** argv);

}  // namespace lora
