"""The dialogue around the target in the encoder's input (``preprocess.text.context_after``,
``target_marking``) and the target's mask: exact token layouts written out by hand with
the tiny WordPiece vocabulary, truncation that never cuts the target, the same arrays from
a preprocessed cache and from inference's transcripts, and ``pooling: target``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import preprocess
from pipeline.config import PreprocessConfig, TextFeatures
from pipeline.data.cache import CacheSplit
from pipeline.infer.transcripts import read_transcripts
from pipeline.media.features import extract_features
from pipeline.media.text import Utterance, text_arrays
from tests.pipeline.meld_fixtures import row, save_tokenizer, write_csv

torch.set_num_threads(1)

DIALOGUE = Utterance("I am fine.", "Joey", context=(("Monica", "Oh my God!"), ("Chandler", "How you doin?")),
                     following=(("Monica", "Okay."), ("Chandler", "No way!")))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(save_tokenizer(tmp_path_factory.mktemp("tok")))


def layout(arrays: dict, tokenizer) -> tuple[list[str], list[str]]:
    """(all tokens, the tokens under the target mask)."""
    tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"].tolist())
    assert arrays["attention_mask"].tolist() == [1] * len(tokens)
    assert arrays["target_mask"].dtype == np.int8 and len(arrays["target_mask"]) == len(tokens)
    return tokens, [token for token, on in zip(tokens, arrays["target_mask"]) if on]


TARGET = ["joey", ":", "i", "am", "fine", "."]
BEFORE = ["monica", ":", "oh", "my", "god", "!", "chandler", ":", "how", "you", "doin", "?"]
AFTER = ["monica", ":", "okay", ".", "chandler", ":", "no", "way", "!"]


def test_markers_put_the_dialogue_in_order_with_the_target_between_separators(tokenizer):
    cfg = TextFeatures(max_length=64, context_turns=2, context_after=2, target_marking="markers")
    tokens, target = layout(text_arrays(DIALOGUE, cfg, tokenizer), tokenizer)
    assert tokens == ["[CLS]", *BEFORE, "[SEP]", *TARGET, "[SEP]", *AFTER, "[SEP]"]
    assert target == TARGET


def test_segment_keeps_the_target_first_and_splits_the_context_where_it_stood(tokenizer):
    cfg = TextFeatures(max_length=64, context_turns=2, context_after=1)
    tokens, target = layout(text_arrays(DIALOGUE, cfg, tokenizer), tokenizer)
    assert tokens == ["[CLS]", *TARGET, "[SEP]", *BEFORE, "[SEP]", *AFTER[:4], "[SEP]"]
    assert target == TARGET


def test_earlier_turns_only_keep_the_layout_of_older_caches(tokenizer):
    cfg = TextFeatures(max_length=64, context_turns=2)  # newest turn first, turns split by separators
    tokens, target = layout(text_arrays(DIALOGUE, cfg, tokenizer), tokenizer)
    assert tokens == ["[CLS]", *TARGET, "[SEP]", *BEFORE[6:], "[SEP]", *BEFORE[:6], "[SEP]"]
    assert target == TARGET
    tokens, target = layout(text_arrays(Utterance("how you doin ? " * 5), TextFeatures(max_length=8), tokenizer),
                            tokenizer)
    assert len(tokens) == 8 and target == tokens[1:7]  # a target cut to fit is masked as far as it goes


def test_truncation_takes_the_nearest_turns_first_and_never_cuts_the_target(tokenizer):
    # 4 specials + 6 target tokens leave 12 of 22: the last earlier turn (6), the first
    # later one (4), then 2 tokens of "Monica: Oh my God!", cut from its start.
    cfg = TextFeatures(max_length=22, context_turns=2, context_after=2, target_marking="markers")
    tokens, target = layout(text_arrays(DIALOGUE, cfg, tokenizer), tokenizer)
    assert tokens == ["[CLS]", "god", "!", *BEFORE[6:], "[SEP]", *TARGET, "[SEP]", *AFTER[:4], "[SEP]"]
    assert target == TARGET
    # A later turn that does not fit keeps its start: 8 tokens of room, 6 + 2.
    cfg = TextFeatures(max_length=18, context_turns=1, context_after=2, target_marking="markers")
    tokens, _ = layout(text_arrays(DIALOGUE, cfg, tokenizer), tokenizer)
    assert tokens == ["[CLS]", *BEFORE[6:], "[SEP]", *TARGET, "[SEP]", *AFTER[:2], "[SEP]"]
    # No room at all: the target alone, cut, between its markers.
    long = Utterance("how you doin ? " * 5, "", DIALOGUE.context, DIALOGUE.following)
    tokens, target = layout(text_arrays(long, TextFeatures(max_length=10, context_turns=2, context_after=2,
                                                           target_marking="markers"), tokenizer), tokenizer)
    assert tokens == ["[CLS]", "[SEP]", "how", "you", "doin", "?", "how", "you", "[SEP]", "[SEP]"]
    assert target == ["how", "you", "doin", "?", "how", "you"]


def test_cache_and_inference_transcripts_give_the_same_arrays(tmp_path, tokenizer):
    rows = [row(0, 0, "Oh my God!", "Monica", "surprise", "positive"), row(0, 1, "How you doin?", "Chandler"),
            row(0, 2, "I am fine.", "Joey", "joy", "positive"), row(0, 3, "No way!", "Monica", "anger", "negative"),
            row(1, 0, "Okay.", "Joey")]
    meld = tmp_path / "MELD.Raw"
    for split, name in (("train", "train_sent_emo.csv"), ("dev", "dev_sent_emo.csv")):
        write_csv(meld / name, rows)
    text = [f"preprocess.text.model={save_tokenizer(tmp_path / 'tok')}", "preprocess.modalities=[text]",
            "preprocess.text.context_turns=1", "preprocess.text.context_after=1",
            "preprocess.text.target_marking=markers", "preprocess.text.max_length=32"]
    assert preprocess.main([str(meld), str(tmp_path / "cache"), "--splits", "train,dev", "--workers", "0", *text]) == 0
    split = CacheSplit(tmp_path / "cache" / "dev")
    cached = split.load("dia0_utt2")
    tokens, target = layout(cached, tokenizer)
    assert tokens == ["[CLS]", *BEFORE[6:], "[SEP]", *TARGET, "[SEP]", "monica", ":", "no", "way", "!", "[SEP]"]
    assert target == TARGET
    table = read_transcripts(meld / "dev_sent_emo.csv", 1, 1)
    pcfg = PreprocessConfig(modalities=["text"], text=TextFeatures(model="", max_length=32, context_turns=1,
                                                                  context_after=1, target_marking="markers"))
    served, _ = extract_features(None, table.by_name["dia0_utt2"].utterance, pcfg, tokenizer)
    assert set(served) == set(cached)
    for name in served:
        np.testing.assert_array_equal(served[name], cached[name])


def test_target_pooling_averages_the_target_tokens_only(tmp_path):
    from transformers import BertConfig, BertModel

    from encoders.text import HFTextEncoder

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    save_tokenizer(folder)
    ids = torch.tensor([[2, 5, 14, 16, 3, 20, 21, 3], [2, 6, 3, 7, 8, 3, 0, 0]])
    attention = (ids != 0).long()
    target = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
    inputs = {"input_ids": ids, "attention_mask": attention, "target_mask": target}
    encoders = {pooling: HFTextEncoder(HFTextEncoder.Config(model=str(folder), pooling=pooling, dropout=0.0)).eval()
                for pooling in ("target", "mean")}
    encoders["mean"].load_state_dict(encoders["target"].state_dict())
    with torch.no_grad():
        out = encoders["target"](inputs)
        sequence = out["sequence"]
        expected = torch.stack([sequence[0, 1:4].mean(0), sequence[1, 3:5].mean(0)])
        torch.testing.assert_close(out["pooled"], expected)
        assert not torch.allclose(encoders["mean"](inputs)["pooled"], expected, atol=1e-4)
        with pytest.raises(ValueError, match="pooling: 'target' needs target masks"):
            encoders["target"]({"input_ids": ids, "attention_mask": attention})
