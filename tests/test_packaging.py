"""The wheel carries the dashboard, and a NON-editable install serves the demo from any folder.

Builds the wheel offline from a copy of the sources (pip wheel --no-deps --no-build-isolation),
installs it with ``pip install --no-deps --target`` (the dependencies are this interpreter's),
and opens the installed app through AppTest from another folder, on the clone's demo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "checkpoints" / "demo"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it was installed into without editable links)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("nextray_core", "dashboard"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    offline = ["--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run([*pip, "wheel", *offline, "-w", str(root / "wheel"), str(source)], check=True)
    wheel = next((root / "wheel").glob("nextray-*.whl"))
    target = root / "target"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
    )
    return wheel, target


def test_the_wheel_holds_the_dashboard_and_no_weights(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    views = {f"dashboard/views/{p.name}" for p in (REPO / "dashboard" / "views").glob("*.py")}
    modules = {f"dashboard/{p.name}" for p in (REPO / "dashboard").glob("*.py")}
    assert views and views <= names
    assert {"dashboard/app.py", "dashboard/state.py", "dashboard/safety.py"} <= modules <= names
    assert "dashboard/.streamlit/config.toml" in names  # the safe settings, beside app.py
    assert "nextray_core/cli.py" in names
    assert not [n for n in names if n.endswith(".safetensors") or n.startswith("checkpoints/")]
    assert wheel.stat().st_size < 5_000_000


_OPEN_DEMO = """
import json, os, sys
from streamlit.testing.v1 import AppTest
import dashboard, nextray_core

from streamlit import config
from nextray_core.options import DASHBOARD_SETTINGS

# AppTest starts no server and reads neither flags nor the script-level config: set what
# `nextray dashboard` passes as flags (without them the app refuses to serve)
for name, value in DASHBOARD_SETTINGS.items():
    config.set_option(name, value)
app, run, checkpoint = sys.argv[1:4]
sys.argv = ["app.py", "--run", run, "--checkpoint", checkpoint]
at = AppTest.from_file(app, default_timeout=300).run()  # the Predict page: loads the model
print(json.dumps({
    "modules": [dashboard.__file__, nextray_core.__file__],
    "exceptions": [str(e.value) for e in at.exception],
    "errors": [str(e.value) for e in at.error],
    "run": at.session_state["run_path"],
    "checkpoint": at.session_state["checkpoint_path"],
    "choices": [list(r.options) for r in at.radio],
}), flush=True)
os._exit(0)  # not waiting for the engine's background fast-path build
"""


def test_the_installed_app_serves_the_clones_demo_from_another_folder(installed, tmp_path):
    _, target = installed
    app = target / "dashboard" / "app.py"
    assert app.is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env |= {"PYTHONPATH": str(target), "HOME": str(tmp_path), "PYTHONSAFEPATH": "1"}
    argv = [sys.executable, "-c", _OPEN_DEMO, str(app), str(DEMO / "run"), str(DEMO)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(m).is_relative_to(target) for m in shown["modules"]), shown["modules"]
    assert shown["exceptions"] == [] and shown["errors"] == []
    assert shown["run"] == str((DEMO / "run").resolve())
    assert shown["checkpoint"] == str(DEMO.resolve())
    # the model's own class names on the page: the demo's card was loaded
    card = json.loads((DEMO / "card.json").read_text())
    assert [card["positive_class"], card["negative_class"]] in shown["choices"]
