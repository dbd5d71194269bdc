"""Shared fixtures: small models and real sample images, no network, no GPU."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# A state dict to start training from: freezing layers is refused with --init none (frozen
# random layers never learn), so tests that freeze most of the network to stay fast start here.
# A fixed path (per test process) so that module-level configs can name it.
RANDOM_INIT = Path(tempfile.gettempdir()) / f"nextray-tests-{os.getpid()}" / "resnet152.safetensors"
FRACATLAS_MINI = REPO / "tests" / "data" / "fracatlas_mini"
SHARED_FRACATLAS = REPO.parent / "shared" / "data" / "fracatlas"


@pytest.fixture(scope="session", autouse=True)
def _private_engine_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The engine's compiled code and verdicts go to a temporary folder, not ~/.cache/nextray
    (subprocesses such as the browser test's dashboard inherit it)."""
    import os

    os.environ["NEXTRAY_CACHE"] = str(tmp_path_factory.mktemp("nextray_cache"))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download (e.g. torchvision weights) fails loudly instead of hanging."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="session")
def resnet152():
    """One randomly initialised ResNet-152 for the whole session (building it takes seconds)."""
    from nextray_core.model import build_model

    torch.manual_seed(0)
    return build_model("resnet152", init="none", dropout=0.5).eval()


@pytest.fixture(scope="session")
def random_init(resnet152):
    """RANDOM_INIT written once per session (a random ResNet-152 state dict), removed after."""
    from safetensors.torch import save_file

    RANDOM_INIT.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in resnet152.state_dict().items()}, str(RANDOM_INIT))
    yield RANDOM_INIT
    shutil.rmtree(RANDOM_INIT.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright for a browser test module (tests/browser_support.py
    has the rest). Per module, not per session: Playwright's sync API must not be left running
    while later AppTest modules start their own event loops."""
    from browser_support import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
