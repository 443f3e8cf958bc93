"""The embedding pass at work: the encoders of a config or checkpoint, run once over every
item of a cached split, their pooled vectors written (resumably) as
:mod:`pipeline.data.embeddings` describes. The command line is :mod:`pipeline.embed.cli`.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pipeline.config import Config, config_from_dict, load_config, to_dict
from pipeline.data.cache import CacheMismatchError, CacheSplit, read_json
from pipeline.data.cache_writer import write_json
from pipeline.data.dataset import MeldDataset, collate
from pipeline.data.embeddings import FORMAT, VERSION, check_key, embedding_key
from pipeline.execution import amp_dtype, autocast, to_device
from pipeline.model import MultimodalModel, build_model, check_text_length, load_checkpoint

DTYPES = {"float16": np.float16, "float32": np.float32}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source(args: argparse.Namespace) -> tuple[Config, MultimodalModel, dict[str, Any]]:
    """The resolved config, the model whose encoders embed, and the ``source`` entry of meta.json."""
    if args.checkpoint is not None:
        ckpt = load_checkpoint(args.checkpoint)
        cfg = config_from_dict(ckpt["config"])
        model = MultimodalModel.from_checkpoint(ckpt)
        path = args.checkpoint.resolve()
        return cfg, model, {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                            "preprocess": ckpt["preprocess"]}
    cfg = load_config(args.config, args.overrides)
    # Encoders without pretrained weights (VGGish or ResNet from scratch, a random Whisper)
    # start as training starts them, seeded with train.seed: a run on these vectors rebuilds
    # the same encoders and its weights-hash check passes.
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg).eval()
    check_text_length(cfg, model)
    return cfg, model, {"config": str(Path(args.config).resolve()) if args.config else None,
                                          "overrides": list(args.overrides), "preprocess": to_dict(cfg.preprocess)}


@torch.inference_mode()
def embed_split(model: MultimodalModel, sections: Mapping[str, Any], source: Mapping[str, Any], cache: CacheSplit,
                out_dir: Path, batch_size: int, device: torch.device, dtype: str, amp: str = "off") -> str:
    """Write the vectors of every record of ``cache`` into ``out_dir``, the encoders running
    under the autocast of ``amp`` (``auto``: bf16 where the device computes it natively, see
    pipeline.execution; ``off``: float32); returns what was done (``made``, ``resumed`` or
    ``up to date``)."""
    precision = amp_dtype(amp, device)
    computed = "float32" if precision is None else str(precision).removeprefix("torch.")
    encoders = dict(model.encoders)
    key = embedding_key(encoders, sections, cache)
    meta_path, progress_path = out_dir / "meta.json", out_dir / "progress.json"
    if meta_path.is_file():
        check_key(out_dir, read_json(meta_path), key)
        return "up to date"
    dims = {m: int(encoder.out_dim) for m, encoder in encoders.items()}
    count = len(cache.records)
    done, state = 0, "made"
    partial = {name: out_dir / f"{name}.npy.partial" for m in dims for name in (m, f"{m}_mask")}
    resumable = all(path.is_file() and not path.is_symlink() for path in partial.values())
    if progress_path.is_file() and resumable:
        progress = read_json(progress_path)
        check_key(out_dir, progress, key)
        if progress.get("dtype") != dtype:
            raise CacheMismatchError(f"{out_dir}: an interrupted pass wrote {progress.get('dtype')} vectors, this one "
                                     f"asks for {dtype}; use --dtype {progress.get('dtype')} or another --out")
        if progress.get("computed", "float32") != computed:
            raise CacheMismatchError(f"{out_dir}: an interrupted pass computed its vectors in "
                                     f"{progress.get('computed', 'float32')}, this one computes in {computed}; resume "
                                     "with the same --amp on the same kind of device, or use another --out")
        done, state = int(progress["done"]), "resumed"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not done:  # new files of this pass's own: whatever lies at their names (a planted link) goes
        for path in partial.values():
            path.unlink(missing_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    mode = "r+" if done else "w+"
    vectors = {m: np.lib.format.open_memmap(partial[m], mode=mode, dtype=DTYPES[dtype], shape=(count, dims[m]))
               for m in dims}
    masks = {m: np.lib.format.open_memmap(partial[f"{m}_mask"], mode=mode, dtype=np.bool_, shape=(count,))
             for m in dims}
    progress = {"format": FORMAT, "version": VERSION, "key": key, "dtype": dtype, "computed": computed, "done": done}
    write_json(progress_path, progress)
    dataset = MeldDataset(cache.split_dir, sorted(dims))
    loader = DataLoader(Subset(dataset, range(done, count)), batch_size=batch_size, collate_fn=collate)
    bar = tqdm(total=count, initial=done, desc=f"embed {cache.split_dir.name}", unit="utt", file=sys.stderr)
    row = done
    for batch in loader:
        batch = to_device(batch, device)
        size = len(batch["ids"])
        for m, encoder in encoders.items():
            mask = batch[m]["mask"]
            with autocast(device, precision):
                pooled = encoder(batch[m])["pooled"]
            pooled = pooled.float() * mask[:, None]
            vectors[m][row:row + size] = pooled.cpu().numpy().astype(DTYPES[dtype])
            masks[m][row:row + size] = mask.cpu().numpy()
        row += size
        for array in (*vectors.values(), *masks.values()):
            array.flush()
        write_json(progress_path, {**progress, "done": row})  # after the rows it counts are on disk
        bar.update(size)
    bar.close()
    del vectors, masks  # close the memory maps before renaming their files
    for name, path in partial.items():
        path.replace(out_dir / f"{name}.npy")
    write_json(out_dir / "ids.json", [record["id"] for record in cache.records])
    write_json(meta_path, {"format": FORMAT, "version": VERSION, "split": cache.split_dir.name, "key": key,
                           "source": dict(source), "dims": dims, "dtype": dtype, "computed": computed, "count": count})
    progress_path.unlink()
    return state
