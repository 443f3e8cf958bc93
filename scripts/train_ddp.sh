#!/usr/bin/env bash
# Usage: scripts/train_ddp.sh N --config configs/X.yaml [key=value ...]   (N processes, one per GPU)
set -euo pipefail
N="${1:?usage: scripts/train_ddp.sh N --config configs/X.yaml [key=value ...]}"; shift
source "$(dirname "$0")/python.sh"
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$N" -m pipeline.train "$@"
