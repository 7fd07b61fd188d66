#!/usr/bin/env bash
# How the built-in model (rain_core/assets/tiny-rain) was made: every training run of its three generations, from a
# clone (docs/training.md).
#
#   bash docs/training/builtin.sh STEP [extra flags for rain train / bench/quality.py]
#
# Run from the repository root with the project's .venv. Models go under $RUNS (default out/builtin, ignored by
# git). STEP:
#   first       the first built-in model (git 45de38a): stage 1 / 2 / 3 from random weights, 95 minutes on 2 cores
#   previous    the previous built-in model (git 4142b23): the first one with its 32x32, then its 16x16 motion
#               modules removed and fine-tuned (~40 minutes on one core); starts from git 45de38a's files
#   student     today's built-in model: the previous one's top level narrowed 48 -> 32 channels and distilled from
#               it (3,800 steps), then 3,500 steps on the stream's own predictions (~6 hours on one core); starts
#               from git 4142b23's files
#   quality M   model M against the built-in model of this checkout, 16 held-out clips x 48 frames (world v1)
#   validate M  the same on the validation clips 100-115
#
# The flags are those of NOTES.md at git 2e49d4d ("Training"). Not recorded there, and chosen here: the checkpoint
# interval of the rollout run the chain branches from at step 1,100 (100 here). Extra flags are appended to every
# command of the step (the last of a repeated flag wins), e.g. a smoke run: ... student --steps 2 --decay-steps 0
set -euo pipefail

RUNS="${RUNS:-out/builtin}"
RAIN="${RAIN:-.venv/bin/rain}"
PYTHON="${PYTHON:-.venv/bin/python}"
# the recipe before issue 18 (no noise offset, no min-SNR weighting, no weight decay, nothing frozen): all three
OLD="--noise-offset 0 --snr-gamma 0 --weight-decay 0 --no-freeze-image-encoder --no-freeze-reference-last-up"
COMMON="--data synthetic --height 64 --width 64 --threads 1 $OLD"
WINDOW="--levels 4 --frames-per-cohort 4 --batch-size 2"
QUALITY="--world v1 --clips 16 --frames 48 --drift-frames 0 --no-copy --jobs 2"

step="${1:?usage: bash docs/training/builtin.sh STEP [flags]  (the steps are listed at the top of this file)}"
shift

from_git() {  # from_git REV FOLDER: the built-in model's files at git revision REV
    mkdir -p "$2"
    git archive "$1" rain_core/assets/tiny-rain | tar -x -C "$2" --strip-components 3
}

case "$step" in
first)
    # the first model's sizes: today's tiny preset with motion modules on every level ((48, 64, 64), 4.0 M parameters)
    mkdir -p "$RUNS"
    git show 45de38a:rain_core/assets/tiny-rain/rain_config.json |
        "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["config"]))' >"$RUNS/first-sizes.json"
    C="$COMMON --seed 0 --log-every 20"
    # shellcheck disable=SC2086  # the flag strings split into words on purpose
    "$RAIN" train --stage 1 --output "$RUNS/tiny-s1" --model "$RUNS/first-sizes.json" --batch-size 8 --steps 4000 \
        --decay-steps 800 --lr 6e-4 --warmup-steps 100 --checkpoint-every 200 $C "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --stage 2 --output "$RUNS/tiny-s2" --init "$RUNS/tiny-s1/final" --train-parts all $WINDOW \
        --steps 240 --decay-steps 60 --lr 1e-4 --warmup-steps 20 $C "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --stage 3 --output "$RUNS/tiny-s3" --init "$RUNS/tiny-s2/final" $WINDOW \
        --steps 80 --decay-steps 20 --lr 5e-5 --warmup-steps 5 $C "$@"
    ;;
previous)
    from_git 45de38a "$RUNS/first"
    C="$COMMON --log-every 20"
    S2="--stage 2 --train-parts all $WINDOW --decay-steps 100 --lr 1e-4 --warmup-steps 20 $C"
    S3="--stage 3 $WINDOW --steps 80 --decay-steps 20 --lr 5e-5 --warmup-steps 5 $C"
    # shellcheck disable=SC2086
    "$RAIN" train --output "$RUNS/a-s2" --init "$RUNS/first" --motion-blocks 0,1,1 $S2 --steps 240 --decay-steps 60 \
        --seed 0 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --output "$RUNS/a2-s2" --init "$RUNS/a-s2/final" $S2 --steps 400 --seed 1 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --output "$RUNS/a2-s3" --init "$RUNS/a2-s2/final" $S3 --seed 1 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --output "$RUNS/c-s2" --init "$RUNS/a2-s3/final" --motion-blocks 0,0,1 $S2 --steps 400 --seed 2 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train --output "$RUNS/c-s3" --init "$RUNS/c-s2/final" $S3 --seed 2 "$@"
    ;;
student)
    from_git 4142b23 "$RUNS/previous"
    prev="$RUNS/previous"
    # distillation: the previous model's outputs are the targets (its stage 3 included). The run that made the
    # built-in model was planned as --steps 6000 --decay-steps 800 and stopped at step 3,800, where the rate was
    # still constant; until its anneal a run does not depend on --steps, so 3,800 steps without one are that run.
    # shellcheck disable=SC2086
    "$RAIN" train --stage 2 --output "$RUNS/w32c" --init "$prev" --distill "$prev" --top-width 32 --train-parts all \
        $WINDOW --steps 3800 --decay-steps 0 --lr 2e-4 --warmup-steps 20 --seed 3 $COMMON "$@"
    # on the stream's own predictions at the stream's w, each run from the one before (~3 s a step on one core)
    R="--stage 2 --train-parts all $WINDOW --warmup-steps 10 --rollout-ticks 3 --stream-guidance --lr 5e-5 $COMMON"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32ro" --init "$RUNS/w32c/final" --steps 300 \
        --decay-steps 100 --seed 10 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32ro2" --init "$RUNS/w32ro/final" --steps 500 --decay-steps 150 --seed 11 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32ro3" --init "$RUNS/w32ro2/final" --steps 1500 --decay-steps 300 --seed 13 \
        --checkpoint-every 100 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32sn" --init "$RUNS/w32ro3/checkpoints/step-001100/model" --steps 400 \
        --decay-steps 150 --seed 14 --snr-gamma 5 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32ro4a" --init "$RUNS/w32sn/final" --steps 600 --decay-steps 200 --seed 15 "$@"
    # shellcheck disable=SC2086
    "$RAIN" train $R --output "$RUNS/w32ro5c" --init "$RUNS/w32ro4a/final" --steps 600 --decay-steps 200 --lr 8e-5 \
        --seed 16 "$@"
    echo "the built-in model's recipe: $RUNS/w32ro5c/final"
    ;;
quality)
    model="${1:?quality needs a model folder}"
    # shellcheck disable=SC2086
    "$PYTHON" bench/quality.py --model "$model" --compare rain_core/assets/tiny-rain $QUALITY --json "" "${@:2}"
    ;;
validate)
    model="${1:?validate needs a model folder}"
    # shellcheck disable=SC2086
    "$PYTHON" bench/quality.py --model "$model" --compare rain_core/assets/tiny-rain $QUALITY --first-clip 100 \
        --json "" "${@:2}"
    ;;
*)
    echo "unknown step '$step': see the list at the top of docs/training/builtin.sh" >&2
    exit 2
    ;;
esac
