"""Reading a CTranslate2 binary model file (``model.bin``) into torch tensors, without CTranslate2.

The layout is the one ``ModelSpec._serialize`` writes (CTranslate2
``python/ctranslate2/specs/model_spec.py``) and ``models::Model::load`` reads
(``src/models/model.cc``), all integers little-endian:

    u32 binary version | string spec name | u32 spec revision | u32 variable count
    per variable: string name | u8 rank | u32 x rank shape | u8 dtype id | u32 byte count | bytes
    u32 alias count | per alias: string alias | string variable name

where a string is ``u16 length`` (counting a trailing NUL), the UTF-8 bytes, then the NUL.
Names are scopes joined by ``/`` (``encoder/layer_0/self_attention/linear_0/weight``).
Quantized weights (int8, int16) come with a ``<name>_scale`` variable; reading dequantizes them.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from encoders.weights import WeightsError

# Type ids in the order of the DataType enum of CTranslate2's include/ctranslate2/types.h.
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
# Binary version 4 introduced the dtype id (earlier files store an item size that cannot tell
# float16 from int16); 6 is the newest CTranslate2 writes.
SUPPORTED_VERSIONS = range(4, 7)


@dataclass
class CTranslate2Model:
    """What a ``model.bin`` holds: the spec's name and revision and its variables (float
    weights dequantized, aliases resolved to the tensor they name)."""

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, torch.Tensor]


@dataclass
class _Entry:
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    num_bytes: int


def read_model(path: str | Path, keep: Callable[[str], bool] = lambda name: True) -> CTranslate2Model:
    """Read the variables of the CTranslate2 model file ``path`` whose names ``keep`` accepts
    (the data of the others is skipped, not read: e.g. a Whisper decoder when only the
    encoder is wanted). Raises :class:`WeightsError` for a file of another format, a newer
    binary version, or a truncated file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        reader = _Reader(file, path, size)
        version = reader.unpack("<I")
        if version not in SUPPORTED_VERSIONS:
            raise WeightsError(f"{path} has CTranslate2 binary version {version}; this reader handles "
                               f"versions {SUPPORTED_VERSIONS.start}-{SUPPORTED_VERSIONS.stop - 1} "
                               "(or the file is not a CTranslate2 model.bin at all)")
        spec = reader.string()
        revision = reader.unpack("<I")
        entries: dict[str, _Entry] = {}
        for _ in range(reader.unpack("<I")):
            name = reader.string()
            rank = reader.unpack("<B")
            shape = tuple(struct.unpack(f"<{rank}I", reader.read(4 * rank)))
            type_id = reader.unpack("<B")
            if type_id >= len(DTYPES):
                raise WeightsError(f"{path}: variable {name} has an unknown dtype id {type_id}")
            dtype = DTYPES[type_id]
            num_bytes = reader.unpack("<I")
            if num_bytes != math.prod(shape) * dtype.itemsize:
                raise WeightsError(f"{path}: variable {name} of shape {shape} and dtype {dtype} "
                                   f"declares {num_bytes} bytes")
            entries[name] = _Entry(shape, dtype, file.tell(), num_bytes)
            file.seek(num_bytes, 1)  # read later, if wanted; past the end, the next read fails
        aliases = {}
        for _ in range(reader.unpack("<I")):
            alias = reader.string()
            aliases[alias] = reader.string()
        names = {*entries, *aliases}
        scales = {f"{name}_scale" for name in names}
        raw = {}
        for name in sorted(name for name in names if keep(name) and name not in scales):
            target = aliases.get(name, name)
            if target not in entries:
                raise WeightsError(f"{path}: alias {name} names {target}, which the file does not hold")
            raw[name] = reader.tensor(entries[target])
            # A quantized weight's scale is stored beside it (an alias shares its target's scale).
            if f"{target}_scale" in entries:
                raw[f"{name}_scale"] = reader.tensor(entries[f"{target}_scale"])
    return CTranslate2Model(spec, revision, version, _dequantize(raw, path))


def _dequantize(raw: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Integer weights with a ``_scale`` become float32 (CTranslate2 stores ``round(w * scale)``
    with one scale per output row for int8, one for the whole tensor for int16)."""
    if any(name.endswith("_zero") for name in raw):
        raise WeightsError(f"{path} holds zero points of a pre-quantized (AWQ) model, which this "
                           "reader does not dequantize")
    variables = {}
    for name, tensor in raw.items():
        if name.endswith("_scale") and name[:-len("_scale")] in raw:
            continue
        scale = raw.get(f"{name}_scale")
        if scale is not None:
            scale = scale.float()
            if scale.dim() == 1:
                scale = scale.reshape(-1, *[1] * (tensor.dim() - 1))
            tensor = tensor.float() / scale
        variables[name] = tensor
    return variables


class _Reader:
    """Little-endian reads that fail with a :class:`WeightsError` at the end of the file."""

    def __init__(self, file: BinaryIO, path: Path, size: int) -> None:
        self.file, self.path, self.size = file, path, size

    def read(self, count: int) -> bytes:
        data = self.file.read(count)
        if len(data) != count:
            raise WeightsError(f"{self.path} ends early (truncated at byte {self.size}): not a complete "
                               "CTranslate2 model file")
        return data

    def tensor(self, entry: _Entry) -> torch.Tensor:
        self.file.seek(entry.offset)
        data = bytearray(self.read(entry.num_bytes))
        tensor = torch.frombuffer(data, dtype=entry.dtype) if data else torch.empty(0, dtype=entry.dtype)
        return tensor.reshape(entry.shape)

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<H")
        if length == 0:
            raise WeightsError(f"{self.path}: invalid string length 0 (not a CTranslate2 model file)")
        return self.read(length)[:-1].decode("utf-8")
