#!/bin/bash
# The GPU figures of docs/performance.md, in one go: run from the repository root on a machine
# with one CUDA GPU (about 6 minutes on an H100 with torch 2.11; no downloads). Each command is
# printed before its output and stopped after its time limit, so the whole run stays bounded.
# torch.compile's first-call times are for a cold inductor cache (a fresh machine); a second
# run on the same machine reuses compiled kernels and reports less.
#
#     bash bench/gpu_figures.sh 2>&1 | tee gpu-figures.txt
#
# Set PYTHON to choose the interpreter (default: python3).

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

run() {  # run LIMIT_SECONDS SCRIPT ARGS...
    local limit=$1
    shift
    echo "\$ python $*"
    local start=$SECONDS
    timeout "$limit" "$PY" -W ignore "$@" || echo "(exit status $?; 124 = stopped after $limit s)"
    echo "($((SECONDS - start)) s)"
    echo
}

nvidia-smi -L
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
echo

# Fast paths on EDM's CIFAR-10 DDPM++ (random weights), batch 256, 18 Heun steps; the batch-split
# check of the two compiled paths recompiles for the second batch size (~1 min each).
run 260 bench/bench_fastpaths.py --device=cuda --net=cifar10 --batch=256 --steps=18 --repeat=1 --split=2 --split-compiled
# Sampler overhead at a GPU batch size.
run 50 bench/bench_sampler.py --device=cuda --net=cifar10 --batch=256 --steps=18 --repeat=1 --variants='heun,heun TS'
# generate.py end to end against the sampler alone.
run 40 bench/bench_generate.py --device=cuda --net=cifar10 --batches=256 --images=512 --steps=18 --repeat=1
# fid.py's feature pass with an Inception-v3-shaped detector (random weights; needs torchvision).
run 75 bench/bench_fid.py --device=cuda --detector=inception-shaped --images=10000 --batch=250 --workers=0,3 --repeat=1
# Time-shift search, windowed against the whole grid.
run 20 bench/bench_time_shift.py --device=cuda --batches=512,4096
