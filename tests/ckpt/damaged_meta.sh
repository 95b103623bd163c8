#!/usr/bin/env bash
# Owns the damaged-/meta test: a checkpoint whose /meta was edited or damaged (h5py) is skipped with a warning under --resume auto and refused with exit 2 naming it when given by path; never a crash or exit 1.
# usage: damaged_meta.sh MOE_TRAIN PYTHON_WITH_H5PY
set -u
MOE_TRAIN=$1
PY=$2
here=$(dirname "$0")
source "$here/common.sh"
"$PY" -c "import h5py" 2>/dev/null || { echo "FAIL: $PY has no h5py (run launch/setup.sh)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
make_inputs "$tmp"
ck="$tmp/run/checkpoints"
"$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=4 --set checkpoint.every=2 > "$tmp/a.log" 2>&1 ||
  { echo "FAIL: first run"; cat "$tmp/a.log"; exit 1; }
cp "$ck/step_4.h5" "$tmp/good4.h5"
fail=0
# Each case edits /meta of step_4.h5 (copy of the good file) with h5py, leaving the tensors intact.
for case in step_minus1 step_edited world_string step_huge config_edited bias_nan; do
  find "$ck" -name 'step_*.h5' ! -name step_2.h5 -delete  # a run that took a damaged file may have written more
  cp "$tmp/good4.h5" "$ck/step_4.h5"
  "$PY" - "$ck/step_4.h5" "$case" <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r+")
m = f["meta"]
case = sys.argv[2]
B = m.attrs["data_position"] // m.attrs["step"]
L = m.attrs["tokens_seen"] // m.attrs["data_position"]
def set_i64(name, v):
    m.attrs.modify(name, np.int64(v))
if case == "step_minus1":
    set_i64("step", -1)
elif case == "step_edited":      # consistent but stale: only the /meta checksum can tell
    set_i64("step", 3); set_i64("data_position", 3 * B); set_i64("tokens_seen", 3 * B * L)
elif case == "world_string":
    del m.attrs["world"]; m.attrs["world"] = np.bytes_("two")
elif case == "step_huge":
    set_i64("step", 1 << 40)
elif case == "config_edited":
    cfg = m.attrs["config"].decode()
    m.attrs["config"] = np.bytes_(cfg.replace("seed: ", "seed: 1"))
elif case == "bias_nan":
    d = m["select_bias"]; d[0, 0] = np.nan
f.close()
PY
  # By path: exit 2, the message names the file.
  "$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=6 --resume "$ck/step_4.h5" > "$tmp/path.$case.log" 2>&1
  rc=$?
  if [[ $rc -ne 2 ]] || ! grep -q "step_4.h5" "$tmp/path.$case.log"; then
    echo "FAIL [$case]: --resume PATH exited $rc (want 2 naming step_4.h5)"; tail -5 "$tmp/path.$case.log"; fail=1
  fi
  # auto: skipped with a warning, resumed from step_2.h5.
  "$MOE_TRAIN" "$tmp/tiny.yaml" --set train.steps=2 --resume auto > "$tmp/auto.$case.log" 2>&1
  rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q "skipping checkpoint .*step_4.h5" "$tmp/auto.$case.log" ||
     ! grep -q "resumed from .*step_2.h5 at step 2" "$tmp/auto.$case.log"; then
    echo "FAIL [$case]: --resume auto exited $rc without skipping step_4.h5 for step_2.h5"; tail -5 "$tmp/auto.$case.log"; fail=1
  else
    echo "ok [$case]: $(grep -o 'skipping checkpoint .*' "$tmp/auto.$case.log" | sed "s|$ck/||" | cut -c1-150)"
  fi
done
(( fail == 0 )) || exit 1
echo PASS
