"""The on-disk feature cache (its layout, key and reader): written once by preprocessing
(:mod:`pipeline.data.cache_writer`), read at random by many workers.

Layout of ``OUT_DIR/<split>/``::

    meta.json        {"format", "version", "split", "preprocess": {...}, "key": sha256}
    ids.json         every id the split expects (CSV rows, then unlabelled clips), in order
    items/<id>.npz   the arrays of an ok sample (np.savez, no pickles): input_ids int32[L],
                     attention_mask int8[L], target_mask int8[L] (absent in caches made
                     before it), log_mel float32[T,n_mels], waveform int16[S]
                     (with audio.waveform), frames uint8[N,H,W,3] (only the present
                     modalities' arrays)
    status/<id>.json the manifest row of a finished id (ok or skipped, with its reason, and
                     the ``source`` preprocessing compares to redo an entry whose CSV row or
                     clip changed)
    manifest.jsonl   all manifest rows in ids.json order, written once every id has a status

Every file is written to a temporary name and renamed into place, and a sample's status is
written after its arrays, so a killed run never leaves a half-written entry that a reader
or a resumed run would take for a finished one. ``meta.json`` keys the cache by the
preprocessing parameters: a run or reader with other parameters is refused. Shards of one
run write into the same folder; whichever finishes last assembles ``manifest.jsonl``
(``cache_writer.merge_split``), and until then ``CacheSplit`` reads the status records. A manifest that
does not list every id of ids.json (cut short) is refused by readers and written again by
a rerun of preprocessing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Mapping

import numpy as np

from pipeline.config import flatten

FORMAT = "meld-feature-cache"
VERSION = 1


class CacheMismatchError(ValueError):
    """A cache this run cannot use: made with other preprocessing parameters (the message
    lists the differences), or found damaged when opened (the subclasses below)."""


class DamagedEntryError(ValueError):
    """A sample's arrays that cannot be read (the message names the file and how to rebuild it)."""


class UnusableEntryError(DamagedEntryError, CacheMismatchError):
    """An entry found damaged when a dataset is opened (``CacheSplit.check_entry``): a cache a
    run refuses before any work. (Found while a run reads it: a DamagedEntryError alone.)"""


class DamagedManifestError(CacheMismatchError):
    """A ``manifest.jsonl`` cut short or damaged (``problem`` says how; the message adds that
    rerunning preprocessing, which writes it again from the status records, repairs it)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{path}: {problem}. Rerunning preprocessing on this cache repairs it (python -m "
                         f"pipeline.preprocess MELD_ROOT {path.parent.parent} --splits {path.parent.name} with the "
                         "parameters that made it)")


# --------------------------------------------------------------------------- parameters
def params_key(preprocess: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the preprocessing parameters (and the cache format)."""
    canonical = json.dumps({"format": FORMAT, "version": VERSION, "preprocess": key_params(preprocess)},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def key_params(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters as the key reads them. A parameter added after caches were first made,
    at the value that reproduces those caches, is written as they wrote it: ``audio.waveform``
    false is left out, ``video.face_crop`` none / opencv is the boolean false / true it once
    was, ``text.context_after`` 0 with ``text.target_marking`` segment is left out. So a cache made before either existed keeps its key. Audio caches carry
    ``audio.downmix``: the log-mels of caches made before multichannel audio was downmixed
    to the mean of its channels (media.audio_output) differ, so those caches no longer match."""
    params = json.loads(json.dumps(preprocess))
    audio, video = params.get("audio"), params.get("video")
    if isinstance(audio, dict) and "audio" in params.get("modalities", ()):
        audio["downmix"] = "mean"
    if isinstance(audio, dict) and audio.get("waveform") is False:
        del audio["waveform"]
    if isinstance(video, dict) and video.get("face_crop") in ("none", "opencv"):
        video["face_crop"] = video["face_crop"] == "opencv"
    text = params.get("text")
    if isinstance(text, dict) and text.get("context_after") == 0 and text.get("target_marking") == "segment":
        del text["context_after"], text["target_marking"]
    return params


def param_differences(cached: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """One line "key: cache has X, wanted Y" per dotted key whose value differs."""
    old, new = flatten(key_params(cached)), flatten(key_params(wanted))

    def shown(flat: dict[str, Any], key: str) -> str:
        return repr(flat[key]) if key in flat else "(absent)"

    return [f"{key}: cache has {shown(old, key)}, wanted {shown(new, key)}"
            for key in sorted(set(old) | set(new))
            if key not in old or key not in new or old[key] != new[key]]


# --------------------------------------------------------------------------- reading
def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_meta(meta: Mapping[str, Any], preprocess: Mapping[str, Any], split_dir: Path) -> None:
    """Raise CacheMismatchError unless ``meta`` is this format with these parameters."""
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CacheMismatchError(f"{split_dir} holds format {meta.get('format')!r} version "
                                 f"{meta.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    if meta.get("key") != params_key(preprocess):
        differences = "\n  ".join(param_differences(meta.get("preprocess", {}), preprocess))
        raise CacheMismatchError(
            f"{split_dir} was made with other preprocessing parameters:\n  {differences}\n"
            "Either use the cache's parameters (the preprocess section of your config), or "
            "preprocess into another folder with the parameters you want.")


# Ids up to this many bytes name their entry files as they are; longer ones (a stray clip's
# 249-character name, a 300-digit Dialogue_ID) get a prefix and a hash, so that an entry's
# file names, with their temporary suffix, stay far below the 255 bytes a file name may have.
MAX_ENTRY_NAME = 150


def entry_name(id_: str) -> str:
    """The file name (without suffix) of sample ``id_``'s entry in ``items/`` and ``status/``."""
    if len(id_.encode("utf-8")) <= MAX_ENTRY_NAME and not id_.startswith(".") and "/" not in id_:
        return id_
    prefix = id_.encode("utf-8")[:64].decode("utf-8", "ignore").replace("/", "_").lstrip(".")
    return f"{prefix}~{hashlib.sha256(id_.encode('utf-8')).hexdigest()[:20]}"


def status_path(split_dir: str | Path, id_: str) -> Path:
    return Path(split_dir) / "status" / f"{entry_name(id_)}.json"


def item_path(split_dir: str | Path, id_: str) -> Path:
    return Path(split_dir) / "items" / f"{entry_name(id_)}.npz"


def done_ids(split_dir: str | Path) -> set[str]:
    """Entry names (:func:`entry_name`) that already have a status record (ok or skipped)."""
    return {name[:-5] for name in os.listdir(Path(split_dir) / "status") if name.endswith(".json")}


def read_manifest(split_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``manifest.jsonl``; DamagedManifestError when a line is not a whole row
    (a file cut in the middle of a line) or the rows are not those of ``ids.json`` in its
    order (a file cut at a line end, which would silently leave samples out)."""
    path = Path(split_dir) / "manifest.jsonl"
    rows = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DamagedManifestError(path, f"line {number} is cut short or damaged ({err.msg}, "
                                                 f"column {err.colno})") from None
            if not isinstance(row, dict) or not {"id", "status"} <= row.keys():
                raise DamagedManifestError(path, f"line {number} is not a manifest row")
            rows.append(row)
    ids_path = path.with_name("ids.json")
    if not ids_path.is_file():
        return rows
    ids = read_json(ids_path)
    if len(rows) != len(ids):
        problem = (f"the manifest of split {path.parent.name!r} lists {len(rows)} rows but the cache holds "
                   f"{len(ids)} ids ({ids_path.name})")
        if len(rows) < len(ids):
            problem += f": it is cut short, and reading it would silently leave out {len(ids) - len(rows)} entries"
        raise DamagedManifestError(path, problem)
    for number, (row, id_) in enumerate(zip(rows, ids), 1):
        if row["id"] != id_:
            raise DamagedManifestError(path, f"row {number} is {row['id']!r} where {ids_path.name} lists {id_!r}")
    return rows


def expected_arrays(preprocess: Mapping[str, Any], modalities: Collection[str]) -> dict[str, tuple[tuple, str]]:
    """The arrays an ok entry with these present modalities holds, as the layout above
    gives them: name -> (shape, a size or the name of a free length per dimension; dtype)."""
    arrays: dict[str, tuple[tuple, str]] = {}
    if "text" in modalities:
        arrays.update(input_ids=(("L",), "int32"), attention_mask=(("L",), "int8"))
    if "audio" in modalities:
        arrays["log_mel"] = (("T", preprocess["audio"]["n_mels"]), "float32")
        if preprocess["audio"].get("waveform"):
            arrays["waveform"] = (("S",), "int16")
    if "video" in modalities:
        video = preprocess["video"]
        arrays["frames"] = ((video["num_frames"], video["size"], video["size"], 3), "uint8")
    return arrays


def entry_bytes(preprocess: Mapping[str, Any], modalities: Collection[str]) -> tuple[int, int]:
    """(bytes every ok entry holds, bytes it may hold at most beyond them) for these
    parameters: text and frames have fixed sizes, audio grows with the clip up to
    ``max_seconds``."""
    audio = preprocess["audio"]
    frames = int(audio["max_seconds"] * 1000 / audio["hop_ms"]) + 1
    free = {"L": preprocess["text"]["max_length"], "T": frames,
            "S": int(audio["max_seconds"] * audio["sample_rate"])}
    fixed = variable = 0
    for shape, dtype in expected_arrays(preprocess, modalities).values():
        size = int(np.prod([free.get(dim, dim) for dim in shape])) * np.dtype(dtype).itemsize
        if any(dim in ("T", "S") for dim in shape):
            variable += size
        else:
            fixed += size
    return fixed, variable


class CacheSplit:
    """Read access to one split of the cache.

    ``meta``: the meta.json dict; ``rows``: every manifest row (ok and skipped), from
    ``manifest.jsonl`` or, before the last shard has finished, from the status records;
    ``records``: the rows with status "ok"; ``load(id)``: that sample's arrays.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        meta_path = self.split_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.split_dir} is not a feature cache (no meta.json); "
                                    "make one with scripts/preprocess_meld.sh")
        self.meta: dict[str, Any] = read_json(meta_path)
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise CacheMismatchError(f"{self.split_dir}: format {self.meta.get('format')!r} version "
                                     f"{self.meta.get('version')!r} is not {FORMAT!r} version {VERSION}")
        self.complete = (self.split_dir / "manifest.jsonl").is_file()
        self.rows: list[dict[str, Any]] = list(self.read_rows())
        self.records: list[dict[str, Any]] = [row for row in self.rows if row["status"] == "ok"]

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.meta["preprocess"]

    def read_rows(self) -> Iterable[dict[str, Any]]:
        if self.complete:
            yield from read_manifest(self.split_dir)
            return
        done = done_ids(self.split_dir)
        ids_path = self.split_dir / "ids.json"
        order = read_json(ids_path) if ids_path.is_file() else sorted(done)
        for id_ in order:
            if entry_name(id_) in done:
                yield read_json(status_path(self.split_dir, id_))

    def load(self, id_: str) -> dict[str, np.ndarray]:
        """The arrays of sample ``id_`` (only its present modalities'); DamagedEntryError, naming
        the file, when it is missing or damaged (np.load's own errors do not name it)."""
        with self.reading(id_) as path, np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    def shapes(self, id_: str) -> dict[str, tuple[int, ...]]:
        """The shape of each array of sample ``id_``, read from the .npy headers alone (a
        video sample's frames are not read); DamagedEntryError as for ``load``."""
        return {name: shape for name, (shape, _) in self.headers(id_).items()}

    def headers(self, id_: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of each array of sample ``id_`` from the .npy headers alone."""
        headers = {}
        with self.reading(id_) as path, zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as file:
                    version = np.lib.format.read_magic(file)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = header(file)
                    headers[member.removesuffix(".npy")] = (shape, dtype)
        return headers

    def check_entry(self, record: Mapping[str, Any], modalities: Collection[str]) -> dict[str, tuple[int, ...]]:
        """The array shapes of ok sample ``record`` once its arrays of ``modalities`` are those
        its manifest row and the cache's parameters promise (``expected_arrays``): present,
        with their rank, fixed sizes and dtype. Reads the headers alone; UnusableEntryError
        naming the file and the entry otherwise."""
        try:
            headers = self.headers(record["id"])
        except DamagedEntryError as err:
            raise UnusableEntryError(str(err)) from err.__cause__
        wanted = expected_arrays(self.preprocess, set(record["modalities"]) & set(modalities))
        problems = []
        for name, (shape, dtype) in wanted.items():
            if name not in headers:
                problems.append(f"no {name} array")
                continue
            got_shape, got_dtype = headers[name]
            if (len(got_shape) != len(shape) or got_dtype != np.dtype(dtype)
                    or any(isinstance(size, int) and size != got for size, got in zip(shape, got_shape))):
                problems.append(f"{name} is {got_dtype}{list(got_shape)}, expected {dtype}[{', '.join(map(str, shape))}]")
        if problems:
            path = item_path(self.split_dir, record["id"])
            raise UnusableEntryError(f"{path}: cache entry {record['id']} is damaged ({'; '.join(problems)}); "
                                     f"{self.rebuild_hint(record['id'])}")
        return {name: shape for name, (shape, _) in headers.items()}

    def rebuild_hint(self, id_: str) -> str:
        """What to do about a damaged entry ``id_``."""
        return (f"delete it and {status_path(self.split_dir, id_)}, then rerun preprocessing "
                "to rebuild it")

    @contextlib.contextmanager
    def reading(self, id_: str) -> Iterator[Path]:
        """The npz file of sample ``id_``; read errors inside become DamagedEntryError."""
        path = item_path(self.split_dir, id_)
        try:
            yield path
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
            raise DamagedEntryError(f"{path}: unreadable cache entry ({type(err).__name__}: {err}); "
                                    f"{self.rebuild_hint(id_)}") from err

    def check_params(self, preprocess: Mapping[str, Any]) -> None:
        """Raise CacheMismatchError, listing the differing keys, unless this cache was made
        with ``preprocess`` (e.g. the parameters stored in a checkpoint)."""
        check_meta(self.meta, preprocess, self.split_dir)

    def __len__(self) -> int:
        return len(self.records)
