"""Copy a small stratified subset of FracAtlas for tests and the demo on a fresh clone.

    python scripts/make_fracatlas_mini.py --src ../shared/data/fracatlas \
        --dest tests/data/fracatlas_mini --per-class 12 --seed 0

Per label, ``--per-class`` files on disk spread over every body part (one each, the rest in
proportion to the body part's share). The subset always holds the quirks the loader must handle:
the image whose dataset.csv label contradicts its folder, one duplicate pair per label, and one
manifest row whose file was left out of the derivative. The CSVs are filtered line by line, so
columns and number formats stay exactly as in the source. The attribution travels with the copy.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

FOLDER_LABEL = {"Fractured": 1, "Non_fractured": 0}
CSVS = ("manifest_original.csv", "dataset.csv", "annotations/boxes_normalized.csv")


def quotas(counts: pd.Series, total: int) -> dict[str, int]:
    """One per body part, the rest by largest remainder on each part's share of ``counts``."""
    share = counts / counts.sum() * (total - len(counts))
    quota = np.floor(share).astype(int) + 1
    left = total - int(quota.sum())
    for part in (share - np.floor(share)).sort_values(ascending=False, kind="stable").index[:left]:
        quota[part] += 1
    return quota.to_dict()


def select(src: Path, per_class: int, seed: int) -> tuple[list[str], list[str]]:
    """Return (paths to copy, manifest paths of left-out files to keep listed)."""
    manifest = pd.read_csv(src / "manifest_original.csv", dtype=str, keep_default_na=False)
    manifest["exists"] = [(src / p).is_file() for p in manifest["path"]]
    manifest["label"] = manifest["path"].str.split("/").str[1].map(FOLDER_LABEL)
    manifest["name"] = manifest["path"].str.split("/").str[-1]
    table = pd.read_csv(src / "dataset.csv", dtype={"image_id": str})
    on_disk = manifest[manifest["exists"]]
    contradicted = on_disk.merge(table, left_on="name", right_on="image_id")
    contradicted = contradicted[contradicted["fractured"] != contradicted["label"]]
    dup_rows = on_disk[
        (on_disk["duplicate_of"] != "") & on_disk["duplicate_of"].isin(on_disk["path"])
    ]

    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for label in (1, 0):
        pool = on_disk[on_disk["label"] == label]
        dup = dup_rows[dup_rows["label"] == label].sort_values("path").iloc[0]
        forced = [dup["duplicate_of"], dup["path"]]
        forced += contradicted.loc[contradicted["label"] == label, "path"].tolist()
        originals = pool[pool["duplicate_of"] == ""]
        parts = originals.groupby("body_part").size()
        for part, quota in quotas(parts, per_class).items():
            in_part = set(pool.loc[pool["body_part"] == part, "path"])
            picked = [p for p in forced if p in in_part]
            candidates = sorted(
                set(originals.loc[originals["body_part"] == part, "path"])
                - set(picked)
                - set(dup_rows["duplicate_of"])
            )
            extra = max(quota - len(picked), 0)
            picked += list(rng.choice(candidates, size=extra, replace=False)) if extra else []
            chosen += [str(p) for p in picked]
    left_out = manifest.loc[~manifest["exists"], "path"].sort_values().iloc[:1].tolist()
    return sorted(chosen), left_out


def filter_csv(source: Path, dest: Path, keep: set[str]) -> None:
    """Copy the header and every line whose first field is in ``keep``, byte for byte."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        lines[0] + "".join(line for line in lines[1:] if line.split(",", 1)[0] in keep),
        encoding="utf-8",
    )


def attribution(src: Path) -> str:
    """The source README's licence section, verbatim."""
    text = (src / "README.md").read_text(encoding="utf-8")
    start = text.index("## Licence and attribution")
    return text[start : text.index("\n## ", start + 1)].rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("../shared/data/fracatlas"))
    parser.add_argument("--dest", type=Path, default=Path("tests/data/fracatlas_mini"))
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    chosen, left_out = select(args.src, args.per_class, args.seed)
    if args.dest.exists():
        shutil.rmtree(args.dest)
    for path in chosen:
        (args.dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.src / path, args.dest / path)
    paths = set(chosen) | set(left_out)
    names = {Path(p).name for p in paths}
    filter_csv(args.src / CSVS[0], args.dest / CSVS[0], paths)
    for name in CSVS[1:]:
        filter_csv(args.src / name, args.dest / name, names)
    note = (
        f"This subset: {len(chosen)} images ({args.per_class} per label over every body part, "
        "including the image whose dataset.csv label contradicts its folder and one duplicate "
        f"pair per label), picked by scripts/make_fracatlas_mini.py --per-class {args.per_class} "
        f"--seed {args.seed}. The CSVs are the originals filtered to these files, plus the "
        f"manifest and dataset.csv rows of {len(left_out)} file left out of the derivative (so "
        "the loader's skip rule is tested). annotations/coco_fracture_masks.json is not copied."
    )
    (args.dest / "README.md").write_text(
        "# FracAtlas, mini subset for tests and the demo\n\n"
        + attribution(args.src)
        + "\n"
        + textwrap.fill(note, width=100)
        + "\n",
        encoding="utf-8",
    )
    size = sum(f.stat().st_size for f in args.dest.rglob("*") if f.is_file())
    print(f"wrote {len(chosen)} images to {args.dest} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
