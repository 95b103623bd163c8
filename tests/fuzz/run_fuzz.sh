#!/usr/bin/env bash
# Owns how CTest runs a fuzz harness: run_fuzz.sh fuzz|replay BIN NAME SRC_DIR WORK_DIR [SECONDS]
# (SRC_DIR = tests/fuzz: corpus/NAME, regressions/NAME, optional dict/NAME.dict).
#   fuzz:   mutate for SECONDS over the seed corpus + regressions (new inputs go to WORK_DIR, never the source tree;
#           a crash input is saved under WORK_DIR/artifacts/ — copy it to tests/fuzz/regressions/NAME/ once fixed).
#   replay: run every input of tests/fuzz/regressions/NAME and tests/fuzz/corpus/NAME once.
set -euo pipefail
mode=$1 bin=$2 name=$3 src=$4 work=$5 secs=${6:-15}
corpus=$src/corpus/$name regress=$src/regressions/$name
mkdir -p "$work/new" "$work/artifacts"
# Leak checks stay on; ptrace-less containers cannot run LeakSanitizer, so it is off only where it cannot work.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
dirs=()
[[ -d $corpus ]] && dirs+=("$corpus")
[[ -d $regress ]] && dirs+=("$regress")
common=(-rss_limit_mb=2048 -timeout=20 -artifact_prefix="$work/artifacts/" -print_final_stats=1)
dict=()  # tokens the parser gives meaning to (keys, dtype names): mutations find structure much sooner
[[ -f $src/dict/$name.dict ]] && dict=(-dict="$src/dict/$name.dict")
case $mode in
  # -max_len: mutate small inputs (fast); the big regression inputs (deep nesting, huge scalars) are replayed whole
  # by the replay mode, and a prefix of one still nests past every depth limit.
  fuzz) exec "$bin" "${common[@]}" "${dict[@]}" -max_len="${MOE_FUZZ_MAX_LEN:-16384}" -max_total_time="$secs" \
          "$work/new" "${dirs[@]}" ;;
  replay)
    files=()
    for d in "${dirs[@]}"; do
      while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$d" -type f -print0 | sort -z)
    done
    ((${#files[@]})) || { echo "no inputs for $name"; exit 1; }
    echo "replaying ${#files[@]} inputs of $name"
    exec "$bin" "${common[@]}" "${files[@]}" ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
