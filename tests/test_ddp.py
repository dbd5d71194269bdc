"""Two-process DDP on the CPU (gloo) through torchrun and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from nextray_core.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_checkpoint_from_rank_0(tmp_path, random_init):
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
        "--init", str(random_init), "--no-progress",
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


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_agents_meet_through_c10d_and_a_resume_needs_the_same_process_count(tmp_path):
    """Two machines, as torchrun sees them: two agents (--nnodes 2) that meet at a c10d
    rendezvous endpoint, here both on localhost with one gloo process each."""
    from nextray_core.datasets import load_dataset, make_synthetic_mura

    index = load_dataset("mura", make_synthetic_mura(tmp_path / "data", seed=2))
    small = pd.concat([index[index["split"] == s].head(n) for s, n in (("train", 8), ("val", 7))])
    small.to_csv(tmp_path / "index.csv", index=False)
    out = tmp_path / "run"
    train = [
        "-m", "nextray_core.cli", "train", "--data", str(tmp_path / "index.csv"),
        "--kind", "index", "--out", str(out), "--size", "64", "--batch-size", "4",
        "--epochs", "1", "--workers", "0", "--init", "none", "--freeze-layers", "0",
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    agent = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        "--rdzv-id", "nextray-test", *train,
    ]  # fmt: skip
    agents = [
        subprocess.Popen(agent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        done = [a.communicate(timeout=600) for a in agents]
    finally:
        for a in agents:
            a.kill()
    for a, (stdout, stderr) in zip(agents, done, strict=True):
        assert a.returncode == 0, stdout[-3000:] + stderr[-3000:]
    lines = "\n".join(stdout for stdout, _ in done).splitlines()
    assert sum(line.startswith("epoch 1:") for line in lines) == 1  # only global rank 0 logs

    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["val_images"] == 7  # both agents' shards gathered
    _, card, _ = load_checkpoint(out / "best")
    assert card.training["processes"] == 2 and card.data["train_images"] == 8
    position = json.loads((out / "last" / "resume_state.json").read_text())["position"]
    assert position["world_size"] == 2

    # one process cannot continue a two-process run exactly: refused, with the fix named
    alone = [sys.executable, "-m", "nextray_core.cli", "train", "--resume", str(out),
             "--epochs", "2"]  # fmt: skip
    refused = subprocess.run(alone, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "trained by 2 process(es) and is resumed by 1" in refused.stderr
    assert "--nnodes x --nproc-per-node = 2" in refused.stderr
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1  # nothing was trained
