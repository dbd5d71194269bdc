"""The HTML report: self-contained, numbers from the core, cases with maps; the CLI command."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from test_dashboard import synthetic_folders

from nextray_core.cli import main
from nextray_core.html_report import choose_cases, render_html_report
from nextray_core.metrics import metric_table
from nextray_core.predict import study_table
from nextray_core.report import with_interval
from nextray_core.runs import read_run


@pytest.fixture(scope="module")
def run():
    return read_run(synthetic_folders()[1])


def embedded_pngs(text: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_report_is_self_contained_and_carries_the_cores_numbers(run):
    text = render_html_report(run, 0.5, n_boot=50)
    assert "<script" not in text and "http" not in text and "<link" not in text
    images = embedded_pngs(text)
    assert len(images) == 4 and all(i.format == "PNG" and i.width > 200 for i in images)
    table = metric_table(study_table(run.predictions), 0.5, n_boot=50, seed=0)
    for region in table.index:
        assert f"<td>{with_interval(table, region, 'sensitivity')}</td>" in text
    assert "Chosen cases" not in text


def test_cases_are_the_most_confident_of_each_outcome(run):
    chosen = choose_cases(run.predictions, 0.5, per_kind=1)
    assert set(chosen["kind"]) <= {
        "false positive",
        "false negative",
        "true positive",
        "true negative",
    }
    fp = run.predictions[(run.predictions["label"] == 0) & (run.predictions["probability"] >= 0.5)]
    if len(fp):
        top = chosen[chosen["kind"] == "false positive"]["probability"].iloc[0]
        assert top == fp["probability"].max()


def test_cli_writes_a_report_with_mapped_cases_from_the_runs_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    argv = ["report", str(run.path), "--out", str(out), "--bootstrap", "20", "--cases", "1"]
    assert main([*argv, "--threshold", "0.4", "--backend", "torch-fp32"]) == 0
    text = out.read_text()
    cases = len(choose_cases(run.predictions, 0.4, per_kind=1))
    assert len(embedded_pngs(text)) == 4 + cases and "without maps" not in text
    assert "probability &ge; 0.400" in text
    assert main(["report", str(run.path), "--out", str(tmp_path / "r.txt")]) == 2
    assert "should end in .html" in capsys.readouterr().err


def test_the_runs_cached_trust_scores_are_reported(tmp_path):
    import shutil

    from nextray_core.engine import load_engine
    from nextray_core.run_trust import compute_run_trust, write_run_trust
    from nextray_core.viewer import run_boxes

    checkpoint, source, _ = synthetic_folders()
    shutil.copytree(source, tmp_path / "run")
    copy = read_run(tmp_path / "run")
    assert "Trust in the maps" not in render_html_report(copy, 0.5, n_boot=10)  # none cached
    engine = load_engine(checkpoint, backend="torch-fp32")
    trust = compute_run_trust(engine, copy, run_boxes(copy.path, copy.meta)[0], per_region=1)
    write_run_trust(copy.path, trust)
    text = render_html_report(copy, 0.5, n_boot=10)
    assert "Trust in the maps" in text and "<script" not in text
    local, faith = trust.table("localisation"), trust.table("faithfulness")
    all_local, all_faith = local.loc["all"], faith.loc["all"]
    assert f"<td>{all_local['uniform']:.3f}</td>" in text
    assert (
        f"<td>{all_faith['mean']:.3f} ({all_faith['low']:.3f}-{all_faith['high']:.3f})</td>" in text
    )
