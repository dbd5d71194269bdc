"""``nextray dashboard``: start the Streamlit app, optionally on a given run and checkpoint.

The app ships inside the installed package (``dashboard/`` beside ``nextray_core/``), so this
works from any folder after ``pip install .``; the safe settings are passed as flags rather than
read from a config file in the working folder. A non-loopback ``--address`` is refused unless
``--allow-remote`` says it is meant.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from nextray_core.errors import ConfigError, NextRayError
from nextray_core.options import ALLOW_REMOTE_ENV, DASHBOARD_SETTINGS, LOOPBACK_ADDRESS

PACKAGES = Path(__file__).resolve().parents[2]  # the folder holding nextray_core/ and dashboard/
APP = PACKAGES / "dashboard" / "app.py"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "dashboard",
        help="start the Streamlit dashboard",
        description="Start the dashboard on this machine only (127.0.0.1), with no usage "
        "statistics and a 50 MB upload limit. Without --run/--checkpoint it opens the bundled "
        "demo when started from a clone (or installed from one with pip install -e .).",
    )
    parser.add_argument("--run", type=Path, help="an evaluation run folder to open")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder to load")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument(
        "--address",
        default=LOOPBACK_ADDRESS,
        help="address to listen on (default %(default)s: this machine only)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an --address that other machines can reach (they could upload images)",
    )
    parser.set_defaults(handler=run)


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """``python -m streamlit run APP`` with every safe setting as an explicit flag."""
    settings = {**DASHBOARD_SETTINGS, "server.address": args.address, "server.port": args.port}
    if args.address not in _LOOPBACK:
        del settings["browser.serverAddress"]  # the URL it prints is then the address itself
    command = [sys.executable, "-m", "streamlit", "run", str(APP)]
    for name, value in settings.items():
        command += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    extra: list[str] = []
    for flag, value in (("--run", args.run), ("--checkpoint", args.checkpoint)):
        if value is not None:
            if not value.exists():
                raise NextRayError(f"{flag} {value}: no such file or folder")
            extra += [flag, str(value.resolve())]
    return [*command, "--", *extra] if extra else command


def run(args: argparse.Namespace) -> int:
    if not APP.is_file():
        raise NextRayError(
            f"the dashboard is not installed beside nextray_core ({APP} is missing); "
            "reinstall the package (pip install .) or run from a clone (pip install -e .)"
        )
    remote = args.address not in _LOOPBACK
    if remote and not args.allow_remote:
        raise ConfigError(
            f"--address {args.address} lets other machines reach the dashboard (and upload "
            "radiographs to it); add --allow-remote if that is what you want"
        )
    env = dict(os.environ)
    # the app imports the dashboard and nextray_core that sit beside it, not whatever the
    # working folder holds (Python 3.11+; on 3.10 the working folder still comes first)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGES), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONSAFEPATH"] = "1"
    if remote:
        env[ALLOW_REMOTE_ENV] = "1"
    else:
        env.pop(ALLOW_REMOTE_ENV, None)
    return subprocess.call(streamlit_command(args), env=env)
