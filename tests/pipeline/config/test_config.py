"""Configuration: defaults -> YAML -> key=value overrides, with strict keys and types."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_TEXT_MODEL, Config, ConfigError, config_from_dict, dump_yaml, load_config, to_dict

REPO = Path(__file__).resolve().parents[3]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_are_complete_and_valid():
    cfg = load_config()
    assert cfg.train.epochs == Config().train.epochs
    assert cfg.preprocess.audio.n_mels == 64
    assert cfg.preprocess.video.num_frames == 8
    assert cfg.preprocess.text.max_length == 128
    # component sections come back with every field of their registered Config
    assert cfg.model.fusion["type"] == "attention" and len(cfg.model.fusion) > 1
    assert cfg.model.head["type"] == "classification"
    # the text encoder inherits the tokenizer model when it names none
    assert cfg.model.encoders["text"]["model"] == DEFAULT_TEXT_MODEL


def test_yaml_then_overrides(tmp_path):
    path = write_yaml(tmp_path / "x.yaml", {
        "output_dir": "runs/x",
        "train": {"epochs": 7, "lr": 0.01},
        "model": {"fusion": {"type": "concat"}},
    })
    cfg = load_config(path, ["train.epochs=3", "data.cache_dir=/x", "train.lr=1"])
    assert cfg.output_dir == "runs/x"
    assert cfg.train.epochs == 3  # override beats YAML
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int widened to float
    assert cfg.data.cache_dir == "/x"
    assert cfg.model.fusion["type"] == "concat"


def test_exponent_floats_parse_as_floats(tmp_path):
    path = write_yaml(tmp_path / "x.yaml", {})
    path.write_text("train:\n  encoder_lr: 3e-5\n", encoding="utf-8")
    cfg = load_config(path, ["train.lr=1e-4"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.encoder_lr == pytest.approx(3e-5)


def test_list_and_bool_overrides():
    cfg = load_config(None, ["preprocess.modalities=[text]", "model.modalities=[text]",
                             "preprocess.audio.waveform=true"])
    assert cfg.preprocess.modalities == ["text"]
    assert cfg.preprocess.audio.waveform is True


def test_face_crop_reads_the_old_booleans_and_old_caches_keep_their_key():
    from pipeline.data.cache import params_key

    assert load_config(None, ["preprocess.video.face_crop=true"]).preprocess.video.face_crop == "opencv"
    assert load_config(None, ["preprocess.video.face_crop=false"]).preprocess.video.face_crop == "none"
    assert load_config(None, ["preprocess.video.face_crop=mtcnn"]).preprocess.video.face_crop == "mtcnn"
    with pytest.raises(ConfigError, match=r"preprocess.video.face_crop: 'dlib' is not one of \['none', 'opencv', 'mtcnn'\]"):
        load_config(None, ["preprocess.video.face_crop=dlib"])
    # The parameters a cache made before audio.waveform and the face detector names has in its meta.json:
    old = to_dict(load_config().preprocess)
    del old["audio"]["waveform"]
    for before, now in ((False, "none"), (True, "opencv")):
        old["video"]["face_crop"] = before
        current = to_dict(load_config(None, [f"preprocess.video.face_crop={now}"]).preprocess)
        assert params_key(current) == params_key(old)
    assert params_key(to_dict(load_config(None, ["preprocess.audio.waveform=true"]).preprocess)) != params_key(old)
    assert params_key(to_dict(load_config(None, ["preprocess.video.face_crop=mtcnn"]).preprocess)) != params_key(old)


def test_waveform_audio_encoders_need_the_waveform_in_the_cache(tiny_wav2vec2_model):
    whisper = ["model.encoders.audio.type=whisper", "model.encoders.audio.pretrained=false"]
    with pytest.raises(ConfigError, match=r"model.encoders.audio.type: whisper reads the waveform.*"
                                          r"preprocess.audio.waveform=true"):
        load_config(None, whisper)
    with pytest.raises(ConfigError, match="hf_audio reads the waveform"):
        load_config(None, ["model.encoders.audio.type=hf_audio", f"model.encoders.audio.model={tiny_wav2vec2_model}"])
    assert load_config(None, [*whisper, "preprocess.audio.waveform=true"]).model.encoders["audio"]["type"] == "whisper"
    # A model that does not read audio does not need it; VGGish reads the log-mel.
    load_config(None, [*whisper, "model.modalities=[text,video]"])
    load_config(None, ["model.encoders.audio.type=vggish"])


def test_changing_component_type_drops_old_keys(tmp_path):
    full = to_dict(load_config())  # attention fusion with all its keys filled in
    path = write_yaml(tmp_path / "resolved.yaml", full)
    cfg = load_config(path, ["model.fusion.type=concat"])
    assert cfg.model.fusion["type"] == "concat"


@pytest.mark.parametrize("override, words", [
    (["train.epochz=3"], ["train.epochz"]),
    (["nonsense=1"], ["nonsense"]),
    (["model.fusion.not_a_field=1"], ["model.fusion", "not_a_field"]),
    (["model.head.type=transformer"], ["model.head.type", "transformer"]),
])
def test_unknown_keys_are_errors(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.resume=maybe", "train.resume"),
    ("train.batch_size=true", "train.batch_size"),
    ("preprocess.modalities=text", "preprocess.modalities"),
    ("train.class_weighting=magic", "train.class_weighting"),
])
def test_wrong_types_are_errors(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("train.lr=-0.1", "train.lr"),
    ("preprocess.video.num_frames=0", "preprocess.video.num_frames"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.ema_decay=1", "train.ema_decay"),
    ("preprocess.modalities=[text,smell]", "preprocess.modalities"),
    ("model.modalities=[video]", "model.modalities"),
])
def test_impossible_values_are_errors(override, key):
    overrides = [override]
    if key == "model.modalities":  # video requested by the model but not preprocessed
        overrides.insert(0, "preprocess.modalities=[text,audio]")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_bad_yaml_file_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["train.epochs"])


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.head.type=moe"])
    dump_yaml(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(config_from_dict(to_dict(cfg))) == to_dict(cfg)


def test_every_shipped_config_resolves():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths, "configs/ holds no YAML"
    for path in paths:
        cfg = load_config(path)
        assert cfg.model.modalities
