"""The names a user can choose from, spelled once and without importing torch.

Command-line parsers (``nextray --help`` must answer in well under a second), the training
config and the dashboard's widgets all take their choices from here; the modules that act on a
choice (the engine, the CAM methods, the model builder) import these tuples and check against
them, so a new backend or method is added in one place.
"""

from __future__ import annotations

# model.build_model
ARCHITECTURES: tuple[str, ...] = ("resnet152", "resnet101", "densenet169")
INITS: tuple[str, ...] = ("none", "imagenet")  # or a path to a local state dict / checkpoint

# config.TrainConfig
RECIPES: tuple[str, ...] = ("report", "mura-paper", "blog")
LOSSES: tuple[str, ...] = ("bce", "class-weighted", "type-weighted")
SCHEDULERS: tuple[str, ...] = ("none", "plateau", "step")
SELECTIONS: tuple[str, ...] = ("loss", "kappa", "auc")
PRECISIONS: tuple[str, ...] = ("bf16", "fp32")
# the release step after training (release.py)
THRESHOLD_POLICIES: tuple[str, ...] = ("youden", "sensitivity", "specificity")
CALIBRATIONS: tuple[str, ...] = ("platt", "temperature", "none")

# datasets.load_dataset; "auto" guesses the kind from the folder layout
DATASET_KINDS: tuple[str, ...] = ("mura", "fracatlas", "folder", "index")
DATA_KINDS: tuple[str, ...] = ("auto", *DATASET_KINDS)

# engine.load_engine: the backends in the order `auto` tries them on a CPU
BACKENDS: tuple[str, ...] = ("onnx-int8", "torch-bf16", "torch-mixed", "torch-fp32")
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)

# predict: how an ensemble's members are combined
COMBINE_RULES: tuple[str, ...] = ("mean", "vote")

# explain: our single-pass CAM, then pytorch-grad-cam's methods by their class names
LIBRARY_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "eigencam": "EigenCAM",
}
# The same library methods on layer3's maps (ResNets): 2x finer than layer4 (20 x 20 at 320 px),
# for fractures smaller than one layer4 cell
FINE_METHODS: dict[str, str] = {"gradcam-layer3": "GradCAM", "layercam-layer3": "LayerCAM"}
METHODS: tuple[str, ...] = ("cam", *LIBRARY_METHODS, *FINE_METHODS)
TARGETS: tuple[str, ...] = ("abnormal", "normal")
# explain.trust.faithfulness: what removed pixels become
FAITHFULNESS_BASELINES: tuple[str, ...] = ("blur", "mean", "road")

# The dashboard's safe settings (Streamlit option -> value): a local research tool listens on
# this machine only, sends no usage statistics and takes uploads up to 50 MB (a large DICOM).
# `nextray dashboard` passes them as flags, dashboard/.streamlit/config.toml holds them for a
# plain `streamlit run` from any folder, and the app refuses to serve if they were overridden.
LOOPBACK_ADDRESS = "127.0.0.1"
MAX_UPLOAD_MB = 50
DASHBOARD_SETTINGS: dict[str, str | int | bool] = {
    "server.address": LOOPBACK_ADDRESS,
    "server.headless": True,
    "server.maxUploadSize": MAX_UPLOAD_MB,
    "server.fileWatcherType": "none",
    "browser.gatherUsageStats": False,
    "browser.serverAddress": "localhost",
    "client.toolbarMode": "minimal",
}
ALLOW_REMOTE_ENV = "NEXTRAY_ALLOW_REMOTE"  # set by `nextray dashboard --allow-remote`
