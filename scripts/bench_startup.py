"""Wall time of the command line as a user meets it: --help, one-image predict, a small evaluate.

    python scripts/bench_startup.py [--repo DIR ...] [--runs 3] [--images 100] [--json OUT]

Each command runs in a fresh interpreter (``python -m nextray_core.cli ...``) with the working
directory at ``--repo``, so giving a second ``--repo`` (another checkout, say an older commit
unpacked with ``git archive``) measures both on the same machine, checkpoint and images. The
checkouts take turns run by run, so a change in the machine's load hits both alike; compare
within one sitting, never across days. Every checkout gets a fresh engine cache, so its first
``evaluate`` pays for building a fast path if it builds one, and the later runs show the warm
cost; each run is reported.

The checkpoint is ``checkpoints/demo`` of THIS checkout; predict scores one image of its run;
evaluate scores ``--images`` images of that run (an index CSV of every k-th test image) with
the default backend and the default bootstrap.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHECKPOINT = HERE / "checkpoints" / "demo"
RUN = CHECKPOINT / "run"


def small_index(folder: Path, count: int) -> Path:
    """An index CSV of ``count`` of the demo run's test images (every k-th, absolute paths)."""
    with open(RUN / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    step = max(1, len(rows) // count)
    chosen = rows[::step][:count]
    columns = ["image_path", "study_id", "patient_id", "region", "label", "split"]
    out = folder / "index.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in chosen:
            entry = {c: row[c] for c in columns}
            entry["image_path"] = str((RUN / row["image_path"]).resolve())
            writer.writerow(entry)
    return out


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return seconds


def bench(
    repos: list[Path], runs: int, images: int, python: str
) -> dict[Path, dict[str, list[float]]]:
    work = Path(tempfile.mkdtemp(prefix="nextray-startup-"))
    cli = [python, "-m", "nextray_core.cli"]
    one_image = str(sorted(RUN.glob("images/images/*/*.jpg"))[0])
    index = small_index(work, images)
    commands = {
        "nextray --help": [*cli, "--help"],
        "predict, 1 image": [*cli, "predict", one_image, "--checkpoint", str(CHECKPOINT)],
    }
    evaluate = [*cli, "evaluate", "--checkpoint", str(CHECKPOINT), "--data", str(index)]
    evaluate += ["--kind", "index", "--split", "test"]
    results = {
        repo: {name: [] for name in [*commands, f"evaluate, {images} images"]} for repo in repos
    }
    for run in range(runs):
        for number, repo in enumerate(repos):
            env = {**os.environ, "NEXTRAY_CACHE": str(work / f"cache{number}")}
            env.pop("PYTHONPATH", None)
            for name, command in commands.items():
                results[repo][name].append(timed(command, repo, env))
            out = ["--out", str(work / f"run{number}-{run}")]
            results[repo][f"evaluate, {images} images"].append(timed([*evaluate, *out], repo, env))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repo", type=Path, action="append", help="checkout whose code runs (repeatable)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=100, help="images for evaluate")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--json", type=Path, help="also write the times here")
    args = parser.parse_args()
    repos = [repo.resolve() for repo in args.repo or [HERE]]
    results = bench(repos, args.runs, args.images, args.python)
    for repo, times_of in results.items():
        print(f"{repo}: wall seconds per run (fresh interpreter each)")
        for name, times in times_of.items():
            each = ", ".join(f"{t:.1f}" for t in times)
            print(f"  {name:22s} median {statistics.median(times):6.1f}   runs: {each}")
    if args.json:
        text = json.dumps({str(repo): times for repo, times in results.items()}, indent=2)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
