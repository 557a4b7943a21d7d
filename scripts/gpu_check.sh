#!/usr/bin/env bash
# The GPU checks in one call, on a machine whose Python has torch, numpy, scipy, matplotlib,
# safetensors and pytest but neither nibabel, pydicom, SimpleITK, isal nor the CT cases (the
# working tree is copied there; ../shared is not). Rehearsed on the CPU with those four modules
# hidden and cuda replaced by cpu: every step ran.
#
#   scripts/gpu_check.sh prepare [DATA]  here: build .gpu/ (git-ignored) with volume-0 of
#                                        DATA/lits (default ../shared/data) as an xz of the
#                                        plain .nii, and nibabel without its tests
#   scripts/gpu_check.sh run OUTDIR      there: the GPU tests (-m gpu), the speed benchmark
#                                        (--device cuda --warm 3), whole ensemble and --fold 0,
#                                        and a profile of three warm cases; logs in OUTDIR
#
# .gpu/ holds a copy of a shared case: it is ignored, never committed, and deleted after use.
# It is about 23 MB; with the tracked files (52 MB) that is over a 64 MiB transfer limit, so
# move the papers' models out of the tree for the call and back after (the check needs only
# livseg's; prepare prints both sizes): mv src/livseg/weights/{crunet_liver,densefcn_liver,densefcn_tumour} /tmp/
# Then one device call: command "bash scripts/gpu_check.sh run $OUT", carry [".gpu"], a
# timeout of about 500 s (it needs about 3 minutes on the CPU rehearsal's scale of work).
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
    papers="src/livseg/weights/crunet_liver src/livseg/weights/densefcn_liver src/livseg/weights/densefcn_tumour"
    tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    moved=$(du -cb $papers | tail -1 | cut -f1)
    gpu=$(du -sb .gpu | cut -f1)
    echo "travels: $(((tracked + gpu) >> 20)) MiB, $(((tracked + gpu - moved) >> 20)) MiB with the papers' models moved out (limit 64)"
    ;;
run)
    out=${2:?usage: scripts/gpu_check.sh run OUTDIR}
    mkdir -p "$out" .gpu/data/lits
    python3 -c 'import gzip, lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, gzip.open(sys.argv[2], "wb", compresslevel=1) as dst:
    shutil.copyfileobj(src, dst, 1 << 22)' .gpu/volume-0.nii.xz .gpu/data/lits/volume-0.nii.gz
    export PYTHONPATH="$PWD/.gpu/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    export LIVSEG_SHARED_DATA="$PWD/.gpu/data" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt" || true
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_device_prep.py tests/test_models.py \
        2>&1 | tee "$out/gpu-tests.log" || true
    ct=.gpu/data/lits/volume-0.nii.gz
    python3 benchmarks/segment_speed.py --inputs "$ct" --no-previous --device cuda --warm 3 \
        2>&1 | tee "$out/bench-cuda.log" || true
    python3 benchmarks/segment_speed.py --inputs "$ct" --no-previous --device cuda --warm 3 \
        --fold 0 2>&1 | tee "$out/bench-cuda-fold0.log" || true
    (cd benchmarks && python3 profile_segment.py "../$ct" --device cuda --repeat 3 --top 45) \
        2>&1 | tee "$out/profile-cuda.log"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
