#!/usr/bin/env bash
# docs/RESULTS.md's "ImageNet hosts" table: EfficientNet-Lite1/Lite2 hosts at IPC 1 and 10 (64 px,
# real init, 100 steps, one golden view), each evaluated through A, Lite0 and the edge CNN
# (examples/cross_matrix.py: CI and normal, 2 seeds), then packed with --int8 for A and for Lite0
# and deploy-checked (fp32 and int8) on the 1,000 embedded test digits; and the host-vit runs
# (RUNS_VIT, made as in docs/RESULTS.md's first cross table) on the device path, A and Lite0 @ 96.
# Existing runs and matrix cells are reused. About 40 min on 2 CPU cores from an empty cache.
#
#   bash bench/cross_device.sh            # writes bench/results/cross/ and bench/results/cross/int8/
set -u
cd "$(dirname "$0")/.."
E=${EDGEDD:-.venv/bin/edgedd}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs/cross}
RUNS_VIT=${RUNS_VIT:-runs/x12}   # vit_real_ipc1, vit_real_ipc10 (skipped when absent)
C=bench/results/cross
TEST=${TEST:-$RUNS/mnist_test}
mkdir -p $C/int8
[ -d "$TEST/0" ] || $E export-data embedded:mnist/test "$TEST"

device() {  # RUN EDGE "RES-FLAGS" TAG: pack --int8 (default gate), deploy-check fp32 and int8
  local b=$RUNS/bundle_$4
  $E pack "$1" -o "$b" --edge-backbone "$2" $3 --int8 --overwrite --json > $C/int8/pack_$4.json || return
  $E deploy-check "$b" --data "$TEST" --json > $C/int8/dc_$4.json
  $E deploy-check "$b" --int8 --data "$TEST" --json > $C/int8/dc8_$4.json
}

for L in lite1 lite2; do
  for IPC in 1 10; do
    R=$RUNS/${L}_real_ipc$IPC
    [ -f $R/summary.json ] || $E distill embedded:mnist -b edgedd/efficientnet-$L --crop-res 64 --ipc $IPC --iterations 100 \
      --golden-views 1 -o $R
    $PY examples/cross_matrix.py $R --eval edgedd/efficientnet-$L@64 --eval edgedd/efficientnet-lite0@64 --eval edgedd/edge-cnn \
      --out $C > $C/${L}_ipc${IPC}_rows.md
    [ $IPC = 10 ] && $E evaluate $R --test-data embedded:mnist/test --mode ci --baselines --json > $C/${L}_real_ipc10__baselines.json  # B = A's full probe
    tag=$L; [ $IPC = 1 ] && tag=${L}_ipc1
    device $R edgedd/efficientnet-$L "--edge-crop-res 64" ${tag}_to_$L
    device $R edgedd/efficientnet-lite0 "--edge-crop-res 64" ${tag}_to_lite0
  done
done
# the demo's run (make demo; Lite0 host) through the edge CNN
if [ -f runs/demo/run/summary.json ]; then
  mkdir -p $RUNS/lite0_real_ipc10 && cp -r runs/demo/run/. $RUNS/lite0_real_ipc10/
  $PY examples/cross_matrix.py $RUNS/lite0_real_ipc10 --eval edgedd/edge-cnn --out $C > $C/lite0_ipc10_rows.md
fi
for IPC in 1 10; do
  R=$RUNS_VIT/vit_real_ipc$IPC
  [ -f $R/summary.json ] || continue
  device $R edgedd/host-vit "" vit_ipc${IPC}_to_host-vit
  device $R edgedd/efficientnet-lite0 "--edge-crop-res 96" vit_ipc${IPC}_to_efficientnet-lite0
done
# the int8 device fit, before and after (bench/RESULTS.md)
$PY bench/int8_device_fit.py $RUNS/bundle_*_to_* --json bench/results/int8_device_fit.json
