"""Two-process DDP on the CPU (gloo) through torchrun and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from nextray_core.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_checkpoint_from_rank_0(tmp_path):
    from nextray_core.datasets import load_dataset, make_synthetic_mura

    index = load_dataset("mura", make_synthetic_mura(tmp_path / "data", seed=1))
    small = pd.concat([index[index["split"] == s].head(n) for s, n in (("train", 16), ("val", 11))])
    small.to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "nextray_core.cli", "train", "--data", str(tmp_path / "index.csv"),
        "--kind", "index", "--out", str(out), "--size", "32", "--batch-size", "4",
        "--epochs", "1", "--workers", "0", "--freeze-layers", "456", "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("epoch 1:") for line in lines) == 1  # only rank 0 logs
    assert sum(line.startswith("best epoch") for line in lines) == 1

    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["val_images"] == 11  # both shards gathered, the sampler's padding dropped
    _, card, _ = load_checkpoint(out / "best")
    assert card.data["train_images"] == 16 and card.training["epoch"] == 1
    state = json.loads((out / "last" / "resume_state.json").read_text())
    assert len(state["rng"]) == 2  # one RNG state per rank, for an exact resume
    assert not list(out.glob(".*tmp*"))
