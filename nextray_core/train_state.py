"""Resume state of a training run, written without pickle, and swapped in atomically.

``OUT/last/`` is a normal checkpoint folder (model.safetensors + card.json, loadable with
``checkpoint.load_checkpoint``) plus two resume files:

- ``resume_state.safetensors``: the optimizer's tensors, flattened to
  ``optimizer.<param index>.<name>`` (e.g. Adam's ``exp_avg``, ``exp_avg_sq``, ``step``);
- ``resume_state.json``: where the run stands (epoch, step within it, running sums, best value),
  the optimizer's param groups and non-tensor state, the scheduler's state dict, and the RNG
  states of torch (CPU and this process's GPU), numpy and Python as plain lists, one per rank.

Everything is written into ``OUT/.last.tmp`` and renamed into place, so ``last/`` is always
a complete, consistent set; a crash between the two renames leaves ``last.old``, which
``find_last`` falls back to. The per-epoch log (JSON lines) lives here too, as a resumed run
cuts it back to the epochs its state has completed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nextray_core.errors import CheckpointError
from nextray_core.files import write_text_atomic

STATE_JSON = "resume_state.json"
STATE_TENSORS = "resume_state.safetensors"
STATE_FORMAT = "nextray-resume/1"
_OPT_PREFIX = "optimizer."


def flatten_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-ready tensors and JSON-ready rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT_PREFIX}{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
        for group in state_dict["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPT_PREFIX):
            index, name = key.removeprefix(_OPT_PREFIX).split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as JSON-ready lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        # this process's own GPU only: touching all of them would open a context on each
        "cuda": [torch.cuda.get_rng_state().tolist()] if torch.cuda.is_initialized() else [],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(states["cuda"][0], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def swap_in(write: Callable[[Path], None], target: Path) -> Path:
    """Build a folder with ``write(tmp)`` and replace ``target`` with it in two renames."""
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f"{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def write_resume_files(
    directory: Path,
    *,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None,
    position: dict[str, Any],
    rng: list[dict[str, Any]],
) -> None:
    tensors, opt_meta = flatten_optimizer_state(optimizer_state)
    save_file(tensors, str(directory / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    payload = {
        "format": STATE_FORMAT,
        "position": position,
        "optimizer": opt_meta,
        "scheduler": scheduler_state,
        "rng": rng,
    }
    (directory / STATE_JSON).write_text(json.dumps(payload) + "\n", encoding="utf-8")


def find_last(out_dir: str | Path) -> Path:
    """``OUT/last`` (or ``last.old`` if a crash hit between renames) holding resume files."""
    out_dir = Path(out_dir)
    for candidate in (out_dir / "last", out_dir / "last.old"):
        if (candidate / STATE_JSON).is_file() and (candidate / STATE_TENSORS).is_file():
            return candidate
    raise CheckpointError(
        f"{out_dir} holds no resume state (expected {out_dir / 'last' / STATE_JSON}); "
        "--resume needs the --out folder of an earlier 'nextray train' run"
    )


def read_resume_files(directory: Path) -> dict[str, Any]:
    """The JSON payload plus the optimizer state dict rebuilt under key 'optimizer_state'."""
    try:
        payload = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / STATE_TENSORS))
    except Exception as error:  # JSON, OS and safetensors errors alike
        raise CheckpointError(f"cannot read the resume state in {directory}: {error}") from error
    if payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{directory / STATE_JSON} is not a {STATE_FORMAT} file")
    payload["optimizer_state"] = unflatten_optimizer_state(tensors, payload["optimizer"])
    return payload


def read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The per-epoch log rows (JSON lines) of epochs 1..upto: what a resumed run keeps."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["epoch"] <= upto]


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_log(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
