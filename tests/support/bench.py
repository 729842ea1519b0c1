"""Import a script of bench/ as a module, so that tests can call its pure parts."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(script: str) -> ModuleType:
    """bench/<script>.py as the module `bench_<script>`, with bench/ on the path while it loads (for its
    `_common` import); registered in sys.modules, where dataclasses look their module up."""
    name = f"bench_{script}"
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))
