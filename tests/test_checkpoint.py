from __future__ import annotations

import json

import pytest
import torch

from nextray_core.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
    verify_checkpoint,
    write_card,
)
from nextray_core.errors import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory, resnet152):
    directory = tmp_path_factory.mktemp("ckpt") / "demo"
    card = ModelCard(name="test", default_threshold=0.4, metrics={"auc": {"value": 0.5}})
    save_checkpoint(resnet152, directory, card, extra_tensors={"ood_mean": torch.arange(4.0)})
    return directory


def test_round_trip_gives_identical_outputs_and_card(saved, resnet152):
    model, card, extras = load_checkpoint(saved)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), resnet152(x))
    assert not model.training
    assert card.default_threshold == 0.4 and card.metrics["auc"]["value"] == 0.5
    assert card.prep.size == 320 and card.architecture == "resnet152"
    assert torch.equal(extras["ood_mean"], torch.arange(4.0))
    # Loading accepts the folder, the card and the weights file alike.
    by_weights, by_card = read_card(saved / WEIGHTS_FILE), read_card(saved / CARD_FILE)
    assert by_weights.weights_sha256 == by_card.weights_sha256


def test_half_precision_weights_load_as_float32_and_stay_close(tmp_path, resnet152):
    save_checkpoint(resnet152, tmp_path / "fp16", ModelCard(name="half"), dtype=torch.float16)
    model, card, _ = load_checkpoint(tmp_path / "fp16")
    assert card.weights_dtype == "float16"
    assert model.conv1.weight.dtype == torch.float32
    assert (tmp_path / "fp16" / WEIGHTS_FILE).stat().st_size < 0.55 * 4 * 60_200_000


def test_a_flipped_byte_is_refused(saved, tmp_path):
    copy = tmp_path / "tampered"
    copy.mkdir()
    for name in (CARD_FILE, WEIGHTS_FILE):
        (copy / name).write_bytes((saved / name).read_bytes())
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_checkpoint(copy)


def test_pickle_files_are_never_loaded(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(path)


def test_foreign_and_missing_files_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"expected a folder with card\.json"):
        load_checkpoint(tmp_path / "empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / CARD_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a neXt-Ray card"):
        read_card(other)
    (other / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(other)


def test_weights_of_another_architecture_are_refused(saved, tmp_path):
    card = read_card(saved)
    card.architecture = "resnet101"
    copy = tmp_path / "mislabelled"
    copy.mkdir()
    (copy / WEIGHTS_FILE).write_bytes((saved / WEIGHTS_FILE).read_bytes())
    write_card(copy, card)
    assert verify_checkpoint(copy).architecture == "resnet101"  # the hash itself is fine
    with pytest.raises(CheckpointError, match="do not fit a resnet101"):
        load_checkpoint(copy)


def test_non_safetensors_bytes_with_a_matching_hash_are_refused(tmp_path, saved):
    copy = tmp_path / "garbage"
    copy.mkdir()
    (copy / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    card = read_card(saved)
    write_card(copy, card)
    from nextray_core.checkpoint import sha256_of

    card.weights_sha256 = sha256_of(copy / WEIGHTS_FILE)
    write_card(copy, card)
    with pytest.raises(CheckpointError, match="not valid safetensors"):
        load_checkpoint(copy)
