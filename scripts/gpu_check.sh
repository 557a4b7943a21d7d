#!/usr/bin/env bash
# The GPU checks in one call, on a machine whose Python has torch, numpy, scipy and pytest but
# neither nibabel nor the CT cases (the working tree is copied there; ../shared is not).
#
#   scripts/gpu_check.sh prepare [DATA]  here: build .gpu/ (git-ignored) with volume-0 of
#                                        DATA/lits (default ../shared/data) as an xz of the
#                                        plain .nii, and nibabel without its tests
#   scripts/gpu_check.sh run OUTDIR      there: the GPU tests (-m gpu), then the speed benchmark
#                                        (--device cuda --warm 3), whole ensemble and --fold 0;
#                                        logs in OUTDIR
#
# .gpu/ holds a copy of a shared case: it is ignored, never committed, and deleted after use.
# It is about 23 MB; with the tracked files (52 MB) that is over a 64 MiB transfer limit, so
# move the papers' models out of the tree for the call and back after (the check needs only
# livseg's): mv src/livseg/weights/{crunet_liver,densefcn_liver,densefcn_tumour} /tmp/
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in
prepare)
    data=${2:-../shared/data}
    grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/site
    gzip -dc "$data/lits/volume-0.nii.gz" | xz -6 -T2 >.gpu/volume-0.nii.xz
    nib=$(python3 -c 'import nibabel, os; print(os.path.dirname(nibabel.__file__))')
    cp -r "$nib" .gpu/site/
    find .gpu/site -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
    du -sh .gpu
    ;;
run)
    out=${2:?usage: scripts/gpu_check.sh run OUTDIR}
    mkdir -p "$out" .gpu/data/lits
    xz -dc .gpu/volume-0.nii.xz | gzip -1 >.gpu/data/lits/volume-0.nii.gz
    export PYTHONPATH="$PWD/.gpu/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    export LIVSEG_SHARED_DATA="$PWD/.gpu/data" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt" || true
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_device_prep.py tests/test_models.py \
        2>&1 | tee "$out/gpu-tests.log" || true
    ct=.gpu/data/lits/volume-0.nii.gz
    python3 benchmarks/segment_speed.py --inputs "$ct" --no-previous --device cuda --warm 3 \
        2>&1 | tee "$out/bench-cuda.log"
    python3 benchmarks/segment_speed.py --inputs "$ct" --no-previous --device cuda --warm 3 \
        --fold 0 2>&1 | tee "$out/bench-cuda-fold0.log"
    ;;
*)
    sed -n 2,15p "$0"
    exit 2
    ;;
esac
