"""Training: config resolution, loss weights, a real ResNet-152 learning, exact resume, guards."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import RANDOM_INIT
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from nextray_core import train_state
from nextray_core.checkpoint import load_checkpoint
from nextray_core.cli import build_parser
from nextray_core.commands.train import overrides_from_args
from nextray_core.config import TrainConfig, resolve_config, resume_config
from nextray_core.errors import ConfigError
from nextray_core.loader import RadiographDataset
from nextray_core.model import build_model
from nextray_core.train import (
    EpochProgress,
    EpochSampler,
    Runtime,
    SeededAugmentation,
    TrainingDivergedError,
    fit,
    loss_weights,
    split_frames,
    train_one_epoch,
)
from nextray_core.transforms import Preprocessing, eval_transform, train_transform

TIMING = ("images_per_s", "seconds")


@pytest.fixture(scope="module")
def mura_index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from nextray_core.datasets import load_dataset, make_synthetic_mura

    root = make_synthetic_mura(tmp_path_factory.mktemp("mura"), seed=0)
    return load_dataset("mura", root)


@pytest.fixture(scope="module")
def small_index(mura_index: pd.DataFrame) -> pd.DataFrame:
    """16 train and 12 val images: two steps per epoch at batch 8, both labels in each."""
    parts = [mura_index[mura_index["split"] == s].head(n) for s, n in (("train", 16), ("val", 12))]
    small = pd.concat(parts)
    assert all(set(p["label"]) == {0, 1} for p in parts)
    return small


# Tiny but complete: dropout, rotations, weighted loss and a plateau schedule all consume or
# carry state, so exact resume has to get each of them right. Only layer4's last block and the
# head train (freeze 456 of 467 tensors) to keep the optimizer state small.
TINY = TrainConfig(
    init=str(RANDOM_INIT),
    size=32,
    batch_size=8,
    epochs=2,
    workers=0,
    freeze_layers=456,
    lr=1e-3,
    rotation=10.0,
    loss="type-weighted",
    scheduler="plateau",
    plateau_patience=0,
    progress=False,
)


@pytest.fixture(autouse=True, scope="module")
def _tiny_init(random_init):
    """TINY starts from RANDOM_INIT: write it before this module's tests."""


# ---------------------------------------------------------------- configuration
def test_defaults_are_the_reports_recipe_and_presets_layer_under_file_and_flags(tmp_path):
    config = resolve_config()
    assert (config.arch, config.lr, config.betas, config.weight_decay) == (
        "resnet152", 1e-5, (0.9, 0.999), 0.1,
    )  # fmt: skip
    assert (config.dropout, config.freeze_layers, config.batch_size, config.size) == (
        0.5, 148, 16, 320,
    )  # fmt: skip
    assert (config.hflip, config.rotation, config.loss, config.init) == (
        True, 0.0, "bce", "imagenet",
    )  # fmt: skip

    paper = resolve_config({"recipe": "mura-paper"})
    assert (paper.loss, paper.lr, paper.scheduler, paper.rotation, paper.batch_size) == (
        "type-weighted", 1e-4, "plateau", 30.0, 8,
    )  # fmt: skip
    assert paper.arch == "resnet152"  # the paper's recipe, our architecture

    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"recipe": "mura-paper", "lr": 3e-4, "batch_size": 4}))
    config = resolve_config({"batch_size": 2}, file)
    assert (config.lr, config.batch_size, config.scheduler) == (3e-4, 2, "plateau")

    file.write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config(config_file=file)
    with pytest.raises(ConfigError, match="select"):
        TrainConfig(select="f1")


def test_flags_are_generated_from_the_dataclass():
    args = build_parser().parse_args(
        ["train", "--out", "x", "--lr", "2e-4", "--no-hflip", "--regions", "wrist, Hand",
         "--betas", "0.8", "0.9", "--recipe", "blog", "--select", "kappa"]
    )  # fmt: skip
    overrides = overrides_from_args(args)
    assert set(overrides) == {"lr", "hflip", "regions", "betas", "recipe", "select"}
    config = resolve_config(overrides)
    assert (config.lr, config.hflip, config.regions, config.betas) == (
        2e-4, False, ("hand", "wrist"), (0.8, 0.9),
    )  # fmt: skip
    assert (config.loss, config.scheduler, config.select) == ("class-weighted", "plateau", "kappa")


def test_resume_may_change_runtime_settings_only():
    saved = TINY.to_dict()
    assert resume_config(saved, {"epochs": 5, "workers": 3}).epochs == 5
    with pytest.raises(ConfigError, match=r"\['lr'\]"):
        resume_config(saved, {"lr": 1.0})


def test_type_weights_follow_the_mura_paper():
    # wrist: 3 abnormal / 1 normal studies (one abnormal study has two views); hand: 1 / 1.
    train = pd.DataFrame(
        {
            "study_id": ["w1", "w1", "w2", "w3", "w4", "h1", "h2"],
            "region": ["wrist"] * 5 + ["hand"] * 2,
            "label": [1, 1, 1, 1, 0, 1, 0],
        }
    )
    weights = loss_weights(train, train, "type-weighted")
    # [w_normal, w_abnormal] = [A/(A+N), N/(A+N)] over the type's studies
    assert weights[0].tolist() == pytest.approx([0.75, 0.25])
    assert weights[-1].tolist() == pytest.approx([0.5, 0.5])
    overall = loss_weights(train, train.iloc[:1], "class-weighted")
    assert overall[0].tolist() == pytest.approx([4 / 6, 2 / 6])
    assert loss_weights(train, train, "bce") is None


def test_optimizer_state_survives_flattening():
    param = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.Adam([param], lr=1e-2, betas=(0.8, 0.9))
    for _ in range(2):
        param.sum().backward()
        optimizer.step()
    tensors, meta = train_state.flatten_optimizer_state(optimizer.state_dict())
    json.dumps(meta)  # the non-tensor part is plain JSON
    restored = torch.optim.Adam([torch.nn.Parameter(param.detach().clone())], lr=1.0)
    restored.load_state_dict(train_state.unflatten_optimizer_state(tensors, meta))
    assert restored.param_groups[0]["betas"] == (0.8, 0.9)
    for name in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored.state_dict()["state"][0][name], optimizer.state[param][name])


# ---------------------------------------------------------------- learning
@pytest.mark.slow
def test_resnet152_loss_goes_down_on_synthetic_mura(mura_index):
    train, _ = split_frames(mura_index, ())
    prep = Preprocessing(size=64)
    torch.manual_seed(0)
    model = build_model("resnet152", dropout=0.0, freeze_layers=456)
    fixed = RadiographDataset(train, eval_transform(prep))
    images = torch.stack([fixed[i][0] for i in range(16)])
    labels = torch.stack([fixed[i][1] for i in range(16)])

    def fixed_batch_loss() -> float:
        # train mode: batch statistics (running ones are still at their init); dropout is 0
        model.train()
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(model(images).squeeze(1), labels).item()

    before = fixed_batch_loss()
    data = SeededAugmentation(RadiographDataset(train, train_transform(prep)), seed=0)
    sampler = EpochSampler(data, rank=0, world_size=1, seed=0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    progress = train_one_epoch(
        model, DataLoader(data, 8, sampler=sampler), optimizer,
        Runtime(torch.device("cpu"), "bf16", True), EpochProgress(0),
    )  # fmt: skip
    assert progress.step == math.ceil(len(train) / 8) and progress.seen == len(train)
    after = fixed_batch_loss()
    assert after < before - 0.1, (before, after)


# ---------------------------------------------------------------- exact resume
def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def _log(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, different[:5]
    assert _log(a) == _log(b)


@pytest.mark.slow
def test_resume_continues_bit_for_bit(small_index, tmp_path):
    straight = tmp_path / "straight"
    result = fit(TINY, straight, index=small_index)
    assert [row["epoch"] for row in _log(straight)] == [1, 2]

    # 1 epoch, then resume with the epoch count raised (a runtime setting) for one more
    split = tmp_path / "split"
    fit(replace(TINY, epochs=1), split, index=small_index)
    saved = json.loads((split / "config.json").read_text())
    fit(resume_config(saved, {"epochs": 2}), split, resume=True, index=small_index)
    _assert_same_run(straight, split)

    # Ctrl-C in the middle of epoch 1 (a KeyboardInterrupt from a hook after its step 1 of 2)
    def interrupt(epoch: int, step: int, loss: float) -> None:
        if (epoch, step) == (0, 1):
            raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        fit(TINY, stopped, index=small_index, on_step=interrupt)
    model, card, extras = load_checkpoint(stopped / "last")  # a usable checkpoint
    assert card.training["epoch"] == 0 and isinstance(model, torch.nn.Module)
    assert extras == {}  # weights only: the release step adds the engine's calibration sample
    position = json.loads((stopped / "last" / train_state.STATE_JSON).read_text())["position"]
    assert (position["epoch"], position["step"], position["world_size"]) == (0, 1, 1)
    fit(TINY, stopped, resume=True, index=small_index)
    _assert_same_run(straight, stopped)

    # the best checkpoint describes itself: resolved config and validation metrics
    model, card, _ = load_checkpoint(result.best_dir)
    assert card.training["lr"] == TINY.lr and card.training["loss"] == "type-weighted"
    assert card.training["epoch"] == result.best_epoch
    # what it ran on, resolved: "device": "auto" alone would not tell a CPU run from a GPU one
    assert card.training["device_used"] == "cpu" and card.training["processes"] == 1
    assert card.training["device_name"].endswith("threads")
    best_row = _log(straight)[result.best_epoch - 1]
    assert card.metrics["val"]["loss"] == pytest.approx(best_row["val_loss"])
    assert {"auc", "kappa", "study_auc", "study_kappa"} <= set(card.metrics["val"])
    assert model.fc[-1].out_features == 1


def test_existing_run_is_not_overwritten(small_index, tmp_path):
    (tmp_path / "last").mkdir()
    with pytest.raises(ConfigError, match="--resume"):
        fit(TINY, tmp_path, index=small_index)


@pytest.mark.parametrize("recorded", ["position", "rng"])
def test_resume_with_another_process_count_is_refused(small_index, tmp_path, recorded):
    """Shards, skipped batches and RNG states are per process: 2 cannot resume as 1."""
    last = tmp_path / "last"
    last.mkdir()
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    position = {"epoch": 1, "step": 0, "loss_sum": 0.0, "seen": 0, "seconds": 0.0}
    if recorded == "position":
        position["world_size"] = 2
    train_state.write_resume_files(
        last,
        optimizer_state={"state": {}, "param_groups": []},
        scheduler_state=None,
        position=position,
        rng=[train_state.capture_rng()] * 2,  # runs from before world_size was recorded
    )
    with pytest.raises(ConfigError, match=r"trained by 2 process.*resumed by 1.*--init"):
        fit(TINY, tmp_path, resume=True, index=small_index)


# ---------------------------------------------------------------- guards
@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(small_index, tmp_path, monkeypatch):
    import nextray_core.train_loop as train_module

    real = train_module.weighted_bce
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * math.nan if len(calls) == 2 else loss

    monkeypatch.setattr(train_module, "weighted_bce", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 2.*--lr.*--precision fp32"):
        fit(replace(TINY, epochs=1), tmp_path / "run", index=small_index)
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_saves(small_index, tmp_path):
    import os
    import signal

    def press_ctrl_c(epoch: int, step: int, loss: float) -> None:
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled: stop after the next step

    previous = signal.getsignal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fit(replace(TINY, epochs=2), tmp_path, index=small_index, on_step=press_ctrl_c)
    position = json.loads((tmp_path / "last" / train_state.STATE_JSON).read_text())["position"]
    assert (position["epoch"], position["step"]) == (0, 2)
    load_checkpoint(tmp_path / "last")
    assert signal.getsignal(signal.SIGINT) is previous  # the previous handler is back


def test_cli_train_errors_name_the_fix(tmp_path, capsys):
    from nextray_core.cli import main

    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path)]) == 2
    assert "cannot tell what dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_train_measures_both_paths_and_counts_flops():
    from nextray_core.bench_train import bench_train, count_train_flops, format_results

    forward, step = count_train_flops("resnet152", 224, freeze_layers=0)
    assert 22e9 < forward < 24e9 and 2.8 < step / forward < 3.2  # 3 x 11.5 GMAC-ish
    results = bench_train(device="cpu", size=32, batch_size=2, steps=1, warmup=0)
    assert results["fast_images_per_s"] > 0 and results["fp32_images_per_s"] > 0
    assert results["train_gflop_per_image"] > results["forward_gflop_per_image"] > 0
    assert results["share_of_matmul"] > 0
    assert "speed-up" in format_results(results)
