#!/usr/bin/env bash
# The GPU recipe, for a machine with one GPU (bf16); its figures land in OUT_DIR.
#
#     bash bench/gpu.sh MELD_CSV_DIR OUT_DIR
#
# 1. meld_text.txt: all-mpnet-base-v2 fine-tuned fully with the dialogue in its input (2 earlier
#    and 2 later turns, the utterance between markers, pooling over its tokens, max length 128,
#    length-grouped batches, bf16 autocast) on MELD text, 2 epochs; dev weighted F1 of the best
#    epoch, the same best.pt once on test when MELD_CSV_DIR holds test_sent_emo.csv, and the time.
#    Needs the weights offline first: python -m pipeline.fetch all-mpnet-base-v2.
# 2. train_<config>.txt / infer_<config>.txt, for configs/default.yaml and
#    configs/multimodal_offline.yaml: training samples/s (bench/train.py) and inference clips/s
#    (bench/infer.py) on generated MELD-shaped clips, each with its peak GPU memory.
# figures.txt gathers the lines that hold the figures. The knobs below default to the real
# recipe; the test suite runs the same script on the CPU with tiny settings.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash bench/gpu.sh MELD_CSV_DIR OUT_DIR" >&2; exit 2; }
MELD=$1
OUT=$2
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
CONFIGS=${CONFIGS:-"configs/default.yaml configs/multimodal_offline.yaml"}
# extra arguments of each step (word-split): the test makes everything tiny through them
TEXT_ARGS=${TEXT_ARGS:-"--context-epochs 2"}
TRAIN_ARGS=${TRAIN_ARGS:-"--steps 20 --warmup 3"}
INFER_ARGS=${INFER_ARGS:-""}
mkdir -p "$OUT"
: > "$OUT/figures.txt"

step() {  # step NAME COMMAND...: the command's output in OUT/NAME.txt, its figures in figures.txt
    local name=$1; shift
    local started=$SECONDS
    echo "== $name: $*" | tee -a "$OUT/figures.txt" >&2
    if ! "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"; then
        tail -n 20 "$OUT/$name.log" >&2
        echo "bench/gpu.sh: step $name failed (its log: $OUT/$name.log)" >&2
        exit 1
    fi
    grep -E "samples/s|clips/s|peak (GPU|resident) memory|^\| |Test evaluations|Total wall time" "$OUT/$name.txt" \
        >> "$OUT/figures.txt" || true
    echo "   ($((SECONDS - started)) s)" >> "$OUT/figures.txt"
}

# shellcheck disable=SC2086
step meld_text "$PY" bench/meld_text.py --meld-csv-dir "$MELD" --work-dir "$OUT/work/meld_text" \
    --config configs/meld_mpnet.yaml --runs context --context-turns 2 --context-max-length 128 $TEXT_ARGS \
    preprocess.text.context_after=2 preprocess.text.target_marking=markers \
    model.encoders.text.pooling=target model.encoders.text.freeze_layers=0 \
    train.amp=bf16 train.encoder_lr=3e-5 data.group_by_length=true "train.device=$DEVICE"
for config in $CONFIGS; do
    name=$(basename "$config" .yaml)
    # shellcheck disable=SC2086
    step "train_$name" "$PY" bench/train.py --config "$config" --device "$DEVICE" $TRAIN_ARGS
    # shellcheck disable=SC2086
    step "infer_$name" "$PY" bench/infer.py --config "$config" --device "$DEVICE" --dir "$OUT/work/infer_$name" $INFER_ARGS
done
rm -rf "$OUT/work"
cat "$OUT/figures.txt"
