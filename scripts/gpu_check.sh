#!/usr/bin/env bash
# The GPU check of the tuning issue in one call on a GPU machine without internet
# (the project's lent NVIDIA H200: Python 3.12 with numpy, torch and pytest, no
# pyopencl): the kernel tests on the GPU's OpenCL, `moe-alexnet tune` for alexnet at
# batch 1, 8, 64 and 256, `bench` untuned and tuned, and PyTorch on the same weights.
#
#   here, once:   bash scripts/gpu_check.sh --fetch      (wheels into .whl/, git-ignored)
#   there:        bash scripts/gpu_check.sh OUT [TUNE_BUDGET_S]
#   then, if time is left (a second call, as one command may run 10 minutes at most):
#                 bash scripts/gpu_check.sh OUT TUNE_BUDGET_S shipped
#   tunes alexnet-moe and the shipped models (fashion-alexnet, fashion-moe) at fp32 and
#   fp16, batch 1 and 8, into the same database, and benches them tuned.
#                 bash scripts/gpu_check.sh OUT TUNE_BUDGET_S precisions
#   the precision issue's figures: alexnet's fp16 and int8 tuned at batch 64 and 256
#   (int8's tiled GEMM with dp4a is a candidate, not a default), then alexnet at fp32,
#   fp16 and int8, alexnet-moe (k=1) beside alexnet, and fashion-moe beside
#   fashion-alexnet, at batch 64 and 256.
#
# OUT receives log.txt, tune.json, bench-untuned.json, bench-tuned.json, torch.json and
# tuning/<device>.json (the database to commit under kernels/tuned/).
set -uo pipefail
cd "$(dirname "$0")/.."

# Everything `python -m service.commands.main` imports beyond numpy (the machine has
# numpy, torch and pytest only): checked in a Python 3.12 venv of numpy and pytest.
WHEELS="pyopencl==2026.1.4 pytools==2026.1.1 platformdirs==4.14.9 siphash24==1.9
attrs==26.1.0 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3
annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
python-dotenv==1.2.4 fastapi==0.165.0 fastapi-offline==1.7.7 starlette==1.10.0
annotated-doc==0.0.7 anyio==4.16.0 idna==3.20 sniffio==1.3.1 opentelemetry-api==1.45.2
uvicorn==0.55.0 click==8.5.1 h11==0.16.0 python-multipart==0.0.34 httptools==0.9.0
pillow==13.0.0 safetensors==0.8.0 tqdm==4.70.1 prometheus-client==0.26.0"

if [ "${1:-}" = "--fetch" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    # shellcheck disable=SC2086
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
fi

out=${1:?usage: gpu_check.sh OUT [TUNE_BUDGET_S] (or --fetch, here)}
budget=${2:-240}
mkdir -p "$out/tuning"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# The pyopencl wheel's ICD loader reads /etc/OpenCL/vendors; point it at NVIDIA's
# library where the image has no such file.
if ! ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1; then
    lib=$(ldconfig -p | awk '/libnvidia-opencl\.so/ {print $NF; exit}')
    mkdir -p /tmp/icd && echo "${lib:-libnvidia-opencl.so.1}" >/tmp/icd/nvidia.icd
    export OCL_ICD_VENDORS=/tmp/icd
fi
export MOE_DEVICE=${MOE_DEVICE:-nvidia:0} MOE_TUNING_DIR=$out/tuning
cli() { python3 -m service.commands.main "$@"; }
alexnet=(--model alexnet --random-weights --precision fp32 --batch 1,8,64,256)

data=()  # real test images where the machine has them (a mixture's routing)
[ -e /usr/share/datasets/fashion-mnist ] && data=(--dataset fashion-mnist)

if [ "${3:-}" = "precisions" ]; then
    {
        time cli tune --model alexnet --random-weights --precision fp16,int8 --batch 64,256 \
            --budget "$budget" --json >"$out/tune-precisions.json"
        cli bench --model alexnet --random-weights --precision fp32,fp16,int8 --batch 64,256 \
            --iterations 10 --rounds 3 --json >"$out/bench-precisions.json"
        cli bench --model alexnet,alexnet-moe --random-weights --k 1 --batch 64,256 \
            --iterations 10 --rounds 3 --json >"$out/bench-alexnet-moe.json"
        cli bench --model fashion-alexnet,fashion-moe --precision fp32,fp16,int8 --batch 64,256 \
            "${data[@]}" --iterations 10 --rounds 3 --json >"$out/bench-fashion.json"
        cat "$out/bench-precisions.json" "$out/bench-alexnet-moe.json" "$out/bench-fashion.json"
    } 2>&1 | tee "$out/log-precisions.txt"
    exit 0
fi

if [ "${3:-}" = "shipped" ]; then
    {
        time cli tune --model alexnet-moe --random-weights --precision fp32,fp16 --batch 1,8 \
            --budget "$budget" --json >"$out/tune-alexnet-moe.json"
        time cli tune --model fashion-alexnet,fashion-moe --precision fp32,fp16 --batch 1,8 \
            --budget "$budget" --json >"$out/tune-shipped.json"
        cli bench --model fashion-alexnet,fashion-moe --precision fp32,fp16 --batch 1,8 \
            "${data[@]}" --untuned --iterations 20 --rounds 3 --json >"$out/bench-shipped.json"
        cat "$out/bench-shipped.json"
    } 2>&1 | tee "$out/log-shipped.txt"
    exit 0
fi

{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv
    cli devices
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/kernels 2>&1 | tail -20
    time cli tune "${alexnet[@]}" --budget "$budget" --json >"$out/tune.json"
    MOE_TUNING=0 cli bench "${alexnet[@]}" --iterations 20 --rounds 3 --json >"$out/bench-untuned.json"
    cli bench "${alexnet[@]}" --iterations 20 --rounds 3 --json >"$out/bench-tuned.json"
    python3 scripts/torch_bench.py --model alexnet --random-weights --batch 1,8,64,256 \
        --device cuda --out "$out/torch.json"
    cat "$out/bench-untuned.json" "$out/bench-tuned.json"
} 2>&1 | tee "$out/log.txt"
