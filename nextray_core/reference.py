"""The published numbers neXt-Ray compares itself with, and the caveats that go with them.

The CSVs live in ``nextray_core/data/reference/`` (copied from the project's shared reference
folder, with a README naming their sources) so that an installed package can show them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KAPPA_COLUMNS: dict[str, str] = {
    "radiologist_1": "Radiologist 1",
    "radiologist_2": "Radiologist 2",
    "radiologist_3": "Radiologist 3",
    "stanford_densenet169_ensemble": "Stanford DenseNet-169 ensemble",
    "nextray_seed_resnet152": "neXt-Ray seed ResNet-152",
}
SOURCES: dict[str, str] = {
    "mura": 'Rajpurkar et al., "MURA: Large Dataset for Abnormality Detection in '
    'Musculoskeletal Radiographs", arXiv:1712.06957, Table 2 (hidden MURA test set, 207 studies)',
    "seed": "the neXt-Ray report, Tables 2 and 3 (a 640-image random subset of the public MURA "
    "validation set, image level, threshold 0.5)",
}
CAVEATS: tuple[str, ...] = (
    "Different test sets: the radiologists and the Stanford ensemble were measured on the hidden "
    "MURA test set (207 studies), the neXt-Ray seed model on a 640-image random subset of the "
    "public validation set (image level, views of one study on both sides of its split), and "
    "this run on its own split. No two columns are directly comparable.",
    "The MURA paper's 95% intervals (e.g. 0.700-0.710 overall) are about 20x too narrow: its "
    "scoring script uses the variance where the standard error belongs. The intervals here come "
    "from a study-level (cluster) bootstrap instead.",
    "Few studies per region: with about 30 test studies per region, per-region differences "
    "between a model and a radiologist are mostly not statistically resolvable.",
)
LEADERBOARD_KAPPA: dict[str, float] = {
    "best single model (DenseNet-169)": 0.775,
    "best ResNet single model": 0.746,
    "best ensemble": 0.843,
    "best radiologist": 0.778,
}


DATA_DIR = Path(__file__).resolve().parent / "data" / "reference"


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / name).set_index("region")


def published_kappa() -> pd.DataFrame:
    """Cohen's kappa per MURA region (index; plus 'overall'), one column per reader or model."""
    return _read("published_kappa.csv")


def seed_test_metrics() -> pd.DataFrame:
    """The neXt-Ray report's Table 2 (image level, threshold 0.5), indexed by region."""
    return _read("seed_test_metrics.csv")
