"""Config values that used to escape the checks: ``train.device=tpu`` (a raw torch error
late) and a small YAML of nested aliases (minutes and gigabytes, as the message printed the
whole expanded value) are refused at once with a short message naming the key."""
from __future__ import annotations

import time

import pytest

from pipeline.config import ConfigError, load_config

# 9 items, each level 9 copies of the one before: 9^8 (43 million) strings once expanded
NESTED_ALIASES = "train:\n  lr: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{chr(98 + level)} [{', '.join([f'*{chr(97 + level)}'] * 9)}]" for level in range(7)) + "]\n"


def test_an_unknown_device_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^train.device: must be auto, cpu, cuda or cuda:N, got 'tpu'$"):
        load_config(None, ["train.device=tpu"])
    assert load_config(None, ["train.device=cuda:1"]).train.device == "cuda:1"


def test_nested_yaml_aliases_are_refused_quickly_with_a_short_message(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text(NESTED_ALIASES, encoding="utf-8")
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert time.monotonic() - start < 5
    assert str(error.value).startswith("train.lr: expected float, got list [")
    assert len(str(error.value)) < 1000
