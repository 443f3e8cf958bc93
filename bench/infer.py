"""Benchmark of batch inference: do decoding and the model overlap?

    python bench/infer.py [--clips-per-class 9] [--duration 3] [--device auto|cpu|cuda]
        [--workers N] [--batch-size 16] [--config configs/demo.yaml] [--quantize int8] [key=value ...]

Generates MELD-like clips (1280x720, H.264/AAC, ``--duration`` seconds; the test split of
``pipeline.sample``, whose CSV gives the transcripts), builds the model of the config
(``configs/demo.yaml`` when it exists, else the defaults: the packaged MiniLM, VGGish,
ResNet-18; untrained, as speed does not depend on the weights) and saves it as a checkpoint
the way training does. Then, with one warm pool of decoding workers, it measures

- decoding alone: ``extract_features`` of every clip through the workers, nothing else;
- the model alone: batching, collating and the forward pass over the pre-decoded clips;
- end to end: ``pipeline.infer.predict.run``, which overlaps the two;

and prints the seconds per clip of each stage, the end-to-end clips/s, and its ratio to
the slowest stage's rate (the target is >= 0.85: the pipeline runs at the pace of its
bottleneck), plus this process's CPU time per clip with and without overlap (equal when
overlapping adds no work, so that any wall-time gap comes from busy cores). On the CPU the cores are split as ``pipeline.infer`` splits them: ``--workers``
decode and the model gets the rest as torch threads, in every measurement.

With ``--quantize int8`` (CPU only) the same checkpoint also runs quantized as
``pipeline.infer --quantize int8`` runs it, in the same loop over the same decoded clips: the
model alone and end to end for both, their speed-up, and the size of each state dict.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # `python bench/x.py` puts bench/ first on sys.path, where bench/fusion.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # would shadow the fusion package

import argparse
import logging
import math
import os
import tempfile
import time
from typing import Sequence

import torch

from bench import common
from pipeline import sample
from pipeline.config import load_config, to_dict
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.execution import pick_device
from pipeline.infer import predict
from pipeline.infer.clips import list_clips
from pipeline.infer.decoding import DecodePool, batches, make_jobs
from pipeline.infer.transcripts import read_transcripts
from pipeline.model import build_model, make_checkpoint
from pipeline.quantization import model_bytes
from pipeline.train.distributed import save_on_main

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def save_checkpoint(config: str | None, overrides: Sequence[str], path: Path) -> dict:
    """An untrained model of the config saved in the training checkpoint format; returns it."""
    cfg = load_config(config, overrides)
    model = build_model(cfg, load_weights=False)  # nothing to download; weights do not change speed
    checkpoint = make_checkpoint(model, cfg, to_dict(cfg.preprocess), epoch=0, metrics=[])
    save_on_main(checkpoint, path)
    return checkpoint


def timed(function, *args) -> tuple[float, object]:
    """(wall seconds, result) of ``function(*args)``; the CPU seconds of this process go to CPU_SECONDS."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    CPU_SECONDS.append(time.process_time() - cpu)
    return time.perf_counter() - start, result


CPU_SECONDS: list[float] = []


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips-per-class", type=int, default=9,
                        help="sample.generate's setting; the test split gets a third of it per emotion")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default as pipeline.infer)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--config", default=str(DEMO_CONFIG) if DEMO_CONFIG.is_file() else None)
    parser.add_argument("--repeat", type=int, default=2, help="measure each stage this often, keep the fastest")
    parser.add_argument("--dir", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="also measure the model quantized this way, side by side (CPU only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    device = pick_device(args.device)
    workers = predict.default_workers(device) if args.workers is None else args.workers
    if device.type == "cpu":
        torch.set_num_threads(predict.model_threads(workers))
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as scratch:
        work = args.dir or Path(scratch)
        generate_s, _ = timed(lambda: sample.generate(
            work / "MELD.Raw", args.clips_per_class, splits=("test",), width=args.width, height=args.height,
            duration_range=(args.duration, args.duration), overwrite=True))
        clip_dir = work / "MELD.Raw" / CLIP_DIRS["test"]
        checkpoint = save_checkpoint(args.config, args.overrides, work / "bench.pt")
        context_turns = checkpoint["preprocess"]["text"]["context_turns"]
        transcripts = read_transcripts(work / "MELD.Raw" / CSV_NAMES["test"], context_turns)
        jobs = make_jobs(list_clips(str(clip_dir)), transcripts)
        predictor = predict.Predictor(checkpoint, device)
        variants = {"": predictor}
        if args.quantize:
            variants[f" ({args.quantize})"] = predict.Predictor(checkpoint, device, args.quantize)
        lookahead = predict.default_lookahead(args.batch_size, workers)
        times = {"decoding": math.inf, **{f"{stage}{name}": math.inf for name in variants
                                          for stage in ("model", "end_to_end")}}
        main_cpu = {stage: math.inf for stage in times if stage != "decoding"}  # CPU seconds of this process
        with DecodePool(predictor.preprocess, workers, lookahead).start() as pool:
            warm = [item for item, _ in pool.imap(jobs[: max(1, workers)])]  # workers up, tokenizers loaded
            for variant in variants.values():
                variant.rows(warm)  # first-call costs (allocations, kernel selection) paid here
            for _ in range(args.repeat):  # interleaved, so each stage sees the same machine load
                seconds, decoded = timed(lambda: [item for item, _ in pool.imap(jobs)])
                times["decoding"] = min(times["decoding"], seconds)
                groups = list(batches(((item, True) for item in decoded), args.batch_size))  # full batches
                for name, variant in variants.items():
                    seconds, _ = timed(lambda: [variant.rows(group) for group in groups])
                    times[f"model{name}"] = min(times[f"model{name}"], seconds)
                    main_cpu[f"model{name}"] = min(main_cpu[f"model{name}"], CPU_SECONDS[-1])
                    seconds, summary = timed(predict.run, variant, jobs, pool, work / "predictions.jsonl",
                                             args.batch_size)
                    times[f"end_to_end{name}"] = min(times[f"end_to_end{name}"], seconds)
                    main_cpu[f"end_to_end{name}"] = min(main_cpu[f"end_to_end{name}"], CPU_SECONDS[-1])

    n = len(jobs)
    rates = {stage: n / seconds for stage, seconds in times.items()}
    slowest = min(("decoding", "model"), key=rates.get)
    result = {"clips": n, "ok": summary["ok"], "device": str(device), "workers": workers,
              "model_threads": torch.get_num_threads() if device.type == "cpu" else None,
              "decode_s_per_clip": times["decoding"] / n, "model_s_per_clip": times["model"] / n,
              "end_to_end_clips_per_s": rates["end_to_end"], "slowest_stage": slowest,
              "ratio": rates["end_to_end"] / rates[slowest],
              "main_cpu_s_per_clip": {stage: seconds / n for stage, seconds in main_cpu.items()}}
    print(f"{n} clips {args.width}x{args.height}, {args.duration:g} s (generated in {generate_s:.1f} s); device "
          f"{device}; {workers} decoding workers"
          + (f", model on {result['model_threads']} torch threads" if device.type == "cpu" else "")
          + f"; batch {args.batch_size}; best of {args.repeat}")
    for stage, label in (("decoding", "decoding alone"), ("model", "model alone"), ("end_to_end", "end to end")):
        print(f"  {label:<15}: {times[stage] / n * 1000:8.1f} ms/clip  ({rates[stage]:.2f} clips/s)")
    print(f"  end to end / slowest stage ({slowest}): {result['ratio']:.2f}  (target >= 0.85)")
    # Equal CPU per clip in this process means overlapping adds no work; a wall-time gap is
    # then cores taken by the workers or by other programs (see the load average).
    print(f"  this process's CPU: {main_cpu['model'] / n * 1000:.1f} ms/clip model alone, "
          f"{main_cpu['end_to_end'] / n * 1000:.1f} ms/clip end to end; load average "
          f"{os.getloadavg()[0]:.1f} on {predict.available_cores()} cores")
    if args.quantize:
        name = f" ({args.quantize})"
        for stage, label in (("model", "model alone"), ("end_to_end", "end to end")):
            print(f"  {label + name:<15}: {times[stage + name] / n * 1000:8.1f} ms/clip  "
                  f"({n / times[stage + name]:.2f} clips/s, {times[stage] / times[stage + name]:.2f}x float32)")
        sizes = {label: model_bytes(variant.model) / 1e6 for label, variant in (("float32", predictor),
                                                                                 (args.quantize, variants[name]))}
        print("  model size: " + ", ".join(f"{label} {mb:.1f} MB" for label, mb in sizes.items()))
        result["quantized"] = {"scheme": args.quantize, "model_s_per_clip": times["model" + name] / n,
                               "end_to_end_clips_per_s": n / times["end_to_end" + name], "size_mb": sizes}
    print(f"  {common.peak_memory(device)}")
    return result


if __name__ == "__main__":
    main()
