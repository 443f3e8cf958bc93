"""train.synonym_replace_*: words of the target utterance become WordNet synonyms.

A tiny WordNet 3.0 database is written here in the format of Debian's wordnet-base (index.*,
data.*, *.exc, cntlist.rev; no lexnames file, as Debian's lacks it), so the test pins which
words change: a word's part of speech is the one its senses are tagged most in, stop words,
speaker names and the dialogue turns around the target never change.
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
import torch

from pipeline import preprocess
from pipeline import train as training
from pipeline.config import ConfigError, load_config
from pipeline.data.cache import CacheSplit
from pipeline.data.dataset import MeldDataset, collate
from pipeline.train.augment import build_augmentation
from pipeline.train.augment.wordnet import load_wordnet

# (part of speech, lemmas, how often the first lemma's sense is tagged)
SYNSETS = [
    ("a", ["happy", "glad"], 5),
    ("a", ["happy", "felicitous"], 0),  # untagged: left out while happy has a tagged sense
    ("r", ["so", "very"], 9),  # both are stop words: never replaced
    ("n", ["noon", "midday"], 3),
    ("n", ["train", "railroad_train"], 2),
    ("v", ["train", "develop"], 7),  # train's verb senses are tagged more: its synonyms are verbs
    ("v", ["leave", "go_away"], 4),  # "leaves" -> leave (NLTK's morphy) -> "go away"
]
FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
NUMBERS = {"n": 1, "v": 2, "a": 3, "r": 4}
LEXFILE = {"n": 3, "v": 29, "a": 0, "r": 2}  # noun.Tops, verb.body, adj.all, adv.all
WORDS = ["happy", "glad", "felicitous", "so", "very", "noon", "midday", "train", "railroad", "develop", "leave",
         "leaves", "go", "away", "at", "the", "."]


def write_wordnet(folder: Path) -> Path:
    """The database of :data:`SYNSETS` in WordNet's file format (offsets are byte offsets)."""
    folder.mkdir(parents=True)
    index: dict[str, dict[str, list[int]]] = {pos: {} for pos in FILES}
    counts = []
    for pos, name in FILES.items():
        data = "  1 a tiny WordNet for tests\n"
        for synset_pos, lemmas, tagged in SYNSETS:
            if synset_pos != pos:
                continue
            offset = len(data.encode())
            # lex_id: which sense of the lemma in its lexicographer file (part of the sense key)
            lex_ids = [len(index[pos].get(lemma, [])) for lemma in lemmas]
            data += (f"{offset:08d} {LEXFILE[pos]:02d} {pos} {len(lemmas):02x} "
                     + " ".join(f"{lemma} {lex_id:x}" for lemma, lex_id in zip(lemmas, lex_ids)) + " 000 | a sense\n")
            for i, (lemma, lex_id) in enumerate(zip(lemmas, lex_ids)):
                index[pos].setdefault(lemma, []).append(offset)
                counts.append((f"{lemma}%{NUMBERS[pos]}:{LEXFILE[pos]:02d}:{lex_id:02d}::", tagged if i == 0 else 0))
        (folder / f"data.{name}").write_text(data)
        (folder / f"index.{name}").write_text("  1 a tiny WordNet for tests\n" + "".join(
            f"{lemma} {pos} {len(offsets)} 0 {len(offsets)} 0 {' '.join(f'{o:08d}' for o in offsets)}\n"
            for lemma, offsets in sorted(index[pos].items())))
        (folder / f"{name}.exc").write_text("")
    (folder / "cntlist.rev").write_text("".join(f"{key} 1 {count}\n" for key, count in sorted(counts)))
    return folder


@pytest.fixture(scope="module")
def wordnet_dir(tmp_path_factory) -> Path:
    return write_wordnet(tmp_path_factory.mktemp("wordnet") / "dict")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> str:
    """A tiny random BERT whose WordPiece vocabulary holds every word here (no [UNK])."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("model") / "tiny"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", *WORDS]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return str(folder)


def test_synonyms_come_from_the_words_most_tagged_part_of_speech(wordnet_dir):
    wordnet = load_wordnet(wordnet_dir)
    assert wordnet.synonyms("happy") == ("glad",)  # not "felicitous": that sense is untagged
    assert wordnet.synonyms("Noon") == ("midday",)
    assert wordnet.synonyms("train") == ("develop",)  # the verb: tagged 7 times against the noun's 2
    assert wordnet.synonyms("leaves") == ("go away",)
    assert wordnet.synonyms("felicitous") == ("happy",)  # no tagged sense: all its senses
    assert wordnet.synonyms("the") == ()


def test_a_missing_wordnet_is_one_line_naming_how_to_install_it(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_wordnet(tmp_path / "nowhere")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message
    assert "apt-get install wordnet-base" in message and "train.wordnet_dir" in message


TURNS = [("Happy", "very happy ."), ("Happy", "so happy at noon ."), ("Train", "the train leaves at noon ."),
         ("Happy", "so glad .")]
# each target with every replaceable word replaced, by hand: stop words ("so", "very", "the",
# "at"), the speaker "Happy" and the turns around it stay
REPLACED = {1: "so glad at midday .", 2: "the develop go away at midday ."}
LAYOUTS = {"segment": ["preprocess.text.context_turns=1"],
           "markers": ["preprocess.text.context_turns=1", "preprocess.text.context_after=1",
                       "preprocess.text.target_marking=markers"]}


def text_cache(folder: Path, text_model: str, layout: str, turns: list[tuple[str, str]]) -> Path:
    """A text-only cache of one dialogue of ``turns`` (train and dev alike)."""
    for split in ("train", "dev"):
        path = folder / "meld" / f"{split}_sent_emo.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"])
            for n, (speaker, text) in enumerate(turns):
                writer.writerow([n + 1, text, speaker, ("joy", "neutral", "anger", "joy")[n % 4], "neutral", 0, n])
    status = preprocess.main([str(folder / "meld"), str(folder / "cache"), "--splits", "train,dev", "--workers", "0",
                              *preprocess_overrides(text_model, layout)])
    assert status == 0
    return folder / "cache"


def preprocess_overrides(text_model: str, layout: str) -> list[str]:
    return ["preprocess.modalities=[text]", f"preprocess.text.model={text_model}", "preprocess.text.max_length=40",
            *LAYOUTS[layout]]


def augmentation(cache: Path, text_model: str, layout: str, wordnet_dir: Path, *extra: str):
    cfg = load_config(None, [f"data.cache_dir={cache}", "model.modalities=[text]", "train.token_mask_samples=0",
                             f"train.wordnet_dir={wordnet_dir}", *preprocess_overrides(text_model, layout), *extra])
    return build_augmentation(cfg, CacheSplit(cache / "train"))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("target", sorted(REPLACED))
def test_a_replaced_sample_is_the_cache_entry_of_its_replaced_words(tmp_path, text_model, wordnet_dir, layout,
                                                                    target):
    cache = text_cache(tmp_path / "original", text_model, layout, TURNS)
    augment = augmentation(cache, text_model, layout, wordnet_dir, "train.synonym_replace_samples=1",
                           "train.synonym_replace_prob=1")
    dataset = MeldDataset(CacheSplit(cache / "train").split_dir, ["text"])
    batch = collate([dataset[0], dataset[target]])  # another sample in the batch: rows are padded again
    out = augment(batch["text"], batch["ids"])

    # the expected arrays: preprocessing of a CSV where only the target's words were changed
    edited = [(speaker, REPLACED[target] if n == target else text) for n, (speaker, text) in enumerate(TURNS)]
    expected = CacheSplit(text_cache(tmp_path / "edited", text_model, layout, edited) / "train").load(batch["ids"][1])
    length = len(expected["input_ids"])
    assert out["input_ids"][1, :length].tolist() == expected["input_ids"].tolist()
    assert out["target_mask"][1, :length].tolist() == expected["target_mask"].tolist()
    assert out["attention_mask"][1].sum() == length and not out["input_ids"][1, length:].any()
    first = CacheSplit(text_cache(tmp_path / "first", text_model, layout,
                                  [("Happy", "very glad ."), *TURNS[1:]]) / "train").load(batch["ids"][0])
    assert out["input_ids"][0, :len(first["input_ids"])].tolist() == first["input_ids"].tolist()
    assert augment.take_counts() == {"samples": 2, "words": 1 + {1: 2, 2: 3}[target]}


def test_the_share_of_words_and_samples_and_the_seed(tmp_path, text_model, wordnet_dir):
    cache = text_cache(tmp_path, text_model, "segment", TURNS)
    augment = augmentation(cache, text_model, "segment", wordnet_dir, "train.synonym_replace_samples=0.5",
                           "train.synonym_replace_prob=0.5")
    synonyms = augment.synonyms
    patterns = set()
    original = "Happy noon, happy NOON!"
    for seed in range(20):  # 4 words, half of them (2) replaced; which two depends on the seed
        changed, count = synonyms.replace_words(original, random.Random(seed))
        pairs = list(zip(re.findall(r"[A-Za-z]+", original), re.findall(r"[A-Za-z]+", changed)))
        assert count == 2 == sum(before != after for before, after in pairs)
        assert all(after == {"Happy": "Glad", "happy": "glad", "noon": "midday", "NOON": "MIDDAY"}[before]
                   for before, after in pairs if before != after)
        patterns.add(changed)
    assert len(patterns) > 2 and "Glad noon, happy MIDDAY!" in patterns
    dataset = MeldDataset(CacheSplit(cache / "train").split_dir, ["text"])
    batch = collate([dataset[i] for i in range(len(dataset))])

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [augment(batch["text"], batch["ids"])["input_ids"] for _ in range(50)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same seed, the same batches
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other))
    counts = augment.take_counts()
    assert 0.4 < counts["samples"] / (150 * len(dataset)) < 0.6  # half of the samples (all have a word)


def test_training_replaces_words_and_says_how_many(tmp_path, text_model, wordnet_dir, capsys):
    cache = text_cache(tmp_path, text_model, "markers", TURNS * 4)
    common = [f"data.cache_dir={cache}", "data.num_workers=0", "data.test_split=", "model.modalities=[text]",
              *preprocess_overrides(text_model, "markers"), "train.batch_size=4", "train.epochs=2",
              "train.synonym_replace_samples=0.5", f"train.wordnet_dir={wordnet_dir}"]
    result = training.main([*common, f"output_dir={tmp_path / 'run'}"])
    replaced = [epoch["synonyms_replaced"] for epoch in result["epochs"]]
    assert all(epoch["samples"] > 0 and epoch["words"] >= epoch["samples"] for epoch in replaced)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [epoch["synonyms_replaced"] for epoch in saved["epochs"]] == replaced

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # no WordNet: stopped before training, in one line
        training.main([*common, f"output_dir={tmp_path / 'none'}", f"train.wordnet_dir={tmp_path / 'missing'}"])
    assert stopped.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "apt-get install wordnet-base" in errors[0]
    with pytest.raises(SystemExit):  # vectors have no words
        training.main([*common, f"output_dir={tmp_path / 'vectors'}", f"data.embeddings_dir={tmp_path}"])
