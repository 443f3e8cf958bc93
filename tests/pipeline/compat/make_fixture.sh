#!/usr/bin/env bash
# Makes tests/pipeline/compat/pre_move/: a feature cache, a best.pt and the predictions that
# the code of that day computes from them, through the command line alone (its commands are
# the same before and after the stage-folders move). The committed folder was made at commit
# b91b3a8, the last one with the flat pipeline/; test_pre_move_files.py checks that today's
# code reads both files and computes the same predictions.
#   bash tests/pipeline/compat/make_fixture.sh OUT_DIR   (from the repository root)
set -euo pipefail
OUT=$1
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Audio and video only (no tokenizer to carry along), tiny features, a tiny VGGish.
PRE=(preprocess.modalities=[audio,video] preprocess.audio.max_seconds=1.0 preprocess.audio.n_mels=32
     preprocess.video.size=16 preprocess.video.num_frames=1)
"$PY" -m pipeline.sample "$WORK/MELD.Raw" --clips-per-class 1 --eval-clips-per-class 1 --seed 0 \
    --width 64 --height 36 --duration-range 1,1 --workers 2 --splits train,dev
"$PY" -m pipeline.preprocess "$WORK/MELD.Raw" "$OUT/cache" --splits train,dev --workers 2 "${PRE[@]}"
"$PY" -m pipeline.train data.cache_dir="$OUT/cache" output_dir="$WORK/run" "${PRE[@]}" model.modalities=[audio] \
    model.encoders.audio.channels=[4,4,8,8,8,8] model.encoders.audio.fc_dims=[16] model.fusion.type=concat \
    model.head.hidden=16 data.test_split= \
    train.epochs=1 train.batch_size=4 train.device=cpu train.seed=0
cp "$WORK/run/best.pt" "$OUT/best.pt"
"$PY" -m pipeline.infer --checkpoint "$OUT/best.pt" --clips "$WORK/MELD.Raw/dev_splits_complete" \
    --transcripts "$WORK/MELD.Raw/dev_sent_emo.csv" --out "$OUT/predictions.jsonl" --device cpu --workers 1
