#!/usr/bin/env bash
# A rehearsal of the GPU run on a machine without a GPU: bench/gpu/run.sh runs every stage from
# gpu-kit/ (build it first with bench/gpu/pack.sh), and this script checks that each ended as it
# must here. The CUDA stages must FAIL and say why ("no usable CUDA device", since
# LORA_REQUIRE_CUDA=1 turns skips into failures); libs, mpi_2ranks (the kit's mpirun), train_cpu
# and bench_cpu must pass; train_cuda must fail saying that no usable CUDA device exists.
#
#   bash bench/gpu/dry_run.sh [--hide-system] [--bundled-glibc]
#
# --hide-system   (root, needs unshare) runs inside a private mount namespace in which this
#                 machine's copies of what the kit carries are hidden: every library of the kit's
#                 lib/ (except those the machine's own shell tools and mount load, which it lists),
#                 Open MPI's and PMIx's folders and help files, mpirun/orterun/orted. A pass then
#                 shows that the kit does not fall back on this machine's Debian packages.
# --bundled-glibc starts every kit program through the kit's own glibc loader, the path run.sh
#                 takes on a machine whose glibc is older than the kit needs.
# Results go to OUT (default /tmp/lora-gpu-dry-run). Exit status 0 when every stage ended as
# expected here.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
hide=no
export OUT=${OUT:-/tmp/lora-gpu-dry-run}
export LORA_KIT_WORK=${LORA_KIT_WORK:-/tmp/lora-gpu-dry-run-kit}
for arg in "$@"; do
  case $arg in
    --hide-system) hide=yes ;;
    --bundled-glibc) export LORA_KIT_GLIBC=bundled ;;
    *) echo "dry_run.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
[[ -f gpu-kit/kit.tar.gz ]] || { echo "dry_run.sh: no gpu-kit/kit.tar.gz: run bench/gpu/pack.sh" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT"

if [[ $hide == yes ]]; then
  # What to hide: the real files behind the kit's library names, and Open MPI's and PMIx's trees.
  list=$OUT/hidden.txt
  names=$(tar -tzf gpu-kit/kit.tar.gz | sed -n 's|^kit/lib/\(.\+\)$|\1|p')
  multiarch=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  {
    for n in $names; do
      find "$multiarch" -name "$n" 2>/dev/null | while read -r f; do readlink -f "$f"; done
    done
    for b in mpirun mpiexec orterun orted ompi_info; do
      p=$(command -v "$b" 2>/dev/null) && readlink -f "$p"
    done
  } | sort -u >"$list.all"
  # The machine's own tools that the rehearsal runs (mount for the hiding itself, the shell tools
  # run.sh uses) must keep their libraries: a kit library they also load (libpcre2-8, which grep
  # and mount need) stays visible, and the kit's programs still take the kit's copy first
  # (LD_LIBRARY_PATH; the libs stage shows where each resolved).
  for t in mount bash sh grep sed awk tar gzip find sort cut tr head tail timeout env stat \
    getconf ldconfig unshare python3; do
    p=$(command -v "$t" 2>/dev/null) || continue
    ldd "$(readlink -f "$p")" 2>/dev/null || true  # scripts are not dynamic executables
  done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r f; do readlink -f "$f"; done |
    sort -u >"$OUT/tool-libs.txt"
  comm -23 "$list.all" "$OUT/tool-libs.txt" >"$list"
  kept=$(comm -12 "$list.all" "$OUT/tool-libs.txt" | xargs -r -n1 basename | tr '\n' ' ')
  [[ -n $kept ]] && echo "dry_run.sh: left visible (this machine's own tools load them): $kept"
  dirs=()
  for d in "$multiarch/openmpi" "$multiarch/pmix2" /usr/share/openmpi /etc/openmpi; do
    [[ -d $d ]] && dirs+=("$d")
  done
  echo "dry_run.sh: hiding $(wc -l <"$list") files and ${#dirs[@]} folders of this machine"
  # shellcheck disable=SC2016
  unshare -m --propagation private bash -c '
    set -e
    while read -r f; do mount --bind /dev/null "$f"; done <"$1"
    shift
    for d in "$@"; do mount -t tmpfs none "$d"; done
    bash bench/gpu/run.sh' hide "$list" "${dirs[@]}" || true
else
  bash bench/gpu/run.sh || true
fi

# Every stage as it must end on a machine without a GPU.
status_of() { sed -n "s/.*\"name\": \"$1\", \"status\": \"\([a-z_]*\)\".*/\1/p" "$OUT/results.json"; }
summary_of() { sed -n "s/.*\"name\": \"$1\", .*\"summary\": \"\(.*\)\", \"log\".*/\1/p" "$OUT/results.json"; }
ok=yes
expect() {  # STAGE STATUS [TEXT the summary must contain]
  local got summary
  got=$(status_of "$1")
  summary=$(summary_of "$1")
  if [[ $got != "$2" || ( -n ${3:-} && $summary != *"$3"* ) ]]; then
    echo "dry_run.sh: UNEXPECTED $1: $got ($summary); expected $2${3:+ with \"$3\"}"
    ok=no
  else
    echo "dry_run.sh: as expected $1: $got"
  fi
}
[[ -f $OUT/results.json ]] || { echo "dry_run.sh: run.sh wrote no results.json" >&2; exit 1; }
expect libs pass
expect cuda_ops fail "no usable CUDA device"
expect cuda_model fail "no usable CUDA device"
expect device_choice fail "no usable CUDA device"
expect nccl_1rank fail "no usable CUDA device"
expect mpi_2ranks pass
expect nccl_2ranks fail "no usable CUDA device"
expect train_cpu pass
expect train_cuda fail "no usable CUDA device"
expect train_e2e fail "no usable CUDA device"
expect bench_lora fail "no usable CUDA device"
expect bench_cpu pass
for f in results.json results.md run.log facts.txt bench.jsonl logs.tar.gz; do
  [[ -f $OUT/$f ]] || { echo "dry_run.sh: $OUT/$f missing"; ok=no; }
done
[[ $ok == yes ]] && echo "dry_run.sh: rehearsal as expected; results in $OUT" || exit 1
