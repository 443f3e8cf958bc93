"""Loading the benchmark scripts of ``bench/`` (plain scripts, not a package) as modules."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def load_bench(name: str) -> ModuleType:
    """The module of ``bench/<name>.py``, imported under the name ``bench_<name>`` (with the
    repository root on ``sys.path``, as when run as a script, for ``bench.common``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def emotion_predictions(checkpoint: Path, split_dir: Path) -> tuple[list[int], list[int]]:
    """Emotion labels and the argmax predictions of ``checkpoint``'s model over a cached split,
    for checking a benchmark's figures against metrics recomputed from them."""
    import torch
    from torch.utils.data import DataLoader

    from pipeline.data.dataset import MeldDataset, collate
    from pipeline.model import MultimodalModel

    model = MultimodalModel.from_checkpoint(checkpoint)
    dataset = MeldDataset(split_dir, sorted(model.encoders))
    labels, predictions = [], []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=8, collate_fn=collate):
            labels += batch["labels"]["emotion"].tolist()
            predictions += model(batch)["emotion"].argmax(dim=1).tolist()
    return labels, predictions
