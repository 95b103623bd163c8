#!/usr/bin/env bash
# Owns the GPU bundle: a Release sm_90 build of what tests/gpu/device_check.sh runs, with the shared libraries a bare GPU machine lacks.
#
# Usage: tests/gpu/make_bundle.sh [--build DIR] [--archs 90] [--jobs N]
# Run it on a machine with our build dependencies and the CUDA toolkit (not on the GPU machine). It
#   1. configures and builds DIR (default build-gpu/) for the CUDA architectures --archs (default 90 = H100/H200),
#      only the targets the device check needs: moe-train, every tests/gpu/test_* executable and the gpu-* benchmarks;
#   2. copies the binaries (stripped) into .gpubundle/bin and every shared library they load that a CUDA machine
#      image does not bring (ldd; left out: glibc, libstdc++, libgcc_s and the CUDA/driver libraries libcuda,
#      libcudart, libcublas*, libcudnn*, libnccl*, libnvidia*) into .gpubundle/lib, plus MANIFEST (commit, archs,
#      files);
#   3. packs .gpubundle into .gpubundle.pack/gpubundle.tar.xz (OpenBLAS and oneDNN alone are 76 MiB unpacked,
#      about 11 MiB packed) and prints both sizes. The pack is what travels to a sandbox GPU machine
#      (carry: .gpubundle.pack, at most 64 MiB); device_check.sh unpacks it there.
# Both output folders are in .gitignore.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$ROOT/build-gpu" ARCHS=90 JOBS=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --archs) ARCHS="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "make_bundle.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || {
  echo "make_bundle.sh: no nvcc (CUDA toolkit) on this machine: the bundle needs the CUDA build" >&2; exit 2; }
OUTB="$ROOT/.gpubundle" PACK="$ROOT/.gpubundle.pack"

# ---- 1. configure + build ----
launch=()
command -v ccache >/dev/null && launch=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_ARCHS="$ARCHS" "${launch[@]}" >"$BUILD/make_bundle.configure.log" 2>&1 ||
  { cat "$BUILD/make_bundle.configure.log" >&2; exit 1; }
grep -qs -- '-DMOE_HAVE_CUDA' "$BUILD/CMakeFiles/moe_core.dir/flags.make" "$BUILD/build.ninja" ||
  { echo "make_bundle.sh: $BUILD was configured without CUDA (MOE_NO_CUDA set, or nvcc not found by CMake)" >&2; exit 1; }
# The executables: moe-train, moe-bench, one per tests/gpu/test_*.{cu,cpp}, and every gpu-* benchmark target the project has.
targets=(moe-train moe-bench)
for src in "$ROOT"/tests/gpu/test_*.cu "$ROOT"/tests/gpu/test_*.cpp; do
  [[ -e "$src" ]] && targets+=("$(basename "${src%.*}")")
done
mapfile -t benches < <(cmake --build "$BUILD" --target help 2>/dev/null | grep -oE 'gpu-[a-z0-9-]+' | sort -u)
targets+=("${benches[@]}")
echo "make_bundle.sh: building ${targets[*]} in $BUILD (CUDA archs $ARCHS, -j$JOBS)"
CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(dirname "$ROOT")}" cmake --build "$BUILD" -j"$JOBS" --target "${targets[@]}" \
  >"$BUILD/make_bundle.build.log" 2>&1 || { tail -40 "$BUILD/make_bundle.build.log" >&2; echo "make_bundle.sh: build failed (full log: $BUILD/make_bundle.build.log)" >&2; exit 1; }

# ---- 2. collect binaries and libraries ----
rm -rf "$OUTB"
mkdir -p "$OUTB/bin" "$OUTB/lib"
bins=()
for t in "${targets[@]}"; do
  f="$(find "$BUILD" -maxdepth 3 -type f -name "$t" -perm -u+x | head -1)"
  [[ -n "$f" ]] || { echo "make_bundle.sh: built target $t but found no executable under $BUILD" >&2; exit 1; }
  cp "$f" "$OUTB/bin/$t"
  strip --strip-unneeded "$OUTB/bin/$t" 2>/dev/null || true
  bins+=("$OUTB/bin/$t")
done
# Libraries the GPU machine's image is expected to have (glibc, the GCC runtime, CUDA and the driver).
system_lib() {
  case "$1" in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*) return 0 ;;
    libcuda.so*|libcudart.so*|libcublas*|libcudnn*|libnccl*|libnvidia*|libnvJitLink*|libnvrtc*) return 0 ;;
  esac
  return 1
}
missing=()
for b in "${bins[@]}"; do
  while read -r name arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    system_lib "$name" && continue
    if [[ "$path" == "not" || ! -e "$path" ]]; then missing+=("$name (needed by $(basename "$b"))"); continue; fi
    [[ -e "$OUTB/lib/$name" ]] || cp -L "$path" "$OUTB/lib/$name"
  done < <(ldd "$b")
done
((${#missing[@]} == 0)) || { printf 'make_bundle.sh: unresolved library: %s\n' "${missing[@]}" >&2; exit 1; }
chmod u+w "$OUTB"/lib/*
{
  echo "commit $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ local changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "cuda $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo '?'), archs $ARCHS"
  echo "bin: $(cd "$OUTB/bin" && echo *)"
  echo "lib: $(cd "$OUTB/lib" && echo *)"
} >"$OUTB/MANIFEST"

# ---- 3. pack ----
rm -rf "$PACK"
mkdir -p "$PACK"
tar -C "$OUTB" -cf - . | xz -6 -T"$JOBS" >"$PACK/gpubundle.tar.xz"
raw=$(du -sb "$OUTB" | cut -f1) packed=$(stat -c %s "$PACK/gpubundle.tar.xz")
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b / 1048576}'; }
echo "make_bundle.sh: .gpubundle $(mib "$raw") ($(ls "$OUTB/bin" | wc -l) binaries, $(ls "$OUTB/lib" | wc -l) libraries); packed .gpubundle.pack/gpubundle.tar.xz $(mib "$packed")"
echo "largest files:"; (cd "$OUTB" && du -b bin/* lib/* | sort -rn | head -6 | awk '{printf "  %-40s %.1f MiB\n", $2, $1 / 1048576}')
if ((packed > 56 * 1048576)); then
  echo "make_bundle.sh: the pack is $(mib "$packed"): too close to the 64 MiB a GPU-machine call carries" >&2
  exit 1
fi
