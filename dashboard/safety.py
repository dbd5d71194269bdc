"""Refuse to serve with unsafe settings, however the dashboard was started.

``nextray dashboard`` passes the safe settings as flags and ``dashboard/.streamlit/config.toml``
holds them for ``streamlit run`` from any folder, but a flag, an environment variable
(``STREAMLIT_SERVER_ADDRESS``...) or an old Streamlit can still override them. The server has
bound its address before any script runs, so the app can only refuse to serve: it shows what
is wrong and how to start it safely, and stops.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from nextray_core.options import ALLOW_REMOTE_ENV, DASHBOARD_SETTINGS, MAX_UPLOAD_MB


def is_loopback(address: str | None) -> bool:
    """True for this machine only; an empty address means every interface."""
    if not address:
        return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def unsafe_settings(get_option: Callable[[str], Any], allow_remote: bool) -> list[str]:
    """What is unsafe in the running server's settings, one sentence each (empty: all safe)."""
    problems = []
    address = get_option("server.address")
    if not allow_remote and not is_loopback(address):
        shown = address or "every network interface"
        problems.append(
            f"the server listens on {shown}, not on this machine only: anyone on the network "
            "could upload radiographs. Start it with `nextray dashboard` (or "
            f"`--server.address {DASHBOARD_SETTINGS['server.address']}`); to serve other "
            "machines on purpose, `nextray dashboard --address ADDRESS --allow-remote`"
        )
    if get_option("browser.gatherUsageStats"):
        problems.append(
            "usage statistics would be sent to Streamlit: start it with `nextray dashboard` "
            "(or `--browser.gatherUsageStats false`)"
        )
    upload = get_option("server.maxUploadSize")
    if upload is None or upload > MAX_UPLOAD_MB:
        problems.append(
            f"uploads of up to {upload} MB are allowed (the dashboard's limit is {MAX_UPLOAD_MB} "
            f"MB): start it with `nextray dashboard` (or `--server.maxUploadSize {MAX_UPLOAD_MB}`)"
        )
    return problems


def stop_if_unsafe() -> None:
    allowed = os.environ.get(ALLOW_REMOTE_ENV) == "1"
    problems = unsafe_settings(st.get_option, allowed)
    if problems:
        st.error(
            "neXt-Ray refuses to serve with these settings:\n\n"
            + "\n".join(f"- {problem}" for problem in problems)
        )
        st.stop()
