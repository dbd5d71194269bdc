"""The ``nextray`` command line as a user meets it: help, tables, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "numpy", "pandas", "onnxruntime", "streamlit")

_PROBE = """
import sys
from nextray_core.cli import build_parser, main

commands = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
for command in commands:
    try:
        main([*command, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, (command, exit.code)
    loaded = [name for name in %r if name in sys.modules]
    print(" ".join(command) or "nextray", "|" + ",".join(loaded), file=sys.stderr)
"""


def test_help_of_every_command_imports_no_heavy_library():
    # a fresh interpreter: this test process has torch loaded already
    result = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" |")[:2] for line in result.stderr.splitlines() if " |" in line)
    assert {"nextray", "train", "predict", "evaluate", "explain", "card", "dashboard"} <= set(lines)
    assert {command: loaded for command, loaded in lines.items() if loaded} == {}
