"""Where the weights installed by ``python -m pipeline.fetch NAME`` live, and finding them.

The models home is ``~/.cache/meld-fusion/models`` unless the environment variable
``MELD_FUSION_MODELS`` names another folder; model ``NAME`` is the folder ``HOME/NAME``.
``pipeline.fetch`` builds that folder beside its destination and renames it into place, with
a manifest (:data:`MANIFEST`) of every file's size and sha256 written last, so a folder with
a manifest is complete. This module only looks: it never downloads, and it holds the
fetchable names because ``encoders`` must not import ``pipeline`` (``pipeline.fetch`` holds
the pinned files of each name, and a test checks that both agree).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ENV_VAR = "MELD_FUSION_MODELS"
DEFAULT_HOME = "~/.cache/meld-fusion/models"
MANIFEST = "meld-fusion-manifest.json"  # {"name": NAME, "files": {relative path: {"size", "sha256"}}}

# Names that ``python -m pipeline.fetch NAME`` installs, and the other names they go by.
FETCHABLE = ("all-mpnet-base-v2", "whisper-base", "mtcnn")
ALIASES = {"sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2"}


class ModelNotInstalledError(FileNotFoundError):
    """A fetchable model is not (completely) installed in the models home."""


def models_home() -> Path:
    """The models home: ``$MELD_FUSION_MODELS``, else ``~/.cache/meld-fusion/models``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_HOME).expanduser()


def canonical_name(name: str) -> str | None:
    """The fetchable name that ``name`` stands for (itself or through an alias); None if none."""
    name = ALIASES.get(name, name)
    return name if name in FETCHABLE else None


def fetch_command(name: str) -> str:
    """The command that installs fetchable model ``name``."""
    return f"python -m pipeline.fetch {canonical_name(name) or name}"


def read_manifest(folder: Path) -> dict[str, dict] | None:
    """The files listed by the manifest in ``folder`` (relative path -> ``{"size", "sha256"}``),
    or None when there is no readable manifest."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def installed_model(name: str, home: Path | None = None) -> Path | None:
    """The folder of fetchable model ``name`` (or an alias) in the models home, or None when
    ``name`` is not fetchable or not installed.

    Installed means: the folder holds a manifest and every file it lists, at the listed size
    (a cheap check; ``pipeline.fetch`` verifies the sha256 of each file)."""
    canonical = canonical_name(name)
    if canonical is None:
        return None
    folder = (home if home is not None else models_home()) / canonical
    return folder if is_complete(folder) else None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest and every file it lists, at the listed size."""
    files = read_manifest(folder)
    if not files:
        return False
    for path, entry in files.items():
        try:
            if (folder / path).stat().st_size != entry["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def require_model(name: str) -> Path:
    """The folder of fetchable model ``name`` (e.g. ``"whisper-base"``, ``"mtcnn"``); raises
    :class:`ModelNotInstalledError` naming the fetch command when it is not installed."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"{name!r} is not a model that pipeline.fetch installs; "
                         f"known: {', '.join(FETCHABLE)}")
    folder = installed_model(canonical)
    if folder is None:
        raise ModelNotInstalledError(
            f"model {canonical!r} is not installed in the models home {models_home() / canonical} "
            f"(${ENV_VAR} sets the home); install it once with `{fetch_command(canonical)}`")
    return folder
