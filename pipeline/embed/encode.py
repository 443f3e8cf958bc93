"""Embedding pass: ``python -m pipeline.embed``: each encoder runs once over every cached item.

    python -m pipeline.embed --config X.yaml [key=value ...] --cache CACHE --out EMB
    python -m pipeline.embed --checkpoint RUN/best.pt --cache CACHE --out EMB
        [--splits train,dev,test] [--batch-size 64] [--device auto|cpu|cuda:N] [--dtype float16|float32]

``--config``: the model's encoders as the config builds them (frozen pretrained encoders:
e.g. the packaged MiniLM or a fetched all-mpnet-base-v2); ``--checkpoint``: the encoders of a
trained model (the two-stage recipe: fine-tune, embed, then train a dialogue model on the
vectors). Writes ``EMB/<split>/`` as :mod:`pipeline.embeddings` describes: pooled vectors per
modality (float16 [N, D], memory-mappable), masks, ids and ``meta.json``. An interrupted run
resumes where it stopped; a folder made by other encoders or from another cache is refused
with the differing keys. Then train on the vectors with ``data.embeddings_dir=EMB``.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from encoders.text import ModelNotFoundError
from encoders.weights import WeightsError
from pipeline.cache import CacheMismatchError, CacheSplit, read_json, write_json
from pipeline.config import Config, ConfigError, config_from_dict, load_config, to_dict
from pipeline.data import MeldDataset, collate
from pipeline.distributed import pick_device, setup_cli_logging
from pipeline.embeddings import FORMAT, VERSION, check_key, embedding_key
from pipeline.execution import to_device
from pipeline.model import CheckpointError, MultimodalModel, build_model, load_checkpoint

log = logging.getLogger(__name__)

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
    return cfg, build_model(cfg).eval(), {"config": str(Path(args.config).resolve()) if args.config else None,
                                          "overrides": list(args.overrides), "preprocess": to_dict(cfg.preprocess)}


@torch.inference_mode()
def embed_split(model: MultimodalModel, sections: Mapping[str, Any], source: Mapping[str, Any], cache: CacheSplit,
                out_dir: Path, batch_size: int, device: torch.device, dtype: str) -> str:
    """Write the vectors of every record of ``cache`` into ``out_dir``; returns what was done
    (``made``, ``resumed`` or ``up to date``)."""
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
    if progress_path.is_file() and all(path.is_file() for path in partial.values()):
        progress = read_json(progress_path)
        check_key(out_dir, progress, key)
        if progress.get("dtype") != dtype:
            raise CacheMismatchError(f"{out_dir}: an interrupted pass wrote {progress.get('dtype')} vectors, this one "
                                     f"asks for {dtype}; use --dtype {progress.get('dtype')} or another --out")
        done, state = int(progress["done"]), "resumed"
    out_dir.mkdir(parents=True, exist_ok=True)
    mode = "r+" if done else "w+"
    vectors = {m: np.lib.format.open_memmap(partial[m], mode=mode, dtype=DTYPES[dtype], shape=(count, dims[m]))
               for m in dims}
    masks = {m: np.lib.format.open_memmap(partial[f"{m}_mask"], mode=mode, dtype=np.bool_, shape=(count,))
             for m in dims}
    progress = {"format": FORMAT, "version": VERSION, "key": key, "dtype": dtype, "done": done}
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
            pooled = encoder(batch[m])["pooled"].float() * mask[:, None]
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
                           "source": dict(source), "dims": dims, "dtype": dtype, "count": count})
    progress_path.unlink()
    return state


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML whose model encoders embed (frozen pretrained encoders)")
    source.add_argument("--checkpoint", type=Path, help="best.pt / last.pt whose trained encoders embed")
    parser.add_argument("--cache", required=True, type=Path, help="feature cache folder (holding <split>/)")
    parser.add_argument("--out", required=True, type=Path, help="embeddings folder (gets <split>/)")
    parser.add_argument("--splits", default="", help="comma-separated (default: the config's train, val and "
                                                     "test splits that the cache has)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.checkpoint is not None and args.overrides:
        parser.error("key=value overrides apply to --config only; a checkpoint's config is what it was trained with")
    if args.out.resolve() == args.cache.resolve():
        parser.error("--out must not be the feature cache folder itself")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    setup_cli_logging()
    args = parse_args(argv)
    try:
        cfg, model, source = load_source(args)
        splits = ([s for s in args.splits.split(",") if s] if args.splits else
                  [s for s in (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split)
                   if s and (args.cache / s / "meta.json").is_file()])
        if not splits:
            raise FileNotFoundError(f"{args.cache} holds no split of the config ({cfg.data.train_split}, "
                                    f"{cfg.data.val_split}, {cfg.data.test_split}); pass --splits")
        device = pick_device(args.device)
        model.to(device)
        sections = {m: cfg.model.encoders[m] for m in model.encoders}
        for split in splits:
            if not (args.cache / split / "meta.json").is_file():
                raise FileNotFoundError(f"no feature cache for split {split!r} in {args.cache / split}")
            cache = CacheSplit(args.cache / split)
            cache.check_params(source["preprocess"])
            if not cache.complete:
                raise CacheMismatchError(f"the cache {cache.split_dir} is incomplete: finish preprocessing first")
            state = embed_split(model, sections, source, cache, args.out / split, args.batch_size, device, args.dtype)
            log.info("%s: %s (%d vectors) in %s", split, state, len(cache.records), args.out / split)
    except (CacheMismatchError, CheckpointError, ConfigError, FileNotFoundError, ModelNotFoundError,
            WeightsError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
