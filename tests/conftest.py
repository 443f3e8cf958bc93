"""Fixtures shared across the test tree.

Under pytest-xdist (``make test`` runs ``pytest -n auto``) each worker is a process of its own:
its torch gets its share of the cores (oversubscribed, torch is many times slower), and the
expensive session fixtures (tiny models, the tiny MELD cache, the reliability suite's trained
run) are built once, by whichever worker asks first, and read by the others (:func:`shared_folder`).
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

# Results stay float32 on every machine, so that tests comparing them bit for bit hold on CPUs
# with AMX too (train.amp=auto would compute in bf16 there); tests of bf16 set it themselves.
os.environ.setdefault("MELD_FUSION_CPU_BF16", "0")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker's share of the cores (1 thread with 2 workers on 2 cores) for its own torch and,
    # through the environment, for the tools its tests start (torchrun, preprocessing workers).
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    WORKER_THREADS = max(1, _CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(WORKER_THREADS)
    import torch

    torch.set_num_threads(WORKER_THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the most ``slow`` tests first, each file's tests in their own order.

    Under ``--dist loadfile`` each pytest-xdist worker takes the next file as it finishes one:
    the longest files started first leave short ones for the end (longest processing time
    first), so that no worker runs a long file alone while the other idles. Alone, the order
    changes nothing but the order."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: number for number, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder that ``build(folder)`` fills, made once per test session.

    Alone (no xdist): a fresh ``tmp_path_factory.mktemp(name)``. Under xdist: ``<name>`` in the
    folder above the workers' base temps (the run's own base temp, removed at its end), built
    by the first worker to get here while the others wait on a file lock, then read by all. A
    build that fails leaves no ``.done`` mark, so the next worker builds it again (and fails the
    same way). Only for builds that any test may take (fixed seeds, or random weights no test
    depends on) and whose results no test writes into: all workers read the same folder."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # what a failed build left
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
              "i", "am", "so", "happy", "very", "glad", "the", "train", "leaves", "at", "noon", "."]


def save_tiny_text_model(folder: Path, architecture: str = "bert") -> Path:
    """Write a tiny random Hugging Face encoder (hidden 32, 2 layers, 2 heads) and a WordPiece
    tokenizer over :data:`TINY_VOCAB` into ``folder``; usable as ``model: <folder>``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, DistilBertConfig, DistilBertModel

    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={token: i for i, token in enumerate(TINY_VOCAB)}).save_pretrained(folder)
    if architecture == "bert":
        model = BertModel(BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    else:  # DistilBERT: no pooler, layers under transformer.layer
        model = DistilBertModel(DistilBertConfig(vocab_size=len(TINY_VOCAB), dim=32, n_layers=2, n_heads=2,
                                                 hidden_dim=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    """Folder of a tiny random BERT with its tokenizer (see :func:`save_tiny_text_model`)."""
    return str(shared_folder(tmp_path_factory, "tiny_bert", save_tiny_text_model))


@pytest.fixture(scope="session")
def tiny_distilbert_model(tmp_path_factory) -> str:
    """Folder of a tiny random DistilBERT (no pooler) with the same tokenizer."""
    return str(shared_folder(tmp_path_factory, "tiny_distilbert",
                             partial(save_tiny_text_model, architecture="distilbert")))


def save_tiny_wav2vec2_model(folder: Path, feat_extract_norm: str = "layer") -> Path:
    """Write a tiny random wav2vec2 (hidden 16, 2 layers, a 2-layer feature encoder reading
    20 samples per frame, 10 samples apart) and its feature extractor into ``folder``.

    ``"layer"``: the large-model layout (layer norms, stable layer norm), trained with an
    attention mask; ``"group"``: the base-model layout (group norm), trained without one."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    with_mask = feat_extract_norm == "layer"
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                            feat_extract_norm=feat_extract_norm, do_stable_layer_norm=with_mask, vocab_size=8)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=with_mask).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_wav2vec2_model(tmp_path_factory) -> str:
    """Folder of a tiny random wav2vec2 that takes an attention mask (see :func:`save_tiny_wav2vec2_model`)."""
    return str(shared_folder(tmp_path_factory, "tiny_wav2vec2",
                             partial(save_tiny_wav2vec2_model, feat_extract_norm="layer")))


@pytest.fixture(scope="session")
def tiny_wav2vec2_group_model(tmp_path_factory) -> str:
    """Folder of a tiny random group-norm wav2vec2, trained without an attention mask."""
    return str(shared_folder(tmp_path_factory, "tiny_wav2vec2_group",
                             partial(save_tiny_wav2vec2_model, feat_extract_norm="group")))


# Preprocessing and model overrides that fit :func:`tiny_meld_cache` (tiny frames, short
# audio, 16 tokens) and keep every encoder tiny (VGGish with a few channels, ResNet-18
# without pretrained weights).
TINY_PREPROCESS = ["preprocess.text.max_length=16", "preprocess.audio.max_seconds=1.5",
                   "preprocess.video.size=32", "preprocess.video.num_frames=2"]
TINY_MODEL = ["model.encoders.audio.channels=[4,4,8,8,8,8]", "model.encoders.audio.fc_dims=[16]",
              "model.encoders.video.weights=none"]


@pytest.fixture(scope="session")
def tiny_meld_cache(tmp_path_factory, tiny_text_model) -> dict:
    """A feature cache of a generated MELD folder (all three splits, 2 clips per emotion in
    each, 1 s clips at 64x36, plus the unlabelled extras), preprocessed with tiny params.

    Returns ``{"cache_dir": str, "meld_root": str, "text_model": str, "overrides": [...],
    "preprocess_overrides": [...]}``: the ``key=value`` overrides (``data.cache_dir``,
    ``preprocess.*`` and tiny encoders) make any config read this cache with a tiny model;
    ``preprocess_overrides`` alone rebuild it (e.g. with other modalities) from ``meld_root``.
    """
    from pipeline import preprocess, sample

    preprocess_overrides = [f"preprocess.text.model={tiny_text_model}", *TINY_PREPROCESS]

    def build(root: Path) -> None:
        sample.generate(root / "MELD.Raw", clips_per_class=2, seed=0, width=64, height=36,
                        duration_range=(1.0, 1.0), workers=2)
        status = preprocess.main([str(root / "MELD.Raw"), str(root / "cache"), "--workers", "2",
                                  *preprocess_overrides])
        assert status == 0, "preprocessing the tiny MELD folder failed"

    root = shared_folder(tmp_path_factory, "tiny_meld", build)
    cache_dir = str(root / "cache")
    return {"cache_dir": cache_dir, "meld_root": str(root / "MELD.Raw"), "text_model": tiny_text_model,
            "overrides": [f"data.cache_dir={cache_dir}", *preprocess_overrides, *TINY_MODEL],
            "preprocess_overrides": preprocess_overrides}
