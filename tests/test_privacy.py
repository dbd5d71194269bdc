"""Nothing leaves this machine: the dashboard listens on loopback only however it is started,
collects no usage statistics, keeps its upload limit, and ONNX Runtime writes no telemetry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextray_core.cli import main
from nextray_core.options import DASHBOARD_SETTINGS

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboard" / "app.py"
PORT = 8611  # this project's port for tests that start a server


def _flat(config: dict) -> dict:
    return {f"{section}.{k}": v for section, values in config.items() for k, v in values.items()}


def test_both_config_files_hold_exactly_the_safe_settings():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    for path in (
        REPO / ".streamlit" / "config.toml",
        REPO / "dashboard" / ".streamlit" / "config.toml",
    ):
        assert _flat(tomllib.loads(path.read_text())) == DASHBOARD_SETTINGS, path


def _listening(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port`` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(".".join(str(b) for b in raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                    found.add(b"".join(words).hex())
    return found


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    env["HOME"] = str(home)  # no ~/.streamlit/config.toml of this machine's user
    env["PYTHONPATH"] = str(REPO)  # this checkout's dashboard and nextray_core
    return env


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_streamlit_run_from_another_folder_listens_on_loopback_only(tmp_path):
    assert not _listening(PORT), f"port {PORT} is busy"
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(PORT)]
    server = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not _listening(PORT) and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.2)
        bound = _listening(PORT)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert bound == {"127.0.0.1"}, output
    assert "Collecting usage statistics" not in output


def test_the_app_refuses_to_serve_when_the_safe_settings_were_overridden():
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    overrides = {
        "server.address": "0.0.0.0",
        "browser.gatherUsageStats": True,
        "server.maxUploadSize": 200,
    }
    before = {key: config.get_option(key) for key in overrides}
    try:
        for key, value in overrides.items():
            config.set_option(key, value)
        at = AppTest.from_file(str(APP), default_timeout=60).run()
    finally:
        for key, value in before.items():
            config.set_option(key, value)
    assert not at.exception
    message = at.error[0].value
    assert "refuses to serve" in message
    assert "0.0.0.0" in message and "usage statistics" in message and "200 MB" in message
    assert not at.sidebar.slider  # nothing else was laid out


def test_unsafe_settings_names_each_problem_and_allows_remote_only_when_asked():
    from dashboard.safety import is_loopback, unsafe_settings

    safe = dict(DASHBOARD_SETTINGS)
    assert unsafe_settings(safe.get, allow_remote=False) == []
    assert [is_loopback(a) for a in ("127.0.0.1", "localhost", "::1", "127.0.0.2")] == [True] * 4
    assert [is_loopback(a) for a in ("", None, "0.0.0.0", "::", "10.0.0.5", "myhost")] == [
        False
    ] * 6
    remote = {**safe, "server.address": "0.0.0.0"}
    assert len(unsafe_settings(remote.get, allow_remote=False)) == 1
    assert unsafe_settings(remote.get, allow_remote=True) == []
    everywhere = {**safe, "server.address": None}  # Streamlit's default: every interface
    assert "every network interface" in unsafe_settings(everywhere.get, allow_remote=False)[0]


def test_nextray_dashboard_refuses_a_remote_address_unless_asked(capsys):
    assert main(["dashboard", "--address", "0.0.0.0", "--port", str(PORT)]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_nextray_dashboard_passes_every_safe_setting_as_a_flag(tmp_path):
    from nextray_core.cli import build_parser
    from nextray_core.commands.dashboard import streamlit_command

    args = build_parser().parse_args(["dashboard", "--run", str(tmp_path)])
    command = streamlit_command(args)
    flags = dict(zip(command[5::2], command[6::2], strict=False))
    for name, value in DASHBOARD_SETTINGS.items():
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert flags[f"--{name}"] == expected, name
    assert command[command.index("--") + 1 :] == ["--run", str(tmp_path.resolve())]


_ORT_SESSION = """
import os, sys
if sys.argv[1] == "nextray":
    import nextray_core.engine.backends  # what every neXt-Ray entry point imports first
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

graph = helper.make_graph(
    [helper.make_node("Identity", ["image"], ["y"])], "g",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
assert session.run(None, {"image": np.ones(1, np.float32)})[0][0] == 1.0
"""


def _files_after_an_onnx_session(home: Path, how: str) -> list[Path]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env |= {"HOME": str(home), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", _ORT_SESSION, how], env=env, check=True, timeout=120)
    return sorted((home / ".cache" / "Microsoft").rglob("*"))


def test_onnxruntime_writes_no_device_id_or_telemetry(tmp_path):
    pytest.importorskip("onnxruntime")
    plain = _files_after_an_onnx_session(tmp_path / "plain", "plain")
    if not plain:
        pytest.skip("this onnxruntime writes nothing under ~/.cache/Microsoft anyway")
    assert _files_after_an_onnx_session(tmp_path / "nextray", "nextray") == []
