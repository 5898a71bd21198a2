#include "launch/cli.h"

int main(int argc, char** argv) { return lora::cli_main(argc, argv); }
