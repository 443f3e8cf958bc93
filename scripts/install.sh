#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# Debian's ffmpeg, espeak-ng and wordnet-base (WordNet 3.0 in /usr/share/wordnet, read by the
# synonym replacement augmentation, train.synonym_replace_samples), then this package with its Python dependencies, checked by
# `pip check` (the script fails when it reports a conflict).
#
# By default the Python packages go into a project virtual environment, .venv/ at the repository
# root, made with the machine's python3 (Debian 12 and Ubuntu 23.04+ refuse pip installs into
# their own interpreter, PEP 668), at exactly the versions tested together: constraints.txt.
# PYTHON=/path/to/python installs into that interpreter instead (a conda env, an existing venv),
# keeping the torch, numpy, ... it already holds where they are within setup.cfg's ranges; add
# LOCK=1 to move it to constraints.txt's versions too (LOCK=0 for .venv takes any versions within
# the ranges). A second run skips pip when setup.cfg, pyproject.toml and constraints.txt are
# unchanged. The last line printed is the interpreter to run the project with.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
APT_UPDATED=""
apt_install() {
    [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -q >&2; APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >&2
}
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null || ! command -v espeak-ng >/dev/null; then
    apt_install ffmpeg espeak-ng
fi
if [ ! -f /usr/share/wordnet/index.noun ]; then  # only synonym replacement reads it: a failure is a warning
    apt_install wordnet-base || echo "warning: wordnet-base did not install; train.synonym_replace_samples needs a" \
        "WordNet 3.0 folder (train.wordnet_dir)" >&2
fi

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    STAMP=""
else
    BASE=${BASE_PYTHON:-python3}
    VENV=.venv
    # A venv is usable once its pip runs (a run killed while making it leaves one that is not).
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        # Debian splits venv's pip bootstrap into python3-venv (python3.X-venv).
        if ! "$BASE" -c "import ensurepip, venv" 2>/dev/null; then
            version=$("$BASE" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt_install python3-venv "python${version}-venv" || apt_install python3-venv
        fi
        rm -rf "$VENV"
        "$BASE" -m venv "$VENV"
    fi
    PY=$VENV/bin/python
    STAMP=$VENV/.installed
fi

if [ -n "${PYTHON:-}" ]; then LOCK=${LOCK:-0}; else LOCK=${LOCK:-1}; fi
if [ "$LOCK" = 1 ]; then set -- -c constraints.txt; else set --; fi  # pip's extra arguments

want=$( (cat setup.cfg pyproject.toml constraints.txt; echo "lock=$LOCK") | sha256sum | cut -d' ' -f1)
if [ -n "$STAMP" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "Python packages are up to date in $VENV/ (setup.cfg, pyproject.toml and constraints.txt unchanged)" >&2
else
    # (pip repeats a warning for every index folder of a machine-wide pip.conf that lacks a
    # package; the rest of its output, errors included, passes through)
    "$PY" -m pip install -q -e ".[dev]" "$@" 2>&1 \
        | { grep -v "^WARNING: Location '.*' is ignored" || true; } >&2
    if ! problems=$("$PY" -m pip check 2>&1); then
        echo "$problems" >&2
        echo "error: pip check found the conflicts above in the environment of $PY" >&2
        exit 1
    fi
    if [ -n "$STAMP" ]; then echo "$want" > "$STAMP"; fi
fi
echo "$PY"
