"""One inference engine per checkpoint: the fastest backend that passes the accuracy guard.

``load_engine(path)`` loads a checkpoint and, on the CPU, tries the backends in order
(``onnx-int8``, ``torch-bf16``, ``torch-mixed``) against the fp32 model on the checkpoint's own
calibration radiographs (``calibration.images`` in its extra tensors: real images of its
validation split, stored by ``nextray train``). The first backend within the guard's limits
answers; plain fp32 PyTorch is the fallback. Exported graphs and guard verdicts are cached under
``$NEXTRAY_CACHE`` (default ``~/.cache/nextray``) in a folder named after the weights' SHA-256, so
a second start costs a file read, not an export. A checkpoint's card may record the verdicts
measured when it was released (``card.extra["engine_guard"]``): a backend that failed there is
not rebuilt on every new machine just to fail again (a pass is always re-checked locally).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nextray_core import __version__
from nextray_core.checkpoint import ModelCard, load_checkpoint
from nextray_core.engine.backends import (
    MIXED_FP32_STAGES,
    Backend,
    OnnxInt8,
    TorchBf16,
    TorchFp32,
    cpu_supports_bf16,
    export_onnx,
    onnxruntime_available,
    quantize_int8,
)
from nextray_core.engine.guard import LIMITS, GuardResult, compare
from nextray_core.errors import ConfigError, NextRayError
from nextray_core.explain.cam import CamResult
from nextray_core.explain.methods import Explanation, explain_batch
from nextray_core.files import write_text_atomic
from nextray_core.ood import DepthOod, OodModel, depth_features, load_ood
from nextray_core.options import BACKEND_CHOICES
from nextray_core.transforms import model_batch

CALIBRATION_IMAGES = "calibration.images"
CALIBRATION_LABELS = "calibration.labels"
_GUARD_FORMAT = 2
# Below this many images `auto` answers in fp32: loading the demo's compiled fast path takes
# ~7 s on 2 CPU cores from the cache (building it, about a minute) and it saves ~33 ms an image
# (docs/inference.md), so it pays off from a couple of hundred images on.
SMALL_JOB = 200


def cache_root() -> Path:
    return Path(os.environ.get("NEXTRAY_CACHE") or Path.home() / ".cache" / "nextray")


@dataclass
class InferenceEngine:
    """Answers ``run(batch) -> CamResult`` with ``backend``; ``model`` stays the fp32 reference
    (for pytorch-grad-cam's methods and faithfulness checks, which need gradients or hooks)."""

    model: nn.Module
    card: ModelCard
    extras: dict[str, torch.Tensor]
    backend: Backend
    guard: dict[str, GuardResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ood: OodModel | DepthOod | None = None
    ood_error: str = ""
    ready: threading.Thread | None = None
    reason: str = ""  # why this backend, when that is not "the fastest that passed"

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def run(self, batch: torch.Tensor) -> CamResult:
        """Probabilities, CAMs (logit units) and pooled features for a preprocessed batch
        (each backend moves it where it computes)."""
        return self.backend.run(batch)

    def explain(
        self, batch: torch.Tensor, method: str = "cam", target: str = "abnormal"
    ) -> Explanation:
        """``explain_batch`` with the single-pass CAM through this engine's backend; the
        pytorch-grad-cam methods (gradients, hooks) run on the fp32 model."""
        return explain_batch(self.model, batch, method, target, cam_pass=self.run)

    def ood_score(
        self, batch: torch.Tensor, result: CamResult | Explanation
    ) -> torch.Tensor | None:
        """OOD scores (B, CPU) for a batch this engine answered (``result`` from ``run`` or
        ``explain``), or None without OOD statistics. layer4 comes from the answer's pooled
        features; shallower depths from a partial fp32 pass of the model."""
        if self.ood is None:
            return None
        features = {"layer4": result.pooled_features.float()}
        missing = [depth for depth in self.ood.depths if depth not in features]
        if missing:
            features.update(depth_features(self.model, batch, missing))
        device = next(iter(features.values())).device
        return self.ood.score_depths({k: v.to(device) for k, v in features.items()}).cpu()

    def describe(self) -> str:
        note = getattr(self.backend, "note", "")
        lines = [f"backend: {self.backend_name}" + (f", {note}" if note else "")]
        if self.ready is not None and self.ready.is_alive():
            lines.append("faster paths are being built and checked; fp32 answers meanwhile")
        # a copy: the background thread may be adding verdicts while the dashboard describes
        lines += [result.summary() for result in list(self.guard.values())]
        return "\n".join(lines + self.notes)


def calibration_images(extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The checkpoint's calibration radiographs (N x S x S uint8), or None if too few."""
    images = extras.get(CALIBRATION_IMAGES)
    return None if images is None or len(images) < 4 else images


def calibration_batch(
    extras: dict[str, torch.Tensor], card: ModelCard
) -> tuple[torch.Tensor, np.ndarray | None] | None:
    """The checkpoint's calibration radiographs, preprocessed (B x 3 x S x S), and labels."""
    images = calibration_images(extras)
    if images is None:
        return None
    batch = model_batch(images, card.prep)
    labels = extras.get(CALIBRATION_LABELS)
    return batch, None if labels is None else labels.numpy()


def run_batched(backend: Backend, batch: torch.Tensor, size: int = 8) -> CamResult:
    parts = [backend.run(batch[i : i + size]) for i in range(0, len(batch), size)]
    return CamResult(
        *(torch.cat([getattr(p, f) for p in parts]) for f in CamResult.__dataclass_fields__)
    )


def _versions() -> dict[str, str]:
    versions = {
        "nextray": __version__,
        "torch": torch.__version__,
        "format": str(_GUARD_FORMAT),
        "limits": json.dumps(LIMITS, sort_keys=True),  # tighter limits -> verdicts re-checked
    }
    if onnxruntime_available():
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


class _Cache:
    """``<root>/<sha256[:16]>/``: exported graphs and guard verdicts for one checkpoint."""

    def __init__(self, sha256: str, root: Path | None = None) -> None:
        self.folder = (root or cache_root()) / sha256[:16]
        self.verdicts = self.folder / "guard.json"

    def read(self) -> dict:
        try:
            data = json.loads(self.verdicts.read_text())
        except (OSError, ValueError):
            return {}
        return data if data.get("versions") == _versions() else {}

    def write(self, name: str, result: GuardResult) -> None:
        data = self.read() or {"versions": _versions(), "backends": {}}
        data["backends"][name] = result.to_dict()
        write_text_atomic(self.verdicts, json.dumps(data, indent=1))


def _build(
    name: str, model: nn.Module, card: ModelCard, calibration: Callable, cache: _Cache
) -> Backend:
    """Build backend ``name``; ``calibration()`` is called only if int8 must be quantised."""
    if name in ("torch-bf16", "torch-mixed"):
        stages = MIXED_FP32_STAGES if name == "torch-mixed" else 0
        folder = cache.folder / "inductor"
        return TorchBf16(model, stages, size=card.prep.size, cache_dir=folder)
    int8 = cache.folder / "model.int8.onnx"
    if not int8.exists():
        calibration = calibration()
        if calibration is None:
            raise ConfigError("onnx-int8 needs calibration images in the checkpoint")
        cache.folder.mkdir(parents=True, exist_ok=True)
        fp32 = export_onnx(model, card.prep.size, cache.folder / "model.fp32.onnx")
        quantize_int8(fp32, calibration[0][: _int8_half(calibration)].numpy(), int8)
        fp32.unlink(missing_ok=True)
    return OnnxInt8(int8, threads=torch.get_num_threads())


def _int8_half(calibration) -> int:
    """How many leading calibration images set the int8 ranges (the rest can check them)."""
    return max(2, len(calibration[0]) // 2)


def guard_split(calibration, backend: str = "onnx-int8"):
    """The images a backend is checked on: for int8 the second half of the calibration images
    (the first half set its ranges), for the others all of them (more images, finer AUC: with
    64 abnormal and 64 normal, one swapped pair moves the AUC by 0.00024)."""
    images, labels = calibration
    start = _int8_half(calibration) if backend == "onnx-int8" else 0
    return images[start:], None if labels is None else labels[start:]


def build_engine(
    model: nn.Module,
    card: ModelCard,
    extras: dict[str, torch.Tensor] | None = None,
    *,
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    background: bool = False,
    expected_images: int | None = None,
) -> InferenceEngine:
    """Pick and build the backend (see the module doc); ``backend`` forces one.

    ``expected_images``: the size of the job, if known; under ``auto`` a job of fewer than
    ``SMALL_JOB`` images is answered in fp32 (a fast path costs seconds to load, a minute to
    build, and saves milliseconds an image).

    ``background``: return at once with fp32 answering and build/check the faster paths in a
    thread, swapping the winner in when it is ready (the dashboard: ready in seconds, fast a
    little later). ``engine.ready`` is that thread (join it to wait).
    """
    if backend not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKEND_CHOICES)}")
    extras = extras or {}
    model = model.eval()
    engine = InferenceEngine(model, card, extras, TorchFp32(model))
    try:
        engine.ood = load_ood(extras, card)
    except NextRayError as error:  # broken OOD statistics must not hide the model itself
        engine.ood_error = str(error)
    on_cpu = next(model.parameters()).device.type == "cpu"
    cache = _Cache(card.weights_sha256 or "unhashed", Path(cache_dir) if cache_dir else None)
    if backend == "torch-fp32":
        return engine
    if backend == "auto" and expected_images is not None and expected_images < SMALL_JOB:
        engine.reason = (
            f"auto, {expected_images} image(s): fp32 is ready at once; the faster paths pay off "
            f"from {SMALL_JOB} images; --backend forces one"
        )
        return engine
    if backend != "auto":
        if not on_cpu:
            raise ConfigError(f"{backend} runs on the CPU only; use --device cpu or torch-fp32")
        if backend == "onnx-int8" and not onnxruntime_available():
            raise ConfigError("onnx-int8 needs onnxruntime: pip install onnxruntime onnx")
        engine.backend = _build(
            backend, model, card, lambda: calibration_batch(extras, card), cache
        )
        return engine
    if not on_cpu:
        engine.notes.append("on a GPU: fp32 PyTorch")
        return engine
    candidates = []
    if onnxruntime_available():
        candidates.append("onnx-int8")
    else:
        engine.notes.append("onnxruntime is not installed: no int8 path")
    if cpu_supports_bf16():
        candidates += ["torch-bf16", "torch-mixed"]
    if calibration_images(extras) is None:
        engine.notes.append(
            "the checkpoint carries no calibration images, so no faster path can be checked "
            "against fp32: fp32 PyTorch (add them with nextray_core.engine.add_calibration)"
        )
        return engine
    if background:
        # not a daemon: killing a thread inside the compiler at exit aborts the process
        thread = threading.Thread(target=_choose, args=(engine, candidates, cache), daemon=False)
        engine.ready = thread
        thread.start()
        return engine
    _choose(engine, candidates, cache)
    return engine


def _choose(engine: InferenceEngine, candidates: list[str], cache: _Cache) -> None:
    """Try ``candidates`` in order; the first that passes the guard becomes the backend."""
    model, card = engine.model, engine.card
    calibration = functools.cache(lambda: calibration_batch(engine.extras, card))
    known = cache.read().get("backends", {})
    released = (card.extra or {}).get("engine_guard", {})
    references: dict[int, CamResult] = {}
    for name in candidates:
        verdict = GuardResult(**known[name]) if name in known else None
        if verdict is None and name in released and not released[name].get("passed", False):
            engine.notes.append(
                f"{name} skipped: it failed the accuracy guard when this checkpoint was released "
                f"({'; '.join(released[name].get('failures', []))}); force it with --backend"
            )
            continue
        if verdict is not None and not verdict.passed:
            engine.guard[name] = verdict  # known to fail here: not worth building
            continue
        started = time.perf_counter()
        try:  # an exporter, compiler or runtime failure (or an unwritable cache): not this path
            candidate = _build(name, model, card, calibration, cache)
            if verdict is None:
                images, labels = guard_split(calibration(), name)
                if len(images) not in references:
                    references[len(images)] = run_batched(TorchFp32(model), images)
                reference = references[len(images)]
                verdict = compare(name, reference, run_batched(candidate, images), labels)
                cache.write(name, verdict)
        except Exception as error:
            engine.notes.append(f"{name} could not be used ({type(error).__name__}: {error})")
            continue
        engine.guard[name] = verdict
        if verdict.passed:
            engine.backend = candidate
            engine.notes.append(f"{name} ready in {time.perf_counter() - started:.1f} s")
            return


def load_engine(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    backend: str = "auto",
    cache_dir: str | Path | None = None,
    background: bool = False,
    expected_images: int | None = None,
) -> InferenceEngine:
    """Load a checkpoint folder and build its engine (see ``build_engine``)."""
    model, card, extras = load_checkpoint(path, device=device)
    return build_engine(
        model,
        card,
        extras,
        backend=backend,
        cache_dir=cache_dir,
        background=background,
        expected_images=expected_images,
    )
