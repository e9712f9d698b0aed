#!/bin/bash
# Segmenter sweep (issue #36): lungs and infection, light and full decoder, infection with and
# without the lungs as input, SEEDS seeds each, all at once on one GPU; then the variant of each
# target with the best mean validation number is chosen (scripts/segment_sweep_pick.py) and
# its seed-0 run packed. Data: COVID-QU-Ex at .gpu/isd (Train/Val/Test); the offline encoder
# weights on PYTHONPATH from .gpu/site; smp as a wheel in .gpu/whl. Tried on the CPU with
# DEVICE=cpu EPOCHS=1 SIZE=64 SEEDS=0 W=/tmp/w OUT=/tmp/out (on 2 cores, also raise TLIM: six
# jobs decoding at once there take more than its default 400 s); never run on a GPU yet.
set -u
R=$(pwd)
EPOCHS=${EPOCHS:-40}; SIZE=${SIZE:-256}; DEVICE=${DEVICE:-cuda}; TLIM=${TLIM:-400}
BS=${BS:-16}; SEEDS=${SEEDS:-"0 1"}; EMA=${EMA:-0.99}  # the moving average chosen on validation
W=${W:-/tmp/segruns}; mkdir -p "$W" "$OUT"
SITE=""
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
  SITE=/tmp/site:
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$W/gpu.txt" 2>&1
fi
export PYTHONPATH=$R/.gpu/site:$SITE$R/src MPLBACKEND=Agg OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
{ python3 -c "import torch, timm, segmentation_models_pytorch as smp, cxrlab; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'smp', smp.__version__)"; lscpu | grep "Model name"; nproc; } > "$W/versions.txt" 2>&1
cat "$W/versions.txt"
if [ "$DEVICE" = cuda ]; then
  (timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$W/test_gpu.log" 2>&1; echo "test_gpu rc=$?" >> "$W/rc.txt") &
fi
job() {
  local name=$1; shift
  CXRLAB_CACHE=/tmp/cache-$name timeout "$TLIM" python3 -m cxrlab segment train \
    --data "$R/.gpu/isd" --image-size "$SIZE" --epochs "$EPOCHS" --batch-size "$BS" \
    --ema "$EMA" --device "$DEVICE" --threads 2 --no-progress --out "$W/$name" "$@" \
    > "$W/$name.log" 2>&1
  echo "$name rc=$?" >> "$W/rc.txt"
}
START=$(date +%s)
for s in $SEEDS; do
  for d in light full; do
    job "lungs-$d-none-s$s" --target lungs --decoder "$d" --seed "$s" &
    for c in none lungs; do
      job "inf-$d-$c-s$s" --target infection --decoder "$d" --context "$c" --seed "$s" &
    done
  done
done
wait
echo "all jobs done in $(( $(date +%s) - START )) s" | tee -a "$W/rc.txt"
python3 scripts/segment_sweep_pick.py "$W" "$OUT"
if [ "$DEVICE" = cuda ]; then
  timeout 90 python3 benchmarks/train_throughput.py --models resnet18,resnet34,vit_b_16 \
    --batch 128 > "$OUT/throughput.txt" 2>&1
fi
ls -la "$OUT"
