#!/usr/bin/env bash
# One device call (< 10 min on one H100/H200; step timeouts sum to ~570 s), after scripts/gpu/prepare.sh:
#   1. retina-sr bench F64D10 at 3840x2160 and 1920x1080 output, zooms 2/4/8: eager fp32 vs the fast path
#      (bf16 + channels_last + torch.compile/CUDA graphs, 64-px buckets), compiles counted, max abs vs fp32;
#      1b. the direct LR head F32 D5 (model.direct) at 3840x2160 x4;
#   2. retina-sr bench-train: steps/s per phase for the full study's F64 D10 (batch 64), degradation on the
#      host vs on the GPU, and train.loop.compile;
#   3. the bundled-model recipe trained on the GPU (scripts/gpu/train_bundle.py, STEPS steps);
#   4. the digital zoom window of the bundled model on 4K frames: compiles per bucket, latency p50/p99;
#   5. a 3840x2160-output video (x4) through decode -> infer -> encode: FPS, latency p50/p99;
#   6. the CUDA-only tests.
# usage (repo root, on the device): bash scripts/gpu_bench.sh   (carry .gpu; files land in $OUT: at most 8)
#        local dry run: DEV=cpu SMOKE=1 PY=.venv/bin/python bash scripts/gpu_bench.sh
set -uo pipefail
O="${OUT:-/tmp/gpu_out}"; mkdir -p "$O"
DEV="${DEV:-cuda}"; PY="${PY:-python3}"; S="${SMOKE:-0}"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
if [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
exec > >(tee "$O/log.txt") 2>&1
T0=$SECONDS; stamp() { echo "== [$((SECONDS - T0)) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null; nproc
$PY -c "import torch, pydantic, av, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pydantic', pydantic.VERSION, 'av', av.__version__, 'cv2', cv2.__version__)"
RSR=($PY -m retina_sr.cli)
if [ "$S" = 1 ]; then SZ=480x270; ZM=2,4; REP=2; TS=4; BT=8; STEPS=16; else SZ=3840x2160,1920x1080; ZM=2,4,8; REP=10; TS=20; BT=64; STEPS=${STEPS:-7000}; fi

stamp "1. bench F64D10 end to end (eager fp32 vs fast path)"
timeout 100 "${RSR[@]}" bench --arch F64D10 --sizes $SZ --zooms $ZM --repeats $REP --device $DEV --no-baselines \
  --json "$O/bench.json"

stamp "1b. bench the direct LR head F32 D5 (every zoom from the input grid) at 4K x4, fast path"
timeout 30 "${RSR[@]}" bench --arch lrhead-direct:F32D5 --sizes ${SZ%%,*} --zooms 4 --repeats $REP --device $DEV \
  --no-baselines --json "$O/bench_direct.json"

stamp "2. bench-train: steps/s per phase, host vs device degradation, compile"
{ timeout 50 "${RSR[@]}" bench-train --sizes full --steps $TS --device $DEV --batch $BT --crop 128 --degrade-on host,device
  timeout 90 "${RSR[@]}" bench-train --sizes full --steps $TS --device $DEV --batch $BT --crop 128 \
    --degrade-on device --compile on --no-perceptual
} 2>&1 | tee "$O/bench_train.txt"

stamp "3. GPU training of the bundle recipe ($STEPS steps; the v3 recipe ran ~53 steps/s on an H200)"
timeout 180 $PY scripts/gpu/train_bundle.py "$O" $STEPS $DEV

stamp "4. zoom window (bundled model): compiles per bucket, latency"
timeout 60 $PY scripts/gpu/window.py "$O" $DEV  # the warm-up compiles 3 buckets: 31 s on an H200

stamp "5. video x4 to 3840x2160 (bundled model): decode -> infer -> encode"
timeout 35 $PY scripts/gpu/video.py "$O" $DEV bundled

stamp "6. CUDA tests"
timeout 25 $PY -m pytest -q -p no:cacheprovider tests/test_inference_api.py tests/test_training_units.py -k "cuda or fused" 2>&1 | tail -5
stamp "done"
