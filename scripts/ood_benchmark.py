"""OOD benchmark: which inputs each candidate score flags at a fixed false-alarm rate.

    python scripts/ood_benchmark.py --checkpoint checkpoints/demo \\
        --data /work/shared/data/fracatlas --train-limit 800 --out docs/ood_benchmark.md

Fits every candidate on the train split's features (``--train-limit`` images drawn with seed 0,
to spare a CPU), sets each threshold at the 95% and 99% quantile of the validation split's
scores (5% and 1% false alarms), and reports the share of each class of ``ood_set`` (generated
in code) that is flagged, plus what the input checks (``sanity``) say about each class. Runs on
any checkpoint with a ResNet; features are cached under ``--cache`` (keyed on the weights'
hash, the split and the limit) so a second run costs seconds.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nextray_core.checkpoint import load_checkpoint  # noqa: E402
from nextray_core.datasets import detect_dataset_kind, load_dataset  # noqa: E402
from nextray_core.explain.cam import predict_with_cam  # noqa: E402
from nextray_core.imaging import read_radiograph  # noqa: E402
from nextray_core.loader import RadiographDataset  # noqa: E402
from nextray_core.ood import collect_depth_features, fit_depth_ood, fit_ood, load_ood  # noqa: E402
from nextray_core.ood_set import EXPECTED, build_ood_set  # noqa: E402
from nextray_core.sanity import check_radiograph  # noqa: E402
from nextray_core.transforms import as_image_tensor, eval_transform  # noqa: E402

DEPTHS = ("layer2", "layer3", "layer4")
FALSE_ALARMS = (0.05, 0.01)


def split_features(model, card, index, split, limit, cache: Path) -> dict[str, torch.Tensor]:
    rows = index[index["split"] == split].reset_index(drop=True)
    if limit and len(rows) > limit:
        rows = rows.sample(n=limit, random_state=0).reset_index(drop=True)
    path = cache / f"{(card.weights_sha256 or 'nohash')[:12]}-{split}-{len(rows)}.pt"
    if path.is_file():
        return torch.load(path)
    loader = DataLoader(RadiographDataset(rows, eval_transform(card.prep)), batch_size=32)
    features = collect_depth_features(model, loader, DEPTHS)
    with torch.no_grad():
        features["logit"] = torch.cat([predict_with_cam(model, x).logits for x, _, _ in loader])
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


def image_features(model, card, files: list[bytes], *, old_reading: bool = False):
    """(features by depth, logits, sanity codes) for encoded files; ``old_reading`` divides
    16-bit PNGs by 65,535 as the reader did before (to show what the fix changed)."""
    transform = eval_transform(card.prep)
    tensors, notes = [], []
    for data in files:
        if old_reading:
            values = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 65535.0
            pixels = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
            notes.append("")
        else:
            image = read_radiograph(data, warn=False)
            pixels = image.to_uint8()
            notes.append(";".join(n.code for n in check_radiograph(image, refuse=False)))
        tensors.append(transform(as_image_tensor(torch.from_numpy(pixels))))
    batch = torch.stack(tensors)
    chunks = [batch[i : i + 32] for i in range(0, len(batch), 32)]
    features = collect_depth_features(model, chunks, DEPTHS)
    with torch.no_grad():
        logits = predict_with_cam(model, batch).logits
    return features, logits, notes


def candidates(stored, train, val) -> dict[str, callable]:
    """name -> function(features) -> scores; each fitted on ``train``, calibrated on ``val``."""
    out = {}
    if stored is not None:
        out["before: the checkpoint's stored OOD"] = stored.score_depths
    for depth in DEPTHS:
        model = fit_ood(train[depth], calibration=val[depth])
        out[f"ppca {depth}"] = lambda f, m=model, d=depth: m.score(f[d])
    for depths in (("layer2", "layer4"), ("layer2", "layer3", "layer4")):
        model = fit_depth_ood({d: train[d] for d in depths}, {d: val[d] for d in depths})
        out["max over " + "+".join(depths)] = model.score_depths
    bank = torch.nn.functional.normalize(train["layer4"].float(), dim=1)
    out["knn (k=10, cosine) layer4"] = lambda f: (
        (1 - torch.nn.functional.normalize(f["layer4"].float(), dim=1) @ bank.T)
        .topk(10, dim=1, largest=False)
        .values[:, -1]
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="dataset with train/val splits")
    parser.add_argument("--train-limit", type=int, default=0, help="0 = the whole train split")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/nextray-ood-bench"))
    parser.add_argument("--out", type=Path, help="also write the Markdown tables here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, card, extras = load_checkpoint(args.checkpoint)
    model.eval()
    index = load_dataset(detect_dataset_kind(args.data), args.data, seed=0)
    train = split_features(model, card, index, "train", args.train_limit, args.cache)
    val = split_features(model, card, index, "val", 0, args.cache)
    val_paths = index[index["split"] == "val"]["image_path"].tolist()
    radiographs = [read_radiograph(p).pixels for p in val_paths[: args.per_class]]
    files = build_ood_set(radiographs, per_class=args.per_class, seed=0)
    names = list(files)
    classes = np.array([name for name in names for _ in files[name]])
    features, logits, notes = image_features(model, card, [d for n in names for d in files[n]])

    scorers = candidates(load_ood(extras, card), train, val)
    lines = [
        f"Checkpoint `{args.checkpoint}` ({card.name}, {card.prep.size} px); fitted on "
        f"{len(train['layer4'])} train images, thresholds at the validation split's "
        f"({len(val['layer4'])} images) quantiles; {args.per_class} inputs per class.",
        "",
    ]
    header = "| score | " + " | ".join(names) + " | mean (flag classes) |"
    rule = "|---|" + "---|" * (len(names) + 1)
    for rate in FALSE_ALARMS:
        lines += [f"### Detection rate at {rate:.0%} false alarms", "", header, rule]
        for name, score in scorers.items():
            threshold = np.quantile(score(val).numpy(), 1 - rate)
            flagged = score(features).numpy() > threshold
            shares = {c: flagged[classes == c].mean() for c in names}
            mean = np.mean([shares[c] for c in names if EXPECTED[c] != "accept"])
            cells = " | ".join(f"{shares[c]:.2f}" for c in names)
            lines.append(f"| {name} | {cells} | {mean:.2f} |")
        lines.append("")
    lines += [
        "### What the input checks (sanity) say, per class",
        "",
        "| class | expected | codes |",
    ]
    lines.append("|---|---|---|")
    for name in names:
        counts = collections.Counter(notes[i] or "none" for i in np.flatnonzero(classes == name))
        said = ", ".join(f"{code} x{n}" for code, n in counts.most_common())
        lines.append(f"| {name} | {EXPECTED[name]} | {said} |")
    twelve = [files["twelve_bit"][i] for i in range(len(files["twelve_bit"]))]
    _, old_logits, _ = image_features(model, card, twelve, old_reading=True)
    eight = [read_radiograph(p).to_uint8() for p in val_paths[: args.per_class]]
    transform = eval_transform(card.prep)
    batch = torch.stack([transform(as_image_tensor(torch.from_numpy(x))) for x in eight])
    with torch.no_grad():
        reference = torch.sigmoid(predict_with_cam(model, batch).logits)
    new = torch.sigmoid(logits[torch.from_numpy(classes == "twelve_bit")])
    old = torch.sigmoid(old_logits)
    change_old, change_new = (old - reference).abs(), (new - reference).abs()
    lines += [
        "",
        "### 12-bit data in a 16-bit PNG: probability vs the 8-bit original",
        "",
        f"mean |change| before the fix {float(change_old.mean()):.3f} (max "
        f"{float(change_old.max()):.3f}); after {float(change_new.mean()):.3f} "
        f"(max {float(change_new.max()):.3f})",
        "",
        "| 8-bit original | 12-bit, read before | 12-bit, read now |",
        "|---|---|---|",
        *(f"| {a:.3f} | {b:.3f} | {c:.3f} |" for a, b, c in zip(reference, old, new, strict=True)),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
