"""The dashboard serves a run with the checkpoint that scored it and that checkpoint's threshold.

Two real pairs: the bundled demo (FracAtlas) and a tiny synthetic MURA-shaped run with its own
random checkpoint and its own threshold. Switching runs in the sidebar switches both, and back;
a checkpoint chosen by hand that did not score the run is named as such. The published MURA
kappas appear beside the MURA run only; the Predict page keeps one study at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from streamlit.testing.v1 import AppTest  # noqa: E402
from test_dashboard import (  # noqa: E402, F401  (_no_demo: autouse, applies here too)
    APP,
    SIZE,
    TIMEOUT,
    _no_demo,
    app,
    no_exception,
    synthetic_folders,
    texts,
)

from nextray_core import runs  # noqa: E402
from nextray_core.checkpoint import ModelCard, read_card, save_checkpoint  # noqa: E402
from nextray_core.datasets import load_dataset, make_synthetic_mura  # noqa: E402
from nextray_core.model import build_model  # noqa: E402
from nextray_core.transforms import Preprocessing  # noqa: E402

DEMO = REPO / "checkpoints" / "demo"
MURA_THRESHOLD = 0.375


@pytest.fixture(scope="module")
def mura_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, run): a random 64 px ResNet-152 that 'scored' a synthetic MURA val split."""
    root = tmp_path_factory.mktemp("mura_pair")
    index = load_dataset("mura", make_synthetic_mura(root / "data", seed=2))
    torch.manual_seed(1)
    card = ModelCard(
        name="synthetic-mura-resnet152",
        preprocessing=Preprocessing(size=SIZE).to_dict(),
        default_threshold=MURA_THRESHOLD,
        data={"kind": "mura", "regions": sorted(index["region"].unique())},
        training={"threshold": "Youden's J on the validation split (test fixture)"},
    )
    checkpoint = save_checkpoint(
        build_model("resnet152", init="none"), root / "checkpoint", card, dtype=torch.bfloat16
    )
    rows = index[index["split"] == "val"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    rows["probability"] = np.clip(0.3 + 0.3 * rows["label"] + rng.normal(0, 0.2, len(rows)), 0, 1)
    meta = runs.build_meta(
        checkpoints=[(checkpoint, read_card(checkpoint))],
        predictions=rows,
        dataset_kind="mura",
        data_root=root / "data",
        split="val",
        combine="mean",
        default_threshold=MURA_THRESHOLD,
        batch_size=8,
    )
    return checkpoint, runs.write_run(root / "run", rows, meta)


@pytest.fixture
def with_demo(monkeypatch):
    """This clone's bundled demo as the dashboard's default (the autouse fixture hides it)."""
    from dashboard import state

    if not (DEMO / "card.json").is_file() or not (DEMO / "run" / "run.json").is_file():
        pytest.skip("this copy does not ship the demo checkpoint and run")
    monkeypatch.setattr(state, "DEMO_CHECKPOINT", DEMO)
    monkeypatch.setattr(state, "DEMO_RUN", DEMO / "run")
    return DEMO


def _open_metrics(**session) -> AppTest:
    """The app opened straight on the Metrics page (which loads no model)."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in session.items():
        at.session_state[key] = value
    at.switch_page("views/metrics.py")
    at.run()
    no_exception(at)
    return at


def _sidebar(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in (*at.sidebar.caption, *at.sidebar.warning))


def test_switching_runs_switches_checkpoint_and_threshold_and_back(with_demo, mura_pair):
    mura_checkpoint, mura_run = mura_pair
    demo_threshold = read_card(with_demo).default_threshold
    assert demo_threshold != MURA_THRESHOLD
    at = _open_metrics(known_runs=[str(with_demo / "run"), str(mura_run)])
    assert at.session_state["checkpoint_path"] == str(with_demo)
    assert at.sidebar.slider[0].value == pytest.approx(demo_threshold)
    assert "scored this run" in _sidebar(at)
    assert "for MURA runs only" in texts(at)  # the demo is FracAtlas: no MURA marks

    at.sidebar.selectbox(key="run_path").set_value(str(mura_run)).run()
    no_exception(at)
    assert at.session_state["checkpoint_path"] == str(mura_checkpoint.resolve())
    assert at.sidebar.slider[0].value == pytest.approx(MURA_THRESHOLD)
    assert "synthetic-mura-resnet152** scored this run" in _sidebar(at)
    assert "Reference marks" in texts(at) and "for MURA runs only" not in texts(at)
    assert "chosen by Youden's J on the validation split" in texts(at)

    at.sidebar.selectbox(key="run_path").set_value(str(with_demo / "run")).run()
    no_exception(at)
    assert at.session_state["checkpoint_path"] == str(with_demo)
    assert at.sidebar.slider[0].value == pytest.approx(demo_threshold)

    # a checkpoint chosen by hand that did not score the run: said plainly, threshold kept
    at.sidebar.selectbox(key="checkpoint_path").set_value(str(mura_checkpoint.resolve())).run()
    no_exception(at)
    warning = "\n".join(str(w.value) for w in at.sidebar.warning)
    assert "scored by **" + read_card(with_demo).name in warning
    assert "synthetic-mura-resnet152** (chosen in the sidebar)" in warning
    assert at.sidebar.slider[0].value == pytest.approx(demo_threshold)


def test_the_card_threshold_is_offered_beside_presets_that_name_their_split(mura_pair):
    mura_checkpoint, mura_run = mura_pair
    at = _open_metrics(run_path=str(mura_run), checkpoint_path=str(mura_checkpoint), threshold=0.9)
    card_button = at.button(key="preset_card")
    assert card_button.label == f"model card · {MURA_THRESHOLD:.3f}"
    assert at.button(key="preset_youden").label.startswith("Youden (val) · ")
    assert "fitted on this run's own 'val' split" in texts(at)
    card_button.click().run()
    assert at.sidebar.slider[0].value == pytest.approx(MURA_THRESHOLD)


def _upload(at: AppTest, paths: list[Path]) -> AppTest:
    files = [(p.name, p.read_bytes(), "image/jpeg") for p in paths]
    at.file_uploader[0].set_value(files).run()
    no_exception(at)
    return at


def _views(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Views scored").value)


def test_a_new_upload_starts_a_new_study_unless_views_are_added():
    checkpoint, run, _ = synthetic_folders()
    images = sorted((REPO / "tests" / "data" / "fracatlas_mini" / "images").glob("*/*.jpg"))
    at = app("predict", run, checkpoint)
    _upload(at, images[:2])
    assert _views(at) == 2
    _upload(at, images[2:3])  # a new study: the previous two views are gone
    assert _views(at) == 1
    assert [r.name for r in at.session_state["predict_results"]] == [images[2].name]
    at.toggle(key="predict_add_views").set_value(True).run()
    _upload(at, images[3:4])  # added on purpose
    assert [r.name for r in at.session_state["predict_results"]] == [images[2].name, images[3].name]
    assert at.toggle(key="predict_add_views").value is False  # the next upload starts anew
    at.button(key="predict_clear").click().run()
    no_exception(at)
    assert not at.metric and "Upload one or more views" in texts(at)


@pytest.mark.slow
def test_a_model_trained_here_opens_with_its_own_checkpoint_and_threshold(
    with_demo, tmp_path, random_init
):
    """`nextray train` (its release step included) -> `nextray evaluate` -> the dashboard."""
    from nextray_core.cli import main

    root = make_synthetic_mura(tmp_path / "data", patients_train=10, patients_valid=8, seed=3)
    train = ["train", "--data", str(root), "--out", str(tmp_path / "train"), "--init",
             str(random_init), "--size", "32", "--epochs", "1", "--batch-size", "8", "--precision",
             "fp32", "--workers", "0", "--freeze-layers", "456", "--no-progress"]  # fmt: skip
    assert main(train) == 0
    best = (tmp_path / "train" / "best").resolve()
    card = read_card(best)
    assert card.class_names == ("normal", "abnormal") and "release" in card.extra
    run = tmp_path / "run"
    evaluate = ["evaluate", "--checkpoint", str(best), "--data", str(root), "--split", "test",
                "--out", str(run), "--bootstrap", "0", "--backend", "torch-fp32"]  # fmt: skip
    assert main(evaluate) == 0

    at = _open_metrics(known_runs=[str(with_demo / "run"), str(run)])
    assert at.session_state["checkpoint_path"] == str(with_demo)
    at.sidebar.selectbox(key="run_path").set_value(str(run)).run()
    no_exception(at)
    assert at.session_state["checkpoint_path"] == str(best)
    assert at.sidebar.slider[0].value == pytest.approx(card.default_threshold)
    assert "scored this run" in _sidebar(at)
    at.sidebar.selectbox(key="run_path").set_value(str(with_demo / "run")).run()
    no_exception(at)
    assert at.session_state["checkpoint_path"] == str(with_demo)
    assert at.sidebar.slider[0].value == pytest.approx(read_card(with_demo).default_threshold)
