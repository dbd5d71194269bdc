"""Measure the run map at MURA-valid and MURA-train sizes without a model: peak memory and time
of the PCA that evaluate stores, the map's layout, and the size of the plotly figure sent to the
browser. Usage: python scripts/explore/measure_map.py [N ...] (default 3197 40000)."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np
import pandas as pd
import plotly.express as px

from nextray_core.run_map import fit_projection, map_frame


def main(sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    for n in sizes:
        # pooled features as evaluate collects them: N x 2048 float32, non-negative (post-ReLU)
        features = np.abs(rng.normal(size=(n, 2048)).astype(np.float32))
        start = time.perf_counter()
        stored = fit_projection(features, ood_distance=rng.random(n))
        fit = time.perf_counter() - start
        predictions = pd.DataFrame(
            {
                "image_path": [f"i{i}.png" for i in range(n)],
                "study_id": [f"s{i // 3}" for i in range(n)],
                "region": rng.choice(["elbow", "hand", "wrist", "shoulder"], n),
                "label": rng.integers(0, 2, n),
                "probability": rng.random(n),
            }
        )
        start = time.perf_counter()
        frame = map_frame(predictions, stored, 0.5)
        figure = px.scatter(frame, x="x", y="y", color="outcome", custom_data=["row"],
                            render_mode="webgl")  # fmt: skip
        spec = figure.to_json()
        draw = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{n:>6} images: PCA-50 {fit:.1f} s; map + figure {draw:.2f} s, "
            f"{frame.attrs['drawn']:,} points drawn, figure JSON {len(spec) / 1e6:.1f} MB; "
            f"peak RSS so far {peak:.0f} MB"
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3197, 40000])
