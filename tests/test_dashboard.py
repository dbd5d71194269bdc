"""The dashboard, page by page, through Streamlit's AppTest on a synthetic run and checkpoint.

The checkpoint is a randomly initialised ResNet-152 at 64 px (with OOD statistics), the run a
hand-made predictions table over real FracAtlas images from tests/data/fracatlas_mini. Every
number the pages show is compared with nextray_core's own functions.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from nextray_core import curves, runs  # noqa: E402
from nextray_core.checkpoint import (  # noqa: E402
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from nextray_core.datasets import load_dataset  # noqa: E402
from nextray_core.explain import explain_batch, predict_with_cam  # noqa: E402
from nextray_core.imaging import read_radiograph  # noqa: E402
from nextray_core.metrics import confusion, metric_table  # noqa: E402
from nextray_core.model import build_model, output_linear  # noqa: E402
from nextray_core.ood import fit_ood  # noqa: E402
from nextray_core.predict import study_table  # noqa: E402
from nextray_core.transforms import Preprocessing, as_image_tensor, eval_transform  # noqa: E402

FRACATLAS_MINI = REPO / "tests" / "data" / "fracatlas_mini"
APP = REPO / "dashboard" / "app.py"
PAGES = ("predict", "metrics", "errors", "teaching", "model")
TIMEOUT = 120
SIZE = 64


def model_input(path_or_bytes, prep: Preprocessing) -> torch.Tensor:
    pixels = read_radiograph(path_or_bytes).to_uint8()
    return eval_transform(prep)(as_image_tensor(torch.from_numpy(pixels)))[None]


def make_checkpoint(folder: Path, index: pd.DataFrame) -> Path:
    """A random 64 px ResNet-152 with OOD statistics fitted on the sample images' features."""
    torch.manual_seed(0)
    model = build_model("resnet152", init="none", dropout=0.5).eval()
    with torch.no_grad():  # as saved (bf16 below): the OOD statistics must describe these weights
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.bfloat16).float())
    prep = Preprocessing(size=SIZE)
    batch = torch.cat([model_input(p, prep) for p in index["image_path"]])
    first = predict_with_cam(model, batch)
    with torch.no_grad():  # rescale the head so that probabilities spread out instead of all 1.0
        logits = first.logits.double()
        head = output_linear(model)
        head.bias.copy_((head.bias - logits.mean().float()) / logits.std().float())
        head.weight /= logits.std().float()
    ood = fit_ood(first.pooled_features, dims=8, seed=0)
    card = ModelCard(name="synthetic-test-resnet152", preprocessing=prep.to_dict())
    card.training = {"recipe": "none (random weights for tests)", "epochs": 0}
    card.data = {"kind": "fracatlas", "note": "synthetic"}
    card.metrics = {"test (image level)": {"overall": {"kappa": 0.1, "kappa_low": 0.0}}}
    card.licence = {"weights": "test fixture, not a model"}
    card.extra["ood"] = ood.card_extra()
    return save_checkpoint(
        model, folder, card, dtype=torch.bfloat16, extra_tensors=ood.to_tensors()
    )


def make_run(folder: Path, checkpoint: Path, index: pd.DataFrame, seed: int = 0) -> Path:
    """A hand-made predictions table: labels from FracAtlas, probabilities that lean right.

    Images of one label and region are paired into two-view studies, so that study level
    differs from image level.
    """
    rng = np.random.default_rng(seed)
    rows = index.sort_values(["label", "region", "image_path"]).reset_index(drop=True)
    key = rows["label"].astype(str) + rows["region"]
    rows["study_id"] = key + "-" + (rows.groupby(key).cumcount() // 2).astype(str)
    rows["patient_id"] = rows["study_id"]
    rows["split"] = "test"
    rows["probability"] = np.clip(0.25 + 0.4 * rows["label"] + rng.normal(0, 0.2, len(rows)), 0, 1)
    card = read_card(checkpoint)
    meta = runs.build_meta(
        checkpoints=[(checkpoint, card)],
        predictions=rows,
        dataset_kind="fracatlas",
        data_root=FRACATLAS_MINI,
        split="test",
        combine="mean",
        default_threshold=0.5,
        batch_size=8,
    )
    return runs.write_run(folder, rows, meta)


@functools.cache
def synthetic_folders() -> tuple[Path, Path, Path]:
    """(checkpoint, run, second run), built once per test process and shared with the browser
    tests; removed when the process exits."""
    root = Path(tempfile.mkdtemp(prefix="nextray-dashboard-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    index = load_dataset("fracatlas", FRACATLAS_MINI).reset_index(drop=True)
    checkpoint = make_checkpoint(root / "checkpoint", index)
    first = make_run(root / "run", checkpoint, index, seed=0)
    second = make_run(root / "run_b", checkpoint, index, seed=1)
    return checkpoint, first, second


@pytest.fixture(scope="module")
def sample_index() -> pd.DataFrame:
    return load_dataset("fracatlas", FRACATLAS_MINI).reset_index(drop=True)


@pytest.fixture(scope="module")
def synthetic():
    """(checkpoint folder, run folder, second run folder)."""
    return synthetic_folders()


@pytest.fixture(scope="module")
def loaded(synthetic):
    """The synthetic checkpoint loaded by the core, as the dashboard loads it."""
    model, card, _ = load_checkpoint(synthetic[0])
    return model, card


@pytest.fixture(autouse=True)
def _no_demo(monkeypatch, tmp_path):
    """Pages must not depend on whether this copy ships the demo or holds runs in ./runs."""
    from dashboard import state

    monkeypatch.setattr(state, "CHECKPOINTS", tmp_path / "no_checkpoints")
    monkeypatch.setattr(state, "DEMO_CHECKPOINT", tmp_path / "no_checkpoints" / "demo")
    monkeypatch.setattr(state, "DEMO_RUN", tmp_path / "no_checkpoints" / "demo" / "run")
    monkeypatch.setattr(state, "RUNS_FOLDER", tmp_path / "no_runs")
    monkeypatch.setattr(sys, "argv", ["app.py"])


def app(page: str = "predict", run: Path | None = None, checkpoint: Path | None = None, **extra):
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if run is not None:
        at.session_state["run_path"] = str(run)
    if checkpoint is not None:
        at.session_state["checkpoint_path"] = str(checkpoint)
    for key, value in extra.items():
        at.session_state[key] = value
    at.run()
    if page != "predict":
        at.switch_page(f"views/{page}.py").run()
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    parts = [m.value for m in (*at.markdown, *at.info, *at.warning, *at.error, *at.caption)]
    return "\n".join(str(p) for p in parts)


def jpeg(path: Path) -> bytes:
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_a_demo_and_says_what_is_missing(page):
    at = app(page)
    no_exception(at)
    shown = texts(at)
    assert "No model yet" in shown or "No run yet" in shown
    assert at.sidebar.slider[0].value == 0.5


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_the_synthetic_run(page, synthetic):
    checkpoint, run, _ = synthetic
    at = app(page, run, checkpoint)
    no_exception(at)
    shown = texts(at)
    assert "No model yet" not in shown and "No run yet" not in shown


def test_command_line_arguments_choose_the_run_and_checkpoint(synthetic, monkeypatch):
    checkpoint, run, _ = synthetic
    monkeypatch.setattr(sys, "argv", ["app.py", "--run", str(run), "--checkpoint", str(checkpoint)])
    at = app("model")
    no_exception(at)
    assert at.session_state["run_path"] == str(run)
    assert at.session_state["checkpoint_path"] == str(checkpoint)
    assert at.header[0].value == "synthetic-test-resnet152"
    assert any("research and teaching" in w.value for w in at.warning)


def test_uploading_a_real_radiograph_gives_its_probability_and_map(synthetic, loaded, sample_index):
    checkpoint, run, _ = synthetic
    path = Path(sample_index["image_path"].iloc[0])
    at = app("predict", run, checkpoint)
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    model, card = loaded
    with torch.no_grad():
        expected = float(torch.sigmoid(model(model_input(path, card.prep)))[0, 0])
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Probability abnormal"]) == pytest.approx(expected, abs=5e-4)
    assert float(metrics["Study probability (mean of views)"]) == pytest.approx(expected, abs=5e-4)
    assert metrics["Verdict"] == ("abnormal" if expected >= 0.5 else "normal")
    assert len(at.image) == 2  # the radiograph and its map


def test_a_corrupt_upload_is_reported_and_the_other_views_still_work(synthetic, sample_index):
    checkpoint, run, _ = synthetic
    good = [Path(p) for p in sample_index["image_path"].iloc[:2]]
    at = app("predict", run, checkpoint)
    files = [
        (good[0].name, good[0].read_bytes(), "image/jpeg"),
        ("broken.png", b"\x89PNG\r\n\x1a\nthis is not really a png", "image/png"),
        ("notes.txt", b"hello", "text/plain"),
        (good[1].name, good[1].read_bytes(), "image/jpeg"),
    ]
    at.file_uploader[0].set_value(files).run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 2
    assert "broken.png" in errors[0] and "notes.txt" in errors[1]
    probabilities = [m for m in at.metric if m.label == "Probability abnormal"]
    assert len(probabilities) == 2
    assert next(m for m in at.metric if m.label == "Views scored").value == "2"
    # the page keeps working: change the map settings, everything is still there
    at.selectbox(key="predict_method").set_value("gradcam").run()
    no_exception(at)
    assert len([m for m in at.metric if m.label == "Probability abnormal"]) == 2


def test_the_map_on_the_page_is_the_cores_map(synthetic, loaded, sample_index):
    """The overlay drawn for 'normal' evidence equals the core's overlay of the core's map."""
    from dashboard import inference

    checkpoint, run, _ = synthetic
    path = Path(sample_index["image_path"].iloc[3])
    at = app("predict", run, checkpoint)
    at.radio(key="predict_target").set_value("normal")
    at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    model, card = loaded
    core = explain_batch(model, model_input(path, card.prep), "cam", "normal").maps[0]
    result = inference._explain(
        str(checkpoint), card.weights_sha256, path.read_bytes(), path.name, "cam", "normal"
    )
    np.testing.assert_allclose(result.cam, core, atol=1e-5)


def table_on_page(at: AppTest) -> pd.DataFrame:
    """The raw metric table shown in the 'Counts and raw numbers' expander."""
    for frame in at.dataframe:
        value = frame.value
        if "kappa_low" in value.columns:
            return value
    raise AssertionError("no raw metric table on the page")


@pytest.mark.parametrize("level", ["image", "study"])
def test_moving_the_threshold_updates_confusion_and_metrics_to_the_cores(synthetic, level):
    checkpoint, run, _ = synthetic
    predictions = runs.read_run(run).predictions
    rows = predictions if level == "image" else study_table(predictions)
    at = app("metrics", run, checkpoint)
    at.radio(key="metrics_level").set_value(level).run()
    before = table_on_page(at)
    for value in (0.3, 0.62):
        at.sidebar.slider[0].set_value(value).run()
        no_exception(at)
        expected = metric_table(rows, value, n_boot=1000, seed=0)
        shown = table_on_page(at)
        pd.testing.assert_frame_equal(shown, expected, check_names=False, check_dtype=False)
        (tn, fp), (fn, tp) = confusion(rows["label"], rows["probability"], value)
        assert shown.loc["overall", ["tn", "fp", "fn", "tp"]].tolist() == [tn, fp, fn, tp]
    assert not shown[["tn", "fp", "fn", "tp"]].equals(before[["tn", "fp", "fn", "tp"]])


def test_presets_and_a_roc_click_set_the_shared_threshold(synthetic):
    checkpoint, run, _ = synthetic
    rows = runs.read_run(run).predictions
    presets = curves.threshold_presets(rows["label"].to_numpy(), rows["probability"].to_numpy())
    at = app("metrics", run, checkpoint)
    at.button(key="preset_youden").click().run()
    no_exception(at)
    assert at.sidebar.slider[0].value == pytest.approx(presets["youden"])
    table = table_on_page(at)
    expected = metric_table(rows, presets["youden"], n_boot=1000, seed=0)
    pd.testing.assert_frame_equal(table, expected, check_names=False, check_dtype=False)
    # the threshold is shared: another page sees it
    at.switch_page("views/errors.py").run()
    assert at.sidebar.slider[0].value == pytest.approx(presets["youden"])

    from dashboard.figures import threshold_from_selection

    roc = curves.roc_points(rows["label"].to_numpy(), rows["probability"].to_numpy())
    point = {"curve_number": 1, "point_index": 3, "customdata": float(roc["threshold"][3])}
    assert threshold_from_selection({"selection": {"points": [point]}}) == roc["threshold"][3]
    assert (
        threshold_from_selection({"selection": {"points": [{**point, "curve_number": 3}]}}) is None
    )
    assert threshold_from_selection({"selection": {"points": []}}) is None


def test_second_run_overlay_and_downloads(synthetic):
    checkpoint, run, second = synthetic
    at = app("metrics", run, checkpoint, known_runs=[str(run), str(second)])
    at.selectbox(key="metrics_compare").set_value(str(second)).run()
    no_exception(at)
    table2 = at.table[0].value  # Table 2 with each region's rows of both runs together
    shown_runs = [name for _, name in table2.index]
    assert len(set(shown_runs)) == 2 and shown_runs[0] != shown_runs[1]  # interleaved
    assert table2.index[0][0] == table2.index[1][0]
    names = [b.proto.label for b in at.get("download_button")]
    assert sum("CSV" in n for n in names) == 2
    assert [n for n in names if n.endswith("(png)")] == [
        f"{stem} (png)" for stem in ("roc", "pr", "confusion", "kappa", "reliability")
    ]


def test_every_metrics_figure_downloads_as_a_small_png(synthetic):
    """The PNGs the Metrics page offers, drawn from the page's own data (two runs compared)."""
    import io

    from PIL import Image

    from dashboard import figures, figures_png
    from nextray_core import reference

    _, run, second = synthetic
    tables = []
    sets = []
    for path in (run, second):
        predictions = runs.read_run(path).predictions
        table = metric_table(predictions, 0.5, n_boot=20)
        labels, scores = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
        row = table.loc["overall"]
        roc = figures.Curve(path.name, curves.roc_points(labels, scores),
                            (1 - row["specificity"], row["sensitivity"]))  # fmt: skip
        pr = figures.Curve(path.name, curves.pr_points(labels, scores),
                           (row["sensitivity"], row["precision"]))  # fmt: skip
        bins = (path.name, curves.reliability_table(labels, scores),
                curves.expected_calibration_error(labels, scores))  # fmt: skip
        tables.append((path.name, table))
        sets.append((roc, pr, bins))
    pngs = [
        figures_png.roc_png([s[0] for s in sets], "ROC"),
        figures_png.pr_png([s[1] for s in sets], "PR", 0.4),
        figures_png.confusion_png(tables[0][1], ("not fractured", "fractured")),
        figures_png.kappa_png(tables, reference.published_kappa().iloc[:0], {}),
        figures_png.reliability_png([s[2] for s in sets]),
    ]
    for data in pngs:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300
        assert len(data) < 400_000  # not a 4.8 MB HTML page
        assert len(np.unique(np.asarray(image.convert("L")))) > 8  # something was drawn


def test_errors_gallery_lists_false_positives_and_negatives_and_opens_a_study(synthetic):
    checkpoint, run, _ = synthetic
    rows = runs.read_run(run).predictions
    at = app("errors", run, checkpoint)
    no_exception(at)
    wrong = rows[(rows["probability"] >= 0.5) != (rows["label"] == 1)]
    open_buttons = [b for b in at.button if b.label == "Open study"]
    assert len(open_buttons) == min(12, len(wrong)) > 0
    open_buttons[0].click().run()
    no_exception(at)
    study = at.session_state["errors_open"]
    assert any(study in h.value for h in at.subheader)
    # every view of that study is shown (plus the gallery's tiles)
    assert len(at.image) >= len(rows[rows["study_id"] == study])
    at.sidebar.slider[0].set_value(0.99).run()  # almost everything is a false negative now
    assert f"false negatives **{int((rows['label'] == 1).sum())}**" in texts(at)
    at.radio(key="errors_kind").set_value("false positives").run()
    no_exception(at)
    assert not [b for b in at.button if b.label == "Open study"]  # none at 0.99


def test_teaching_side_by_side_and_quiz_keeps_score(synthetic):
    checkpoint, run, _ = synthetic
    rows = runs.read_run(run).predictions
    at = app("teaching", run, checkpoint)
    no_exception(at)
    assert any(h.value.startswith("Normal") for h in at.subheader)
    assert any(h.value.startswith("Abnormal") for h in at.subheader)
    at.radio(key="teach_mode").set_value("Quiz").run()
    no_exception(at)
    score = 0
    for _ in range(3):
        quiz = at.session_state["quiz_now"]
        truth = int(rows.loc[rows["image_path"] == quiz["case"], "label"].iloc[0])
        assert not any("this case is" in s.value for s in (*at.success, *at.error))  # hidden
        at.button(key="quiz_abnormal").click().run()
        no_exception(at)
        score += truth == 1
        assert any("this case is" in s.value for s in (*at.success, *at.error))  # revealed
        assert at.metric[0].value == f"{score} / {_ + 1}"
        at.button(key="quiz_next").click().run()


def test_model_card_page_shows_card_and_intended_use(synthetic):
    checkpoint, run, _ = synthetic
    at = app("model", run, checkpoint)
    no_exception(at)
    assert at.header[0].value == "synthetic-test-resnet152"
    shown = texts(at)
    assert "not for clinical use" in shown and "CC BY 4.0" in shown
    assert any(t.value.shape[0] >= 5 for t in at.table)


def test_eight_sessions_predicting_at_once_each_get_their_own_result(
    synthetic, loaded, sample_index
):
    checkpoint, run, _ = synthetic
    model, card = loaded
    paths = [Path(p) for p in sample_index["image_path"].iloc[:8]]
    expected = {}
    for path in paths:
        result = explain_batch(model, model_input(path, card.prep))
        expected[path.name] = (float(result.probabilities[0]), result.maps[0])
    sessions = [app("predict", run, checkpoint) for _ in paths]
    for at, path in zip(sessions, paths, strict=True):
        at.file_uploader[0].set_value((path.name, path.read_bytes(), "image/jpeg"))
    barrier, failures = threading.Barrier(len(paths)), []

    def work(at):
        try:
            barrier.wait()
            at.run()
        except BaseException as error:  # reported below, with the session's file
            failures.append(error)

    threads = [threading.Thread(target=work, args=(at,)) for at in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    for at, path in zip(sessions, paths, strict=True):
        no_exception(at)
        shown = [float(m.value) for m in at.metric if m.label == "Probability abnormal"]
        assert shown == [pytest.approx(expected[path.name][0], abs=5e-4)]
        assert at.image[0].captions == [path.name]
        (result,) = at.session_state["predict_results"]
        assert result.name == path.name
        np.testing.assert_allclose(result.cam, expected[path.name][1], atol=1e-5)
    probabilities = {round(p, 4) for p, _ in expected.values()}
    assert len(probabilities) > 1  # the images differ, so a mix-up would be caught


def test_a_run_opens_with_the_checkpoint_that_scored_it_not_the_demo(synthetic, monkeypatch):
    from dashboard import state

    checkpoint, run, _ = synthetic
    demo = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
    monkeypatch.setattr(state, "DEMO_CHECKPOINT", demo)  # a clone that ships the demo
    monkeypatch.setattr(sys, "argv", ["app.py", "--run", str(run)])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    no_exception(at)
    assert at.session_state["checkpoint_path"] == str(checkpoint.resolve())
    monkeypatch.setattr(sys, "argv", ["app.py"])  # no run given: the demo's own pairing
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert at.session_state["checkpoint_path"] == str(demo)
