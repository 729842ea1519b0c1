import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import retraining.ml
from recommendations.models import EventType
from retraining.ml.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def test_importing_every_module_of_the_ml_package_loads_no_django():
    modules = [f"retraining.ml.{info.name}" for info in pkgutil.iter_modules(retraining.ml.__path__)]
    probe = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # no DJANGO_SETTINGS_MODULE to lean on
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(modules) >= 8 and json.loads(done.stdout.splitlines()[-1]) == []


def test_the_ml_event_codes_follow_the_event_types_of_the_model():
    assert [choice.value for choice in EventType] == EVENT_TYPES
