"""Dynamic INT8 inference on the CPU (``pipeline.infer --quantize int8``).

Every ``nn.Linear`` of a model (the text encoder's attention and feed-forward layers, the
attention fusion's projections, a transformer dialogue model, the heads) becomes a dynamically
quantized linear layer: weights stored as int8 per output channel (symmetric, scale
``max|w| / 127.5``), activations quantized to 8 bits per call from their range, products
accumulated in int32 by the CPU backend's kernels (fbgemm / oneDNN through
``torch.backends.quantized.engine``). What is not a linear layer (embeddings, layer norms,
convolutions, a GRU, ``nn.MultiheadAttention``'s output projection, which PyTorch keeps float)
stays float32.

Why ``torch.ao.quantization.quantize_dynamic`` and not torchao's ``quantize_``, which PyTorch
names as its successor: torchao's ``Int8DynamicActivationInt8WeightConfig`` multiplies through
``torch._int_mm``, whose CPU kernel is a slow reference loop on CPUs without AMX. Measured on the
2-core AVX2 VM (torch 2.11, torchao 0.17): one 2048x384 by 384x1536 int8 product took 954 ms
against 37 ms in float32, and all-MiniLM-L6-v2 on a 32x64-token batch took 12.6 s quantized
against 0.79 s in float32, eager or under ``torch.compile`` (12.3 s). ``quantize_dynamic`` uses
the backends' packed int8 kernels; it is deprecated, so its warning is silenced here and a
torch without it gets a one-line error.

A model with ``nn.TransformerEncoder`` layers (the attention fusion, the transformer dialogue
model) runs them without PyTorch's fused fast path once quantized (``torch.backends.mha``, for
the whole process): that path cannot read quantized weights.

Quantized models run on the CPU only: on a GPU the option is refused (:class:`QuantizeError`).
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CHOICES = ("int8",)
METHOD = "torch.ao.quantization.quantize_dynamic (qint8, per-channel weights)"


class QuantizeError(RuntimeError):
    """A quantization this run cannot do (another device, a torch without the API); one line."""


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (the size on disk): a full
    serialization, for the benches, not for every inference start."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantized_layers(model: nn.Module) -> int:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(module, DynamicLinear) for module in model.modules())


def quantize(model: nn.Module, scheme: str, device: torch.device) -> dict[str, Any]:
    """Quantize ``model`` in place with ``scheme`` (``int8``) for inference on ``device``
    (the CPU); returns what was done: ``scheme``, ``method`` and ``linear_layers`` (how many
    became int8)."""
    if scheme not in CHOICES:
        raise QuantizeError(f"--quantize {scheme}: unknown scheme; choose one of {', '.join(CHOICES)}")
    if device.type != "cpu":
        raise QuantizeError(f"--quantize {scheme} runs on the CPU only (dynamic INT8 kernels); the model is on "
                            f"{device}: drop --quantize, or run with --device cpu")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as err:
        raise QuantizeError(f"--quantize {scheme}: this torch {torch.__version__} has no dynamic quantization "
                            f"({err}); install the tested torch with `pip install -c constraints.txt torch`") from None
    model.eval()
    if any(isinstance(module, (nn.TransformerEncoder, nn.TransformerEncoderLayer)) for module in model.modules()):
        # Their fused "fast path" reads linear1.weight as a tensor, which a quantized layer holds
        # as a method: turn it off (for the whole process) so they run layer by layer.
        torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings():  # the deprecation notice of torch.ao.quantization (see above)
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    info = {"scheme": scheme, "method": METHOD, "linear_layers": quantized_layers(model)}
    log.info("quantized %d linear layers to dynamic int8 (%s)", info["linear_layers"], METHOD)
    return info
