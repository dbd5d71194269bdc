"""Measure ``nextray evaluate`` and the Run map end to end on a large MURA-shaped synthetic tree.

1. writes a synthetic MURA v1.1 tree whose public *train* split holds about ``--images`` images
   (the split of that size in real MURA: 36,808 images), plus a small valid split;
2. makes a checkpoint as ``nextray train`` would leave it, without the training: a random
   ResNet-152 (``init="none"``) at ``--size`` px, put through the one release step (threshold,
   calibration, OOD statistics, the engine's calibration sample) on the tree's val split;
3. runs ``python -m nextray_core.cli evaluate`` on the train split with its own defaults
   (workers, batch size, backend, bootstrap) as a subprocess under ``/usr/bin/time -v``, polling
   the RSS of its whole process tree (dataloader workers included) from /proc;
4. renders the Run map page of that run through ``streamlit.testing.v1.AppTest`` (dashboard/app.py
   with the run and checkpoint selected, as a user opens it) in another subprocess, also under
   ``/usr/bin/time -v``;
5. prints a table and writes everything as JSON (``--json``, default WORK/measure.json).

The tree (and by default the run and checkpoint) is deleted at the end; ``--keep`` keeps them.
Usage: python scripts/explore/measure_large_run.py --images 40000 --work /tmp/large --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES_PER_PATIENT = 4.0  # make_synthetic_mura: 1-3 studies of 1-3 views each, uniformly
VALID_PATIENTS = 60  # the val split the release step chooses the threshold on (~190 images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40_000, help="images to evaluate (about)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/large"), help="scratch folder")
    parser.add_argument("--size", type=int, default=64, help="the model's input size in px")
    parser.add_argument("--image-size", type=int, default=64, help="longer side of the PNGs")
    parser.add_argument("--json", type=Path, help="where to write the results (WORK/measure.json)")
    parser.add_argument("--keep", action="store_true", help="keep tree, checkpoint and run")
    parser.add_argument("--render", nargs=2, metavar=("RUN", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:  # the child process of step 4
        print(json.dumps(render_run_map(Path(args.render[0]), Path(args.render[1]))))
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, checkpoint, run = work / "data", work / "checkpoint", work / "run"
    for old in (data, checkpoint, run):
        shutil.rmtree(old, ignore_errors=True)
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        results["tree"] = write_tree(data, args.images, args.image_size)
        say(f"tree: {results['tree']}")
        results["checkpoint"] = make_checkpoint(checkpoint, data, args.size)
        say(f"checkpoint: {results['checkpoint']}")
        results["evaluate"] = run_evaluate(work, checkpoint, data, run)
        say(f"evaluate: {results['evaluate']}")
        results["run_map"] = run_render(work, run, checkpoint)
        say(f"run map: {results['run_map']}")
    finally:
        out = args.json or work / "measure.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        shutil.rmtree(data, ignore_errors=True)  # the big part: never left on the shared disk
        if not args.keep:
            shutil.rmtree(checkpoint, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
    print(table(results))
    print(f"\nwritten to {out}")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def machine() -> dict:
    memory = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_tree(data: Path, images: int, image_size: int) -> dict:
    from nextray_core.datasets.synthetic import make_synthetic_mura
    from nextray_core.index import MURA_REGIONS

    started = time.perf_counter()
    make_synthetic_mura(
        data,
        patients_train=max(1, round(images / IMAGES_PER_PATIENT)),
        patients_valid=VALID_PATIENTS,
        image_size=image_size,
        seed=0,
        regions=MURA_REGIONS,
    )
    seconds = time.perf_counter() - started
    mura = data / "MURA-v1.1"
    count = {
        split: len((mura / f"{split}_image_paths.csv").read_text().splitlines())
        for split in ("train", "valid")
    }
    return {
        "train_images": count["train"],
        "valid_images": count["valid"],
        "write_s": round(seconds, 1),
        "disk_mb": round(disk_bytes(data) / 1e6, 1),
    }


def disk_bytes(folder: Path) -> int:
    """Blocks used, as du counts them (tens of thousands of small files: mostly block slack)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*"))


def make_checkpoint(folder: Path, data: Path, size: int) -> dict:
    """A random ResNet-152 put through the release step, as ``nextray train`` leaves one."""
    import torch

    from nextray_core.checkpoint import ModelCard, save_checkpoint
    from nextray_core.datasets import load_dataset
    from nextray_core.datasets.tasks import dataset_task
    from nextray_core.model import build_model
    from nextray_core.release import ReleasePolicy, release
    from nextray_core.transforms import Preprocessing

    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("resnet152", init="none", dropout=0.5).eval()
    card = ModelCard(name="large-run-measure", preprocessing=Preprocessing(size=size).to_dict())
    card.training = {"recipe": "none (random weights, for measuring memory)", "data_seed": 0}
    card.data = {"kind": "mura", "note": "synthetic MURA-shaped tree"}
    card.licence = {"weights": "measurement fixture, not a model"}
    save_checkpoint(model, folder, card)
    del model
    index = load_dataset("mura", data, seed=0)
    policy = ReleasePolicy(ood_images=256, n_boot=100)
    release(folder, index, dataset_task("mura", data), policy=policy, say=lambda _: None)
    return {
        "architecture": "resnet152",
        "input_px": size,
        "build_s": round(time.perf_counter() - started, 1),
    }


def timed(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command`` under /usr/bin/time -v, polling its process tree's RSS every 0.5 s."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", *command],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        poll = TreePoll(process.pid)
        poll.start()
        code = process.wait()
        poll.stop = True
        poll.join()
    seconds = time.perf_counter() - started
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({code}); see {log}:\n{text[-3000:]}")
    max_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "wall_s": round(seconds, 1),
        "max_rss_mb": round(int(max_rss.group(1)) / 1024) if max_rss else None,
        "tree_rss_peak_mb": round(poll.peak_total / 2**20),
        "processes_seen": poll.processes,
        "log": str(log),
    }


class TreePoll(threading.Thread):
    """The peak of the summed RSS of a process and all its descendants (read from /proc)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop, self.peak_total, self.processes = root, False, 0, 1

    def run(self) -> None:
        while not self.stop:
            tree = descendants(self.root)
            self.processes = max(self.processes, len(tree))
            self.peak_total = max(self.peak_total, sum(rss_bytes(pid) for pid in tree))
            time.sleep(0.5)


def descendants(root: int) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_evaluate(work: Path, checkpoint: Path, data: Path, run: Path) -> dict:
    command = [
        sys.executable, "-m", "nextray_core.cli", "evaluate", "--checkpoint", str(checkpoint),
        "--data", str(data), "--split", "train", "--out", str(run),
    ]  # fmt: skip
    say("evaluate: " + " ".join(command[1:]))
    # a private engine cache: the fast paths are built for this checkpoint, then deleted
    measured = timed(command, work / "evaluate.log", env={"NEXTRAY_CACHE": str(work / "cache")})
    meta = json.loads((run / "run.json").read_text())
    measured["images"] = meta["counts"]["images"]
    measured["studies"] = meta["counts"]["studies"]
    measured["backend"] = meta.get("backends")
    measured["batch_size"] = meta.get("batch_size")
    measured["images_per_s"] = round(measured["images"] / measured["wall_s"], 1)
    measured["files_kb"] = {p.name: round(p.stat().st_size / 1024) for p in sorted(run.iterdir())}
    return measured


def run_render(work: Path, run: Path, checkpoint: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--render", str(run), str(checkpoint)]
    log = work / "render.log"
    measured = timed(command, log, env={"NEXTRAY_CACHE": str(work / "cache")})
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return {**json.loads(lines[-1]), **measured}


def render_run_map(run: Path, checkpoint: Path) -> dict:
    """The Run map page as a user opens it: the app with run and checkpoint, then the page."""
    import base64

    import numpy as np
    from streamlit.testing.v1 import AppTest

    sys.argv = ["app.py"]
    sys.path.insert(0, str(REPO))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=1800)
    at.session_state["run_path"] = str(run)
    at.session_state["checkpoint_path"] = str(checkpoint)
    started = time.perf_counter()
    at.run()
    first = time.perf_counter() - started
    started = time.perf_counter()
    at.switch_page("views/run_map.py").run()
    page = time.perf_counter() - started
    if at.exception:
        raise SystemExit("the Run map page failed: " + "; ".join(e.value for e in at.exception))
    charts = at.get("plotly_chart")
    spec = charts[0].proto.spec if charts else "{}"

    def count(values) -> int:  # plotly 6 sends arrays as typed base64
        if isinstance(values, dict):
            return len(np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]))
        return len(values)

    drawn = sum(count(trace["x"]) for trace in json.loads(spec).get("data", []))
    captions = [str(c.value) for c in at.caption]
    return {
        "app_first_run_s": round(first, 1),
        "run_map_page_s": round(page, 1),
        "points_drawn": drawn,
        "figure_mb": round(len(spec) / 1e6, 2),
        "caption": next((c for c in captions if "images drawn" in c), ""),
    }


def table(results: dict) -> str:
    tree, evaluate = results.get("tree", {}), results.get("evaluate", {})
    render = results.get("run_map", {})
    files = ", ".join(f"{name} {kb:,} KB" for name, kb in evaluate.get("files_kb", {}).items())
    rows = [
        ("images evaluated", f"{evaluate.get('images', tree.get('train_images', '?')):,}"),
        ("tree: write time, disk", f"{tree.get('write_s')} s, {tree.get('disk_mb')} MB"),
        ("evaluate wall time", f"{evaluate.get('wall_s')} s, {evaluate.get('images_per_s')} img/s"),
        ("evaluate backend, batch", f"{evaluate.get('backend')}, {evaluate.get('batch_size')}"),
        ("evaluate peak RSS (MaxRSS)", f"{evaluate.get('max_rss_mb')} MB"),
        ("evaluate process tree peak", f"{evaluate.get('tree_rss_peak_mb')} MB, "
         f"{evaluate.get('processes_seen')} processes"),
        ("run files", files),
        ("run map: app, page", f"{render.get('app_first_run_s')} s, "
         f"{render.get('run_map_page_s')} s"),
        ("run map: points drawn", f"{render.get('points_drawn')} ({render.get('caption')})"),
        ("run map: figure", f"{render.get('figure_mb')} MB"),
        ("run map: peak RSS", f"{render.get('max_rss_mb')} MB"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


if __name__ == "__main__":
    main()
