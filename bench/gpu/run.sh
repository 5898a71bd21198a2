#!/usr/bin/env bash
# Runs every GPU-side check of the project on a GPU machine in one go, from the kit that
# bench/gpu/pack.sh built (gpu-kit/kit.tar.gz), and writes the results into $OUT:
#   results.json  one object per stage (name, status, seconds, summary, log) and the totals
#   results.md    the same as a table, then the benchmark lines
#   run.log       every stage's output, one after the other
#   facts.txt     the machine: GPU, driver, OS, glibc, libraries found, tools
#   bench.jsonl   the benchmarks' JSON lines
#   logs.tar.gz   every stage's log and GoogleTest XML report
# Stages, in order of importance (each with its own time limit, all within LORA_KIT_BUDGET_S,
# default 480 s; a stage that no longer fits is reported as not run):
#   libs         every kit binary resolves every shared library (kit, CUDA toolkit, nvidia wheels)
#   nvidia_smi   the GPU and driver answer
#   cuda_ops     the CUDA ops against the CPU ops          (LORA_REQUIRE_CUDA=1: a skip is a failure)
#   cuda_model   the CUDA model of every family against the CPU model (idem)
#   device_choice  device.backend auto/cuda and the gradient communicator's choice (idem)
#   nccl_1rank   NCCL at world size 1                       (idem)
#   mpi_2ranks   plain MPI, 2 ranks under the kit's mpirun (CPU only: checks the launcher itself)
#   nccl_2ranks  NCCL, 2 ranks sharing the GPU, bootstrapped through MPI
#   train_cpu    lora train/inspect end to end on the CPU (the binary, HDF5, YAML on this machine)
#   train_cuda   the same with device.backend: cuda
#   train_e2e    lora train/eval/generate on the GPU against the CPU through the binary: losses,
#                checkpoints resumed across backends, 2 ranks over NCCL equal 1 rank
#                (launch_test_cuda_train)
#   memcheck_ops, memcheck_model, memcheck_train  compute-sanitizer memcheck of the small op
#                tests, of 50 device-optimizer steps of the CUDA model (GPT-2, Llama GQA), and of
#                a short `lora train` on the GPU
#   bench_lora, bench_full  bench_gpt2_cuda: GPT-2 124M, seq 1024, batch 4, LoRA and full mode
#   bench_cpu    bench_train: a GPT-2 124M LoRA step (seq 1024, batch 1) on this machine's CPU
# Exit status 0 when no stage failed, timed out or was left out; 1 otherwise.
#
# Environment: OUT (results folder; default ./gpu-out), LORA_KIT_DIR (default <repo>/gpu-kit),
# LORA_KIT_WORK (unpack folder, default /tmp/lora-gpu-kit), LORA_KIT_BUDGET_S, LORA_CUDA_LIB_DIRS
# (extra folders holding libcudart/libcublas/libnccl, searched first), LORA_KIT_GLIBC=bundled
# (run through the kit's own glibc even when the machine's is new enough), LORA_KIT_STAGES (names
# to run, comma-separated; default all).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$repo/gpu-out}
kit_dir=${LORA_KIT_DIR:-$repo/gpu-kit}
work=${LORA_KIT_WORK:-/tmp/lora-gpu-kit}
budget=${LORA_KIT_BUDGET_S:-480}
only=${LORA_KIT_STAGES:-}
t0=$(date +%s)

mkdir -p "$out"
logs=$work/logs
rm -rf "$work"
mkdir -p "$work" "$logs"
K=$work/kit
facts=$out/facts.txt
runlog=$out/run.log
bench_out=$out/bench.jsonl
: >"$facts"
: >"$runlog"
: >"$bench_out"

note() { echo "run.sh: $*"; }
fact() { echo "$*" >>"$facts"; }
elapsed() { echo $(($(date +%s) - t0)); }

# ---- results ----
names=() statuses=() seconds=() summaries=() logfiles=()

json_escape() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/ }
  s=${s//$'\r'/ }
  s=${s//$'\n'/ }
  printf '%s' "$s" | tr -d '\000-\037'
}

write_results() {
  local i n_pass=0 n_fail=0 n_other=0 overall=pass
  for i in "${!names[@]}"; do
    case ${statuses[$i]} in
      pass) n_pass=$((n_pass + 1)) ;;
      not_implemented) n_other=$((n_other + 1)) ;;
      *) n_fail=$((n_fail + 1)); overall=fail ;;
    esac
  done
  {
    printf '{\n  "kit": "%s",\n  "elapsed_s": %s,\n  "overall": "%s",\n' \
      "$(json_escape "$(sed -n 2p "$K/MANIFEST.txt" 2>/dev/null)")" "$(elapsed)" "$overall"
    printf '  "counts": {"pass": %d, "fail": %d, "not_implemented": %d},\n' \
      "$n_pass" "$n_fail" "$n_other"
    printf '  "stages": [\n'
    for i in "${!names[@]}"; do
      printf '    {"name": "%s", "status": "%s", "seconds": %s, "summary": "%s", "log": "%s"}%s\n' \
        "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" "$(json_escape "${summaries[$i]}")" \
        "${logfiles[$i]}" "$([[ $i -lt $((${#names[@]} - 1)) ]] && echo ,)"
    done
    printf '  ]\n}\n'
  } >"$out/results.json"
  {
    echo "# GPU kit results"
    echo
    echo "$(sed -n 2p "$K/MANIFEST.txt" 2>/dev/null); $(head -1 "$facts" 2>/dev/null)"
    echo
    echo "overall: **$overall** ($n_pass pass, $n_fail not passed, $n_other not implemented) in $(elapsed) s"
    echo
    echo "| stage | status | s | summary |"
    echo "|---|---|---|---|"
    for i in "${!names[@]}"; do
      echo "| ${names[$i]} | ${statuses[$i]} | ${seconds[$i]} | ${summaries[$i]//|//} |"
    done
    if [[ -s $bench_out ]]; then
      echo
      echo "benchmarks:"
      echo
      sed 's/^/    /' "$bench_out"
    fi
  } >"$out/results.md"
}

record() {  # name status seconds summary log
  names+=("$1") statuses+=("$2") seconds+=("$3") summaries+=("$4") logfiles+=("$5")
  printf 'run.sh: %-18s %-15s %4s s  %s\n' "$1" "$2" "$3" "$4"
  write_results
}

head_tail() {  # FILE BYTES: the file, or its first and last BYTES/2 when it is larger
  local size
  size=$(stat -c %s "$1")
  if ((size > $2)); then
    head -c $(($2 / 2)) "$1"
    echo
    echo "[... $size bytes in all: the middle is left out ...]"
    tail -c $(($2 / 2)) "$1"
  else
    cat "$1"
  fi
}

shorten() {  # FILE BYTES: cuts the file down to head_tail's output
  (($(stat -c %s "$1") > $2)) || return 0
  head_tail "$1" "$2" >"$1.short" && mv "$1.short" "$1"
}

wanted() { [[ -z $only || ,$only, == *,$1,* ]]; }

# Runs one stage: NAME LIMIT_S CHECK -- COMMAND...; CHECK is a function called as
# CHECK LOG RC that prints "status|summary" (status: pass, fail, not_implemented).
run_stage() {
  local name=$1 limit=$2 check=$3
  shift 4
  wanted "$name" || return 0
  local left=$((budget - $(elapsed) - 15))
  ((left < limit)) && limit=$left
  local log=$logs/$name.log
  if ((limit < 10)); then
    record "$name" not_run 0 "no time left in the ${budget} s budget" ""
    return 0
  fi
  local start rc
  start=$(date +%s)
  {
    echo "==== $name (limit $limit s): $*"
    timeout -k 10 "$limit" "$@"
  } >"$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - start)) verdict status summary
  # A runaway log keeps its first and last 8 MiB; run.log gets at most 1 MiB of each stage (files
  # that come back from the machine are limited in size).
  shorten "$log" 16777216
  {
    echo
    echo "################ $name: exit $rc after $took s"
    head_tail "$log" 1048576
  } >>"$runlog"
  if ((rc == 124 || rc == 137)); then
    status=timeout summary="killed after the stage's $limit s limit"
  else
    verdict=$("$check" "$log" "$rc")
    status=${verdict%%|*} summary=${verdict#*|}
  fi
  record "$name" "$status" "$took" "$summary" "logs/$name.log"
}

# ---- checks ----
last_lines() {  # LOG N: the log's last N lines on one line, without the stage header
  grep -v '^==== ' "$1" | tail -"$2" | tr '\n' ' ' | cut -c1-300
}

check_exit() {  # pass when the command exited 0
  if (($2 == 0)); then echo "pass|exit 0"; else echo "fail|exit $2: $(last_lines "$1" 3)"; fi
}

# GoogleTest output (rank 0's for MPI runs): pass only with exit 0, at least one test passed,
# none failed and none skipped (under LORA_REQUIRE_CUDA=1 a skip means something was not checked).
check_gtest() {
  local log=$1 rc=$2 passed failed skipped first
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\{0,1\}\..*/\1/p' "$log" | tail -1)
  failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$log" | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}, listed below.*/\1/p' "$log" | tail -1)
  passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0}
  local counts="$passed passed, $failed failed, $skipped skipped"
  if ((rc == 0 && passed > 0 && failed == 0 && skipped == 0)); then
    echo "pass|$counts"
    return
  fi
  # The message under the first failed assertion, else the first line that reads like an error.
  first=$(awk '/: Failure$/ {getline; if ($0 == "Failed") getline; print; exit}' "$log" | cut -c1-240)
  [[ -n $first ]] || first=$(grep -m1 -iE 'error|abort|not found' "$log" | cut -c1-240)
  echo "fail|exit $rc; $counts; first problem: ${first:-see the log}"
}

check_memcheck() {
  local gtest
  gtest=$(check_gtest "$1" "$2")
  local errors
  errors=$(sed -n 's/^========= ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$1" | tail -1)
  if [[ ${gtest%%|*} == pass && $errors == 0 ]]; then
    echo "pass|${gtest#*|}; compute-sanitizer: 0 errors"
  else
    local first
    first=$(grep -m1 -E '^========= (Invalid|Program hit|Error|.*error)' "$1" | cut -c1-200)
    echo "fail|compute-sanitizer errors: ${errors:-no summary}; ${gtest#*|}; ${first}"
  fi
}

check_memcheck_train() {
  local errors
  errors=$(sed -n 's/^========= ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$1" | tail -1)
  if (($2 == 0)) && [[ $errors == 0 ]]; then
    echo "pass|lora train on cuda under compute-sanitizer memcheck: 0 errors"
  else
    local first
    first=$(grep -m1 -E '^========= (Invalid|Program hit|Error|.*error)' "$1" | cut -c1-200)
    echo "fail|exit $2; compute-sanitizer errors: ${errors:-no summary}; ${first:-$(last_lines "$1" 2)}"
  fi
}

check_train_cuda() {
  if (($2 == 0)); then
    echo "pass|lora train on device.backend cuda: $(grep -m1 '^lora: done' "$1" | cut -c1-120)"
  else
    echo "fail|exit $2: $(last_lines "$1" 2)"
  fi
}

check_bench() {
  local line
  line=$(grep -m1 '^{"impl"' "$1")
  if (($2 == 0)) && [[ -n $line ]]; then
    echo "$line" >>"$bench_out"
    local tps
    tps=$(echo "$line" | sed -n 's/.*"tokens_per_s": \([0-9.]*\).*/\1/p')
    echo "pass|$tps tokens/s"
  else
    echo "fail|exit $2: $(last_lines "$1" 2)"
  fi
}

# ---- unpack ----
note "unpacking $kit_dir/kit.tar.gz into $work"
if ! tar -C "$work" -xzf "$kit_dir/kit.tar.gz" 2>"$logs/unpack.log"; then
  record unpack fail 0 "cannot unpack $kit_dir/kit.tar.gz: $(head -c 300 "$logs/unpack.log")" ""
  tar -C "$work" -czf "$out/logs.tar.gz" logs 2>/dev/null
  exit 1
fi
cp "$K/MANIFEST.txt" "$logs/MANIFEST.txt"

# ---- glibc: the machine's, or the kit's own loader when the machine's is too old ----
version_lt() { [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$1" ]]; }
glibc_have=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
glibc_needed=$(cat "$K/GLIBC_NEEDED")
loader=""
if [[ ${LORA_KIT_GLIBC:-} == bundled ]] || { [[ -n $glibc_have ]] && version_lt "$glibc_have" "$glibc_needed"; }; then
  loader=$K/glibc/ld-linux-x86-64.so.2
fi

# ---- library path: the kit's, then CUDA's from wherever this machine keeps them ----
kit_bins=("$K"/bin/* "$K"/openmpi/bin/orterun)
lib_path=$K/lib
lib_dirs_searched=()
python_sites() {
  local py
  for py in python3 /opt/torch/.venv/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null
  done
  ls -d /opt/*/.venv/lib/python3*/site-packages /usr/local/lib/python3*/dist-packages \
    /usr/lib/python3/dist-packages 2>/dev/null
}
find_lib_dir() {  # soname: the first folder holding it
  local soname=$1 d f
  local IFS=:
  for d in ${LORA_CUDA_LIB_DIRS:-} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/cuda/lib; do
    [[ -n $d && -e $d/$soname ]] && { echo "$d"; return; }
  done
  unset IFS
  while read -r d; do
    [[ -d $d/nvidia ]] || continue
    f=$(find "$d/nvidia" -maxdepth 4 -name "$soname" 2>/dev/null | sort | head -1)
    [[ -n $f ]] && { dirname "$f"; return; }
  done < <(python_sites | sort -u)
}
missing_libs() {  # sonames ldd cannot find for the kit binaries with the current lib_path
  local b
  for b in "${kit_bins[@]}"; do
    if [[ -n $loader ]]; then
      "$loader" --library-path "$K/glibc:$lib_path" --list "$b" 2>&1
    else
      LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$b" 2>&1
    fi
  done | awk '/=> not found/ {print $1}' | sort -u
}
for soname in $(missing_libs); do
  d=$(find_lib_dir "$soname")
  if [[ -n $d && :$lib_path: != *:$d:* ]]; then
    lib_path=$lib_path:$d
    lib_dirs_searched+=("$soname -> $d")
  fi
done
compat=no
if [[ -z $loader ]] && for b in "${kit_bins[@]}"; do
  LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$b" 2>&1
done | grep -Eq "(libstdc\+\+|libgcc_s)[^ ]*: version .* not found|^\s*(libstdc\+\+|libgcc_s)[^ ]* => not found"; then
  lib_path=$K/lib-compat:$lib_path
  compat=yes
fi
# The driver library is loaded at run time (dlopen), so ldd does not show it.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    if [[ -e $d/libcuda.so.1 ]]; then
      [[ :$lib_path:${LD_LIBRARY_PATH:-}: == *:$d:* ]] || lib_path=$lib_path:$d
      break
    fi
  done
fi
# Only kit programs get this path (through `env`): the machine's own tools keep their libraries.
kit_ld=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
kenv=(env "LD_LIBRARY_PATH=$kit_ld")

# How a kit program is started: directly, or through the kit's loader (wrapper scripts, so that
# mpirun and compute-sanitizer can start them like any program).
kx() {
  if [[ -z $loader ]]; then echo "$K/bin/$1"; else echo "$work/wrap/$1"; fi
}
mpirun_cmd=$K/openmpi/bin/orterun
if [[ -n $loader ]]; then
  mkdir -p "$work/wrap"
  for b in "$K"/bin/* "$K"/openmpi/bin/orterun; do
    cat >"$work/wrap/$(basename "$b")" <<EOF
#!/bin/sh
exec "$loader" --library-path "$K/glibc:\$LD_LIBRARY_PATH" "$b" "\$@"
EOF
    chmod +x "$work/wrap/$(basename "$b")"
  done
  mpirun_cmd=$work/wrap/orterun
fi

# ---- Open MPI and PMIx from the kit ----
export OPAL_PREFIX=$K/openmpi OPAL_EXEC_PREFIX=$K/openmpi OPAL_BINDIR=$K/openmpi/bin \
  OPAL_LIBDIR=$K/lib OPAL_PKGLIBDIR=$K/openmpi/lib/openmpi3 OPAL_LIBEXECDIR=$K/openmpi/bin \
  OPAL_DATAROOTDIR=$K/openmpi/share OPAL_DATADIR=$K/openmpi/share \
  OPAL_PKGDATADIR=$K/openmpi/share/openmpi OPAL_SYSCONFDIR=$K/openmpi/etc
export PMIX_PREFIX=$K/pmix PMIX_EXEC_PREFIX=$K/pmix PMIX_LIBDIR=$K/lib \
  PMIX_PKGLIBDIR=$K/pmix/lib/pmix PMIX_DATAROOTDIR=$K/pmix/share PMIX_DATADIR=$K/pmix/share \
  PMIX_PKGDATADIR=$K/pmix/share/pmix PMIX_SYSCONFDIR=$K/pmix/etc \
  PMIX_MCA_mca_base_component_path=$K/pmix/lib/pmix
# One node, as root, no fabric: the local launcher and TCP over loopback (nothing here is about
# MPI speed; shared memory would need a usable /dev/shm and cross-process memory access).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm=isolated \
  OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo \
  OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
mpirun_x=("$mpirun_cmd" -x LD_LIBRARY_PATH -x LORA_REQUIRE_CUDA -x OMP_NUM_THREADS
  -x OPENBLAS_NUM_THREADS)
mpirun2=("${mpirun_x[@]}" -np 2)
export LORA_REQUIRE_CUDA=1 OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4
gtest_args=(--gtest_color=no)

# ---- facts ----
sanitizer=$(command -v compute-sanitizer 2>/dev/null)
for s in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z $sanitizer && -x $s ]] && sanitizer=$s
done
nvsmi=$(command -v nvidia-smi 2>/dev/null)
[[ -z $nvsmi && -x /usr/local/nvidia/bin/nvidia-smi ]] && nvsmi=/usr/local/nvidia/bin/nvidia-smi
{
  if [[ -n $nvsmi ]]; then
    "$nvsmi" --query-gpu=name,driver_version,memory.total,compute_cap,compute_mode,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -4
  else
    echo "nvidia-smi: not found"
  fi
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm); $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"); $(getconf _NPROCESSORS_ONLN) CPUs; $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory"
  echo "glibc: ${glibc_have:-unknown} here, $glibc_needed needed by the kit; $([[ -n $loader ]] && echo "running through the kit's own loader" || echo "the machine's glibc is used")"
  echo "libstdc++/libgcc_s from the kit's compat folder: $compat"
  echo "libraries found outside the kit: ${lib_dirs_searched[*]:-none}"
  echo "LD_LIBRARY_PATH for kit programs: $kit_ld"
  echo "NVIDIA_TF32_OVERRIDE=${NVIDIA_TF32_OVERRIDE:-unset} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"
  echo "compute-sanitizer: ${sanitizer:-not found} $([[ -n $sanitizer ]] && "$sanitizer" --version 2>&1 | tail -1)"
  echo "nvcc: $(command -v nvcc >/dev/null && nvcc --version | tail -1 || echo not found)"
  if command -v cuobjdump >/dev/null; then
    echo "device code in core_test_cuda_ops: $(cuobjdump --list-elf "$K/bin/core_test_cuda_ops" 2>&1 | grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')"
  fi
  echo "python torch: $(timeout 30 python3 -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "nccl", ".".join(map(str, torch.cuda.nccl.version())), "available", torch.cuda.is_available())' 2>&1 | tail -1)"
  echo "kit:"
  sed -n '1,9p' "$K/MANIFEST.txt" | sed 's/^/  /'
} >>"$facts" 2>&1
cat "$facts"

# ---- stages ----
stage_libs() {  # every kit binary resolves every library; prints what each resolved to
  local b bad=0 out
  for b in "${kit_bins[@]}"; do
    if [[ -n $loader ]]; then
      out=$("$loader" --library-path "$K/glibc:$kit_ld" --list "$b" 2>&1)
    else
      out=$(LD_LIBRARY_PATH=$kit_ld ldd "$b" 2>&1)
    fi
    echo "== $b"
    echo "$out"
    grep -Eq 'not found' <<<"$out" && bad=1
  done
  # libcuda.so.1 is loaded at run time: make sure this process could.
  echo "== libcuda.so.1: $(ldconfig -p 2>/dev/null | grep -m1 'libcuda\.so\.1 ' || echo 'not in the ld cache')"
  return $bad
}
stage_train() {  # BACKEND [RUNNER...]: a tiny lora train on the repository's README, then inspect
  local backend=$1 dir=$work/train_$1${2:+_checked}
  shift
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<EOF
run: {name: kit-$backend, output_dir: $dir/run, seed: 3}
model: {vocab_size: 256, n_layer: 2, n_head: 2, d_model: 64, max_seq_len: 64}
lora: {rank: 4, alpha: 8, targets: [attn.qkv, attn.proj, mlp.fc, mlp.proj]}
data: {train: $repo/README.md, format: text, seq_len: 64}
train: {micro_batch: 4, steps: 20, lr: 1.0e-3, log_every: 5}
device: {backend: $backend, threads: 2}
checkpoint: {keep: 1}
EOF
  env LD_LIBRARY_PATH="$kit_ld" "$@" "$(kx lora)" train "$dir/config.yaml" || return $?
  test -s "$dir/run/metrics.jsonl" || { echo "no metrics.jsonl"; return 1; }
  local ckpt
  ckpt=$(ls "$dir"/run/checkpoints/ckpt-*.h5 2>/dev/null | tail -1)
  [[ -n $ckpt ]] || { echo "no checkpoint written"; return 1; }
  env LD_LIBRARY_PATH="$kit_ld" "$(kx lora)" inspect "$ckpt"
}
export -f stage_libs stage_train kx
export K work repo loader kit_ld kit_bins_str="${kit_bins[*]}" sanitizer

ops_small='CudaOps.Embedding:CudaOps.LayerNorm:CudaOps.Matmul:CudaOps.LmHead:CudaOps.AttentionSmall:CudaOps.AttentionLongRows:CudaOps.Gelu:CudaOps.Residual:CudaOps.CrossEntropy:CudaOps.DropoutMasksEqualCpu:CudaOps.Lora:CudaOps.AdamWSumSquaresScale'

run_stage libs 60 check_exit -- bash -c 'kit_bins=($kit_bins_str); stage_libs'
if [[ -n $nvsmi ]]; then
  run_stage nvidia_smi 30 check_exit -- "$nvsmi"
else
  wanted nvidia_smi && record nvidia_smi fail 0 "nvidia-smi not found" ""
fi
run_stage cuda_ops 150 check_gtest -- "${kenv[@]}" "$(kx core_test_cuda_ops)" "${gtest_args[@]}" \
  --gtest_output=xml:"$logs/cuda_ops.xml"
run_stage cuda_model 120 check_gtest -- "${kenv[@]}" "$(kx core_test_transformer_cuda)" "${gtest_args[@]}" \
  --gtest_output=xml:"$logs/cuda_model.xml"
run_stage device_choice 60 check_gtest -- "${kenv[@]}" "$(kx trainer_test_device)" "${gtest_args[@]}" \
  --gtest_output=xml:"$logs/device_choice.xml"
run_stage nccl_1rank 90 check_gtest -- "${kenv[@]}" "$(kx comm_test_nccl)" "${gtest_args[@]}" \
  --gtest_output=xml:"$logs/nccl_1rank.xml"
run_stage mpi_2ranks 60 check_gtest -- "${kenv[@]}" "${mpirun2[@]}" "$(kx comm_mpi_test_comm)" "${gtest_args[@]}"
run_stage nccl_2ranks 120 check_gtest -- "${kenv[@]}" "${mpirun2[@]}" "$(kx comm_mpi_test_nccl)" "${gtest_args[@]}"
run_stage train_cpu 90 check_exit -- bash -c 'stage_train cpu'
run_stage train_cuda 60 check_train_cuda -- bash -c 'stage_train cuda'
run_stage train_e2e 180 check_gtest -- "${kenv[@]}" "LORA_TEST_BINARY=$(kx lora)" \
  "LORA_TEST_MPIRUN=${mpirun_x[*]}" "$(kx launch_test_cuda_train)" "${gtest_args[@]}" \
  --gtest_output=xml:"$logs/train_e2e.xml"
if [[ -n $sanitizer ]]; then
  memcheck=("$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 50)
  run_stage memcheck_ops 150 check_memcheck -- "${kenv[@]}" "${memcheck[@]}" \
    "$(kx core_test_cuda_ops)" "${gtest_args[@]}" --gtest_filter="$ops_small"
  run_stage memcheck_model 150 check_memcheck -- "${kenv[@]}" "${memcheck[@]}" \
    "$(kx core_test_transformer_cuda)" "${gtest_args[@]}" \
    --gtest_filter='Families/CudaTransformer.FiftyStepsWithTheDeviceOptimizerTrackTheCpuLossCurve/gpt2:Families/CudaTransformer.FiftyStepsWithTheDeviceOptimizerTrackTheCpuLossCurve/llama_gqa_untied'
  run_stage memcheck_train 120 check_memcheck_train -- bash -c \
    'stage_train cuda "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 50'
else
  for s in memcheck_ops memcheck_model memcheck_train; do
    wanted $s && record $s fail 0 "compute-sanitizer not found" ""
  done
fi
run_stage bench_lora 120 check_bench -- "${kenv[@]}" "$(kx bench_gpt2_cuda)" --mode lora --steps 10 --warmup 3
run_stage bench_full 120 check_bench -- "${kenv[@]}" "$(kx bench_gpt2_cuda)" --mode full --steps 5 --warmup 2
run_stage bench_cpu 150 check_bench -- "${kenv[@]}" "$(kx bench_train)" --layers 12 --d-model 768 \
  --heads 12 --vocab 50257 --seq 1024 --batch 1 --threads "$(getconf _NPROCESSORS_ONLN)" --steps 1 --warmup 1

# ---- wrap up ----
tar -C "$work" -czf "$out/logs.tar.gz" logs 2>/dev/null
write_results
echo
cat "$out/results.md"
grep -q '"overall": "pass"' "$out/results.json"
