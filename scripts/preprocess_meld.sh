#!/usr/bin/env bash
# Preprocess raw MELD into the feature cache: a thin wrapper around `python -m pipeline.preprocess`.
set -euo pipefail

usage() {
    cat >&2 <<'USAGE'
usage: scripts/preprocess_meld.sh MELD_ROOT OUT_DIR [--splits train,dev,test] [--workers N]
                                  [--num-shards N --shard-id I] [--config YAML]
                                  [--csv-dir DIR] [--train-csv F] [--train-clips D] ...
                                  [key=value ...]
       scripts/preprocess_meld.sh --merge OUT_DIR

  MELD_ROOT   folder holding MELD.Raw's CSVs and clip folders (found up to 3 levels deep)
  OUT_DIR     cache folder; OUT_DIR/<split>/ gets meta.json, items/, status/, manifest.jsonl
  key=value   config overrides, e.g. preprocess.video.num_frames=4 preprocess.modalities=[text]

Resumable: run it again after a crash and it finishes the rest. Shards (e.g. a SLURM array:
--num-shards $SLURM_ARRAY_TASK_COUNT --shard-id $SLURM_ARRAY_TASK_ID) share OUT_DIR; the last
one to finish writes the manifests (or run --merge OUT_DIR). Full help: --help.
USAGE
}

if [[ $# -eq 0 ]]; then
    usage
    exit 2
fi
source "$(dirname "$0")/python.sh"
exec "$PYTHON" -m pipeline.preprocess "$@"
