"""What ``--clips`` names: a folder, a glob pattern, a single clip or a ``.txt`` list.

A folder or a pattern gives its media files, video (``VIDEO_EXTENSIONS``) and audio-only
(``AUDIO_EXTENSIONS``: such a clip has the audio and text modalities, its video masked),
sorted by name. Everything else it holds is skipped and the skipped files are logged, each
with why: a transcript beside a clip, a hidden file, a folder, or an extension that is not
a media type. A list names its clips one per line, and a missing one becomes an error row.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pipeline.infer.transcripts import SIDECAR_EXTENSIONS, InputError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")
AUDIO_EXTENSIONS = (".wav", ".m4a", ".mp3", ".flac", ".ogg", ".opus", ".aac", ".wma")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
SHOWN_SKIPPED = 20  # the log names this many skipped files, then counts the rest


def list_clips(spec: str) -> list[Path]:
    """The clips named by ``--clips``: a folder's media files (sorted by name, hidden files
    skipped), a ``.txt`` list, a single clip, or a glob pattern (its media files, sorted)."""
    path = Path(spec)
    if path.is_dir():
        clips = pick_media(sorted(path.iterdir()), f"--clips {spec}")
        if not clips:
            raise InputError(f"--clips {spec}: the folder holds no media files ({', '.join(MEDIA_EXTENSIONS)})")
        return clips
    if path.is_file():
        return read_clip_list(path) if path.suffix.lower() == ".txt" else [path]
    if any(char in spec for char in "*?["):
        clips = pick_media([p for p in expand_pattern(spec) if not p.is_dir()], f"--clips {spec}")
        if not clips:
            raise InputError(f"--clips {spec}: the pattern matches no media files")
        return clips
    raise InputError(f"--clips {spec}: no such folder, list file or clip (nor a glob pattern)")


def expand_pattern(spec: str) -> list[Path]:
    """The paths matching glob pattern ``spec``, sorted, one per real file. ``**`` walks the
    real folders only (``pathlib`` never descends into a link to a folder, so links to ``.``
    or a parent cannot loop), and folders or files whose names start with ``.`` below the
    pattern's fixed part are left out, as ``glob`` leaves them."""
    parts = Path(spec).parts
    first = next(i for i, part in enumerate(parts) if any(char in part for char in "*?["))
    base = Path(*parts[:first]) if first else Path(".")
    matches = sorted(base.glob(str(Path(*parts[first:]))))
    return [p for p in matches if not any(part.startswith(".") for part in p.relative_to(base).parts)]


def one_per_file(paths: list[Path], what: str) -> list[Path]:
    """``paths`` less the later names of a file already named (links, a pattern that reaches a
    file twice), logged; a path that cannot be read stays (it becomes an error row)."""
    seen: set[tuple[int, int]] = set()
    kept, repeats = [], []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            kept.append(path)
            continue
        if (info.st_dev, info.st_ino) in seen:
            repeats.append(path)
            continue
        seen.add((info.st_dev, info.st_ino))
        kept.append(path)
    if repeats:
        logger.warning("%s: %d names of files already listed are skipped (links to one file), e.g. %s",
                       what, len(repeats), repeats[0])
    return kept


def pick_media(paths: list[Path], what: str) -> list[Path]:
    """The media files among ``paths``, in order, one per real file; the others are logged
    with why they were skipped (transcripts beside a clip only count, they are read as its
    transcript)."""
    reasons = [(p, skip_reason(p)) for p in paths]
    clips = one_per_file([p for p, reason in reasons if reason is None], what)
    stems = {clip.with_suffix("") for clip in clips}
    skipped = [(p, reason) for p, reason in reasons if reason is not None]
    sidecars = [p for p, _ in skipped if p.suffix.lower() in SIDECAR_EXTENSIONS and p.with_suffix("") in stems]
    others = [(p, reason) for p, reason in skipped if p not in sidecars]
    if others:
        shown = "; ".join(f"{p.name}{'/' if p.is_dir() else ''} ({reason})" for p, reason in others[:SHOWN_SKIPPED])
        more = f"; and {len(others) - SHOWN_SKIPPED} more" if len(others) > SHOWN_SKIPPED else ""
        logger.warning("%s: %d of its entries skipped: %s%s", what, len(others), shown, more)
    if sidecars:
        logger.info("%s: %d transcript files beside clips (read as their transcripts)", what, len(sidecars))
    return clips


def skip_reason(path: Path) -> str | None:
    """Why ``path`` is not a clip to predict, or None when it is one."""
    if path.name.startswith("."):
        return "hidden file"
    if path.is_dir():
        return "a folder (folders are not searched; a pattern with ** is)"
    if path.suffix.lower() not in MEDIA_EXTENSIONS:
        return f"extension {path.suffix or '(none)'} is not a media type"
    return None


def read_clip_list(path: Path) -> list[Path]:
    """One clip per line, relative paths taken from the list's folder; blank lines and lines
    starting with ``#`` are skipped. Listed clips that do not exist become error rows."""
    clips = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            clips.append(path.parent / entry)  # an absolute entry replaces the folder
    if not clips:
        raise InputError(f"--clips {path}: the list names no clip")
    return clips
