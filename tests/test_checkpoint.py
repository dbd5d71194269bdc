from __future__ import annotations

import json
from math import inf

import pytest
import torch
from safetensors.torch import load_file

from nextray_core.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    combined_sha256,
    load_checkpoint,
    load_tensors,
    read_card,
    save_checkpoint,
    verify_checkpoint,
    write_card,
)
from nextray_core.errors import CheckpointError, ConfigError


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
    # the hash itself is fine, but verifying says the weights would not load
    with pytest.raises(CheckpointError, match=r"do not fit a resnet101.*: \d+ unexpected"):
        verify_checkpoint(copy)
    with pytest.raises(CheckpointError, match="do not fit a resnet101"):
        load_checkpoint(copy)


def test_verify_refuses_well_formed_safetensors_of_the_wrong_tensors(tmp_path, saved):
    from safetensors.torch import save_file

    from nextray_core.checkpoint import sha256_of

    copy = tmp_path / "foreign"
    copy.mkdir()
    save_file({"fc.1.weight": torch.zeros(1, 2048)}, copy / WEIGHTS_FILE)
    card = read_card(saved)
    card.weights_sha256 = sha256_of(copy / WEIGHTS_FILE)
    write_card(copy, card)
    with pytest.raises(
        CheckpointError,
        match=r"do not fit a resnet152 with a one-logit head: \d+ missing \(e\.g\. \['bn1",
    ):
        verify_checkpoint(copy)


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
    with pytest.raises(CheckpointError, match="matches its hash but is not valid safetensors"):
        verify_checkpoint(copy)


@pytest.mark.parametrize(
    "name", ["../model.safetensors", "/etc/hostname", "sub/model.safetensors", "..", "C:model"]
)
def test_a_weights_file_outside_the_folder_is_refused(saved, tmp_path, name):
    folder = _copy(saved, tmp_path / "escape")
    # a real safetensors file where the card points, so only the name can be what is refused
    (tmp_path / "model.safetensors").write_bytes((saved / WEIGHTS_FILE).read_bytes())
    data = json.loads((folder / CARD_FILE).read_text())
    data["weights_file"] = name
    (folder / CARD_FILE).write_text(json.dumps(data))
    for check in (read_card, verify_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match="not a plain file name inside the checkpoint"):
            check(folder)


def test_a_shard_name_outside_the_folder_is_refused(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "escape")
    outside = tmp_path / "model-00001-of-00003.safetensors"
    outside.write_bytes(_shard_paths(folder)[0].read_bytes())
    data = json.loads((folder / CARD_FILE).read_text())
    data["weights_shards"][0]["file"] = "../model-00001-of-00003.safetensors"  # fits the pattern
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"weights_shards file '\.\./model-00001"):
        verify_checkpoint(folder)


# --- sharded weights (files capped at max_file_mb) ------------------------------------------

SHARD_MB = 40  # ResNet-152 in fp16 is ~120 MB: three or four shards


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, resnet152):
    directory = tmp_path_factory.mktemp("sharded") / "demo"
    card = ModelCard(name="sharded", default_threshold=0.3)
    extras = {
        "ood_mean": torch.arange(4.0),
        "calibration.labels": torch.tensor([0, 1], dtype=torch.int8),
    }
    save_checkpoint(
        resnet152, directory, card, dtype=torch.float16, extra_tensors=extras, max_file_mb=SHARD_MB
    )
    return directory


def _copy(source, dest):
    dest.mkdir()
    for path in source.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def _shard_paths(directory):
    return sorted(directory.glob("model-*-of-*.safetensors"))


def test_sharded_round_trip_gives_identical_tensors_and_extras(sharded, resnet152):
    card = read_card(sharded)
    shards = _shard_paths(sharded)
    assert len(shards) >= 3 and [s["file"] for s in card.weights_shards] == [p.name for p in shards]
    assert not (sharded / WEIGHTS_FILE).exists() and card.weights_file == WEIGHTS_FILE
    for path in shards:
        assert path.stat().st_size <= SHARD_MB * 1_000_000
    model, loaded, extras = load_checkpoint(sharded)
    assert loaded.default_threshold == 0.3 and loaded.weights_dtype == "float16"
    expected = {
        k: v.half() if v.is_floating_point() else v for k, v in resnet152.state_dict().items()
    }
    for key, value in model.state_dict().items():
        assert torch.equal(value.half() if value.is_floating_point() else value, expected[key]), key
    assert torch.equal(extras["ood_mean"], torch.arange(4.0))
    assert torch.equal(extras["calibration.labels"], torch.tensor([0, 1], dtype=torch.int8))
    # The folder, its card and any shard all name the same checkpoint.
    assert read_card(shards[1]).weights_sha256 == read_card(sharded / CARD_FILE).weights_sha256


def test_a_modified_or_missing_shard_is_refused_by_name(sharded, tmp_path):
    tampered = _copy(sharded, tmp_path / "tampered")
    second = _shard_paths(tampered)[1]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x01
    second.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{second.name} does not match its card"):
        load_checkpoint(tampered)
    missing = _copy(sharded, tmp_path / "missing")
    last = _shard_paths(missing)[-1]
    last.unlink()
    with pytest.raises(CheckpointError, match=rf"{last.name} is missing.*Restore the file"):
        verify_checkpoint(missing)


def test_resaving_switches_between_sharded_and_single_and_removes_stale_files(
    sharded, tmp_path, resnet152
):
    folder = _copy(sharded, tmp_path / "switch")
    (folder / "notes.safetensors").write_bytes(b"not ours")  # not a weights file: left alone
    card = read_card(folder)
    save_checkpoint(resnet152, folder, card, dtype=torch.float16)  # no limit: the card's kept
    assert len(read_card(folder).weights_shards) == 3 == len(_shard_paths(folder))
    save_checkpoint(resnet152, folder, read_card(folder), dtype=torch.float16, max_file_mb=inf)
    assert read_card(folder).weights_shards == [] and _shard_paths(folder) == []
    assert (folder / WEIGHTS_FILE).is_file() and (folder / "notes.safetensors").is_file()
    verify_checkpoint(folder)
    save_checkpoint(resnet152, folder, read_card(folder), dtype=torch.float16, max_file_mb=60)
    assert len(_shard_paths(folder)) == 2 and not (folder / WEIGHTS_FILE).exists()
    verify_checkpoint(folder)


def test_weights_sha256_changes_when_any_shard_changes(sharded, tmp_path, resnet152):
    before = read_card(sharded)
    hashes = [s["sha256"] for s in before.weights_shards]
    assert before.weights_sha256 == combined_sha256(hashes)
    for i in range(len(hashes)):  # caches keyed on weights_sha256 see a change in any shard
        changed = [*hashes[:i], "0" * 64, *hashes[i + 1 :]]
        assert combined_sha256(changed) != before.weights_sha256
    folder = _copy(sharded, tmp_path / "changed")
    extras = {"ood_mean": torch.arange(4.0) + 1}  # extras come last: only the last shard changes
    card = read_card(folder)
    save_checkpoint(
        resnet152, folder, card, dtype=torch.float16, extra_tensors=extras, max_file_mb=SHARD_MB
    )
    assert verify_checkpoint(folder).weights_sha256 != before.weights_sha256
    assert len(card.weights_shards) == len(hashes)


def test_a_hand_edited_shard_list_is_refused(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "edited")
    data = json.loads((folder / CARD_FILE).read_text())
    data["weights_shards"][0]["sha256"] = "0" * 64
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not match the shard hashes it lists"):
        verify_checkpoint(folder)
    data["weights_shards"][0] = {"file": "../elsewhere.safetensors", "sha256": "0" * 64}
    (folder / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="malformed weights_shards"):
        verify_checkpoint(folder)


def test_cards_written_before_sharding_still_load(saved, tmp_path):
    folder = _copy(saved, tmp_path / "old")
    data = json.loads((folder / CARD_FILE).read_text())
    del data["weights_shards"]
    (folder / CARD_FILE).write_text(json.dumps(data))
    card = verify_checkpoint(folder)
    assert card.weights_shards == [] and card.weight_file_names == [WEIGHTS_FILE]
    assert "weights_shards" not in card.extra


def test_a_limit_that_is_not_positive_is_refused(tmp_path, resnet152):
    with pytest.raises(ConfigError, match="max_file_mb must be a positive"):
        save_checkpoint(resnet152, tmp_path / "x", ModelCard(name="x"), max_file_mb=0)


def test_a_tensor_bigger_than_the_limit_gets_a_shard_of_its_own(tmp_path):
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 10), torch.nn.Linear(1000, 600), torch.nn.Linear(10, 10)
    )  # a 2.4 MB weight in the middle, against a 1 MB limit
    save_checkpoint(model, tmp_path / "big", ModelCard(name="big"), max_file_mb=1)
    card, tensors = load_tensors(tmp_path / "big")
    shards = [sorted(load_file(tmp_path / "big" / name)) for name in card.weight_file_names]
    assert shards == [["0.bias", "0.weight"], ["1.weight"], ["1.bias", "2.bias", "2.weight"]]
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
