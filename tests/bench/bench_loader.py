"""Loading the benchmark scripts of ``bench/`` (plain scripts, not a package) as modules."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def load_bench(name: str) -> ModuleType:
    """The module of ``bench/<name>.py``, imported under the name ``bench_<name>`` (with the
    repository root on ``sys.path``, as when run as a script, for ``bench.common``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
