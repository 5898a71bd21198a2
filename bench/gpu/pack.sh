#!/usr/bin/env bash
# Builds the GPU device kit: a Release CUDA build for Hopper (sm_90) in build-gpu/, and one
# git-ignored folder gpu-kit/ with what a GPU machine lacks to run our binaries there:
#   - our binaries, stripped: lora, the CUDA test executables (ops, the model of every family,
#     NCCL at 1 rank, NCCL and plain MPI under mpirun, lora train/eval/generate on the GPU against
#     the CPU) and the benchmarks;
#   - the shared libraries they load from our Debian packages (yaml-cpp, HDF5 and what it pulls
#     in, OpenBLAS, OpenMP, Open MPI, PMIx, hwloc, libevent, ...), found with ldd;
#   - Open MPI's mpirun, its plugins (without the InfiniBand/UCX/OFI/PSM ones, whose libraries a
#     one-GPU machine does not need) and help files, and PMIx's plugins and help files, relocated
#     at run time through OPAL_* / PMIX_* variables (bench/gpu/run.sh sets them).
# glibc is carried too (glibc/) but used only when the machine's own is older than the kit needs.
# Left out on purpose: the CUDA runtime, cuBLAS, cuDNN,
# NCCL and driver libraries, which the GPU machine provides (its CUDA toolkit and its Python
# packages' nvidia-* wheels; run.sh finds them). libstdc++ and libgcc_s go to a compat folder that
# run.sh uses only when the machine's own are missing or too old.
#
# Everything is packed into gpu-kit/kit.tar.gz (plus gpu-kit/MANIFEST.txt), which must stay under
# the size limit (LORA_KIT_LIMIT_MIB, default 56 MiB, so that the kit and the repository together
# stay under 64 MiB). Usage, from anywhere in the repository:
#   bash bench/gpu/pack.sh            # LORA_GPU_BUILD_DIR (default build-gpu), LORA_JOBS (default 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
build=${LORA_GPU_BUILD_DIR:-build-gpu}
jobs=${LORA_JOBS:-2}
limit_mib=${LORA_KIT_LIMIT_MIB:-56}
kit=$repo/gpu-kit

die() { echo "pack.sh: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# ---- build ----
nvcc=$(command -v nvcc || true)
[[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
[[ -n $nvcc ]] || die "nvcc not found (looked on PATH and in /usr/local/cuda/bin)"
echo "pack.sh: configuring $build (Release, sm_90, portable x86-64 code)"
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLORA_ENABLE_CUDA=ON -DLORA_NATIVE=OFF \
  -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 >"$build/pack-configure.log" 2>&1 ||
  { cat "$build/pack-configure.log"; die "cmake configure failed"; }
grep -q 'lora: CUDA backend ON' "$build/pack-configure.log" || die "the build has no CUDA backend"
nccl_lib=$(sed -n 's/^LORA_NCCL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")
[[ -n $nccl_lib && $nccl_lib != *NOTFOUND* ]] || die "libnccl not found at configure time"

tests=(core_test_cuda_ops core_test_transformer_cuda comm_test_nccl comm_mpi_test_nccl comm_mpi_test_comm
  launch_test_cuda_train trainer_test_device)
benches=(bench_gpt2_cuda bench_train)
targets=(lora "${tests[@]}" "${benches[@]}")
echo "pack.sh: building ${targets[*]} with -j$jobs"
target_args=()
for t in "${targets[@]}"; do target_args+=(--target "$t"); done
cmake --build "$build" -j "$jobs" "${target_args[@]}" >"$build/pack-build.log" 2>&1 ||
  { tail -40 "$build/pack-build.log"; die "build failed (log: $build/pack-build.log)"; }

# ---- stage the kit ----
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
k=$stage/kit
mkdir -p "$k"/{bin,lib,lib-compat,glibc} "$k"/openmpi/{bin,lib/openmpi3,share/openmpi,etc} \
  "$k"/pmix/{lib/pmix,share/pmix,etc}

cp "$build/lora" "$k/bin/"
for t in "${tests[@]}"; do cp "$build/tests/$t" "$k/bin/"; done
for b in "${benches[@]}"; do cp "$build/bench/$b" "$k/bin/"; done

# Open MPI (Debian lays it out under /usr/lib/<triplet>/openmpi; ompi_info names the folders).
ompi_path() { ompi_info --path "$1" --parsable | sed -n "s/^path:$1://p"; }
ompi_pkglibdir=$(ompi_path pkglibdir)
ompi_pkgdatadir=$(ompi_path pkgdatadir)
ompi_sysconfdir=$(ompi_path sysconfdir)
[[ -d $ompi_pkglibdir && -d $ompi_pkgdatadir ]] || die "Open MPI folders not found via ompi_info"
orterun=$(readlink -f "$(command -v mpirun)")
cp "$orterun" "$k/openmpi/bin/orterun"
ln -s orterun "$k/openmpi/bin/mpirun"
for tool in orted ompi_info; do
  p=$(command -v "$tool" || true)
  [[ -n $p ]] && cp "$(readlink -f "$p")" "$k/openmpi/bin/$tool"
done
cp -r "$ompi_pkgdatadir"/. "$k/openmpi/share/openmpi/"
[[ -d $ompi_sysconfdir ]] && cp -r "$ompi_sysconfdir"/. "$k/openmpi/etc/" || true
skipped_plugins=()
unneeded='libucp|libuct|libucs|libucm|libfabric|libpsm|libibverbs|librdmacm|libefa|libmlx|libnl-'
for f in "$ompi_pkglibdir"/*.so; do
  if ldd "$f" | awk '{print $1}' | grep -Eq "^($unneeded)"; then
    skipped_plugins+=("$(basename "$f")")
  else
    cp "$f" "$k/openmpi/lib/openmpi3/"
  fi
done

# PMIx (Open MPI's external PMIx: its plugins and help files live under pmix2/).
pmix_lib=$(ldd "$ompi_pkglibdir/mca_pmix_ext3x.so" | awk '$1 ~ /^libpmix/ {print $3}')
[[ -n $pmix_lib ]] || die "libpmix not found from mca_pmix_ext3x.so"
pmix_root=$(dirname "$(dirname "$(readlink -f "$pmix_lib")")")
[[ -d $pmix_root/lib/pmix ]] || pmix_root=$(dirname "$(readlink -f "$pmix_lib")")/pmix2
[[ -d $pmix_root/lib/pmix ]] || die "PMIx plugin folder not found next to $pmix_lib"
cp "$pmix_root"/lib/pmix/*.so "$k/pmix/lib/pmix/"
cp -r "$pmix_root"/share/pmix/. "$k/pmix/share/pmix/"
# Debian's pmix-mca-params.conf names its plugin folder by absolute path: keep the rest of it.
if [[ -f $pmix_root/share/pmix-mca-params.conf ]]; then
  grep -v '^[[:space:]]*mca_base_component_path' "$pmix_root/share/pmix-mca-params.conf" \
    >"$k/pmix/etc/pmix-mca-params.conf"
fi

# Shared libraries: the ldd closure of every binary and plugin, less what the machine provides.
provided='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libresolv|libutil\.so|libanl|libBrokenLocale|libcuda\.so|libcudart|libcublas|libcudnn|libnccl|libnvidia|libnvrtc|libnvJitLink|libcufft|libcurand|libcusparse|libcusolver)'
compat='^(libstdc\+\+\.so|libgcc_s\.so)'
declare -A copied=()
while read -r name path; do
  [[ $name =~ $provided ]] && continue
  [[ -n ${copied[$name]:-} ]] && continue
  [[ -f $path ]] || die "ldd could not resolve $name"
  if [[ $name =~ $compat ]]; then dest=$k/lib-compat; else dest=$k/lib; fi
  cp -L "$path" "$dest/$name"
  copied[$name]=$path
done < <(for f in "$k"/bin/* "$k"/openmpi/bin/* "$k"/openmpi/lib/openmpi3/*.so "$k"/pmix/lib/pmix/*.so; do
           [[ -L $f ]] && continue
           ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
         done | sort -u)
# Libraries loaded by the copied libraries themselves (ldd above already lists indirect ones).
for f in "$k"/lib/*; do
  ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 == "not" {print $1}' | grep -q . &&
    die "$(basename "$f") has unresolved dependencies here"
done

# This machine's glibc, for machines whose own is older than the kit needs: run.sh then starts kit
# programs through this loader (never the machine's other programs).
libc_dir=$(dirname "$(ldd "$k/bin/lora" | awk '$1 == "libc.so.6" {print $3}')")
cp -L /lib64/ld-linux-x86-64.so.2 "$k/glibc/"
for g in libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 \
  libutil.so.1 libanl.so.1 libnss_files.so.2 libnss_dns.so.2; do
  [[ -e $libc_dir/$g ]] && cp -L "$libc_dir/$g" "$k/glibc/"
done

strip --strip-unneeded "$k"/bin/* "$k"/openmpi/bin/orterun "$k"/openmpi/lib/openmpi3/*.so \
  "$k"/pmix/lib/pmix/*.so "$k"/lib/* "$k"/lib-compat/* 2>/dev/null || true
for tool in orted ompi_info; do
  [[ -f $k/openmpi/bin/$tool ]] && strip --strip-unneeded "$k/openmpi/bin/$tool" || true
done

# The newest glibc symbol version any kit file needs: run.sh compares it with the machine's glibc.
glibc_needed=$(for f in "$k"/bin/* "$k"/lib/* "$k"/lib-compat/* "$k"/openmpi/bin/* \
                 "$k"/openmpi/lib/openmpi3/*.so "$k"/pmix/lib/pmix/*.so; do
                 [[ -L $f ]] || objdump -T "$f" 2>/dev/null
               done | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (uncommitted changes)" || true)
{
  echo "lora GPU kit"
  echo "commit: $commit$dirty"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(uname -m)"
  echo "nvcc: $("$nvcc" --version | tail -1)"
  echo "cuda architectures: $(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt")"
  echo "nccl headers: $(sed -n 's/^#define NCCL_VERSION_CODE //p' "$(dirname "$nccl_lib")/../include/nccl.h" 2>/dev/null || true)"
  echo "open mpi: $(ompi_info --version 2>/dev/null | head -1)"
  echo "glibc needed: $glibc_needed"
  echo "skipped open mpi plugins (fabric libraries not carried): ${skipped_plugins[*]}"
  echo "files:"
  (cd "$k" && find . \( -type f -o -type l \) -printf '  %P %s\n' | sort)
} >"$k/MANIFEST.txt"
echo "$glibc_needed" >"$k/GLIBC_NEEDED"

# ---- pack ----
rm -rf "$kit"
mkdir -p "$kit"
raw_bytes=$(du -sb "$k" | cut -f1)
tar -C "$stage" -czf "$kit/kit.tar.gz" kit
cp "$k/MANIFEST.txt" "$kit/MANIFEST.txt"
kit_bytes=$(du -sb "$kit" | cut -f1)
repo_bytes=$( (git ls-files -z | xargs -0 stat -c %s 2>/dev/null || true) | awk '{s += $1} END {print s + 0}')
echo "pack.sh: $(ls "$k/bin" | wc -l) binaries, $(ls "$k/lib" | wc -l) libraries" \
  "(+$(ls "$k/lib-compat" | wc -l) compat), $(ls "$k/openmpi/lib/openmpi3" | wc -l) Open MPI plugins;" \
  "glibc $glibc_needed or newer needed"
echo "pack.sh: kit $(mib "$raw_bytes") MiB unpacked, gpu-kit/ $(mib "$kit_bytes") MiB" \
  "(limit $limit_mib MiB); tracked repository files $(mib "$repo_bytes") MiB"
((kit_bytes <= limit_mib * 1048576)) || die "gpu-kit/ is larger than $limit_mib MiB"
echo "pack.sh: done: gpu-kit/kit.tar.gz; run it there with: bash bench/gpu/run.sh (carry gpu-kit)"
