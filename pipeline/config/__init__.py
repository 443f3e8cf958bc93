"""Configuration: dataclass defaults -> YAML file -> ``key=value`` overrides, resolved once.

Every entry point (preprocess, train, infer, benchmarks) resolves its configuration here,
before any worker or rank starts. Unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the dotted key. Component sections (``model.encoders.<m>``,
``model.fusion``, ``model.head``) are dicts with a ``type:`` that selects a registered class;
they are validated against that class's own ``Config`` dataclass and stored with every
default filled in, so the resolved config written to a run folder is complete.

The package is split by idea: ``sections`` (the dataclasses), ``checking`` (dict <->
dataclass, types, ``flatten``), ``files`` (YAML, overrides, dump) and ``components``
(checks against the ``encoders``/``fusion`` registries). Import the names from here.
"""
from pipeline.config.checking import ConfigError, brief, flatten, from_dict, require, to_dict
from pipeline.config.components import check_combinations, resolve_components
from pipeline.config.files import (apply_override, config_from_dict, deep_merge, dump_yaml, format_config, load_config,
                                   load_yaml, parse_override, resolve_raw)
from pipeline.config.sections import (DEFAULT_TEXT_MODEL, FACE_DETECTORS, MODALITIES, AudioFeatures, Config, DataConfig,
                                      ModelConfig, PreprocessConfig, TextFeatures, TrainConfig, VideoFeatures,
                                      check_modalities)

__all__ = ["DEFAULT_TEXT_MODEL", "FACE_DETECTORS", "MODALITIES", "AudioFeatures", "Config", "ConfigError",
           "DataConfig", "ModelConfig", "PreprocessConfig", "TextFeatures", "TrainConfig", "VideoFeatures",
           "apply_override", "brief", "check_combinations", "check_modalities", "config_from_dict", "deep_merge",
           "dump_yaml", "flatten", "format_config", "from_dict", "load_config", "load_yaml", "parse_override",
           "require", "resolve_components", "resolve_raw", "to_dict"]
