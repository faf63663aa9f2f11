#!/usr/bin/env bash
# The GPU check of issue 15, in one call of at most 8 minutes on the GPU machine (from the project's root):
#   bash ../shared/device/prepare.sh                                   # here, once: fills .device-carry/
#   run(command="bash .device-carry/on_device.sh bash benchmarks/gpu_check.sh", carry=[".device-carry"])
# It writes to $OUT: environment.json (torch, CUDA, numba.cuda and the rasterizer "auto" picks), cuda_tests.txt
# (`pytest -k cuda`), rendering.json, training_small.json, training_base.json (batch 128), demo.json and a log per
# step; a step that fails or runs out of its time is recorded in steps.txt and the others still run.
#
#   bash benchmarks/gpu_check.sh --quick      # every step at its smallest, on any machine (the CPU dry run)
#
# numba.cuda needs numba on the GPU machine (the compiled and CUDA rasterizers) and the CUDA toolkit's libNVVM to
# compile kernels; without them rasterizer="auto" falls back to the vectorised torch rasterizer, which
# environment.json and rendering.json ("cuda_rasterizer") record. Wheels of numba and llvmlite put in
# .device-carry/wheels (pip download numba==X llvmlite==Y --python-version 3.12 --only-binary=:all:
# --platform manylinux2014_x86_64 -d .device-carry/wheels) are installed by on_device.sh with the others.
set -uo pipefail
quick=0
[ "${1:-}" = "--quick" ] && quick=1
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
: > "$out/steps.txt"
started=$SECONDS
# 7 min 50 s on a GPU: the steps' own limits add up to this, and none may run past it; 3x on a CPU (--quick).
scale=1
[ $quick = 1 ] && scale=3
deadline=$((started + 470 * scale))

step() {  # step NAME SECONDS COMMAND...: COMMAND with a time limit (never past the deadline), its output in NAME.log
  local name=$1 limit=$(($2 * scale))
  shift 2
  local left=$((deadline - SECONDS)) begin=$SECONDS
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    echo "$name: skipped, no time left" | tee -a "$out/steps.txt"
    return
  fi
  timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status in $((SECONDS - begin)) s (limit $limit s)" | tee -a "$out/steps.txt"
  tail -n 3 "$out/$name.log"
}

# Every step at full size on a GPU; at its smallest, on the CPU, with --quick. The CPU rows of the rendering
# benchmark run with few repeats either way, and beside competing processes only in its default (full) run.
if [ $quick = 1 ]; then
  sizes=2,4 batch=4 devices=cpu small=tiny base=tiny demo_flag=--quick
else
  sizes=1,8,64,256 batch=128 devices=cuda small=small base=base demo_flag=
fi

step environment 20 python - <<'PY'
import json, os, torch
from modeling_facet import rasterization
info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "numba": getattr(rasterization.numba, "__version__", None),
        "cuda_kernels_available": rasterization.cuda_kernels_available(),
        "cuda_problem": rasterization._cuda_problem(),
        "rasterizer_auto_on_cuda": rasterization.resolve_method("auto", "cuda"),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
print(json.dumps(info, indent=2))
json.dump(info, open(os.path.join(os.environ.get("OUT", "/tmp/gpu_check"), "environment.json"), "w"), indent=2)
PY
# Collection errors (a test module whose imports the GPU machine lacks) must not stop the CUDA tests.
step cuda_tests 90 python -m pytest -q -p no:cacheprovider --continue-on-collection-errors tests -k cuda
cp "$out/cuda_tests.log" "$out/cuda_tests.txt"
step rendering 70 python -m benchmarks.bench_rendering --quick --skip-busy --gpu-batch-sizes "$sizes" \
  --output "$out/rendering.json"
# One preset per call, so that a slow one cannot take the other's result with it.
step training_small 50 python -m benchmarks.bench_training --quick --devices "$devices" --presets "$small" \
  --batch-size "$batch" --output "$out/training_small.json"
step training_base 80 python -m benchmarks.bench_training --quick --devices "$devices" --presets "$base" \
  --batch-size "$batch" --output "$out/training_base.json"
step demo 400 python -m benchmarks.bench_demo $demo_flag --output "$out/demo.json"  # the time left: 160 s or more
echo "gpu_check: $((SECONDS - started)) s in all; results in $out" | tee -a "$out/steps.txt"
