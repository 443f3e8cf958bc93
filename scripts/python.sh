# Sourced by the scripts: sets PYTHON to the interpreter to run the project with.
# $PYTHON if set, else the project venv (.venv/, made by scripts/install.sh), else python3.
if [ -z "${PYTHON:-}" ]; then
    _venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
    if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$_venv" ]; then PYTHON=$_venv; else PYTHON=python3; fi
    unset _venv
fi
