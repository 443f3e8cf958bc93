#!/usr/bin/env bash
# The whole pipeline on generated MELD-shaped data, offline, on CPU:
# sample data -> preprocess -> train -> batch inference -> metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-demo}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
source scripts/python.sh

"$PYTHON" -m pipeline.sample "$DIR/MELD.Raw" --clips-per-class 24 --seed 0 --workers 2 --overwrite
bash scripts/preprocess_meld.sh "$DIR/MELD.Raw" "$DIR/cache" --workers 2 --config configs/demo.yaml
"$PYTHON" -m pipeline.train --config configs/demo.yaml data.cache_dir="$DIR/cache" output_dir="$DIR/run" train.overwrite=true
"$PYTHON" -m pipeline.infer --checkpoint "$DIR/run/best.pt" \
    --clips "$DIR/MELD.Raw/output_repeated_splits_test" \
    --transcripts "$DIR/MELD.Raw/test_sent_emo.csv" --out "$DIR/predictions.jsonl"
echo "Demo outputs: $DIR/run (metrics.json, confusion_matrix.png, curves.png) and $DIR/predictions.jsonl"
