from __future__ import annotations

import numpy as np
import torch

from nextray_core.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    as_image_tensor,
    eval_transform,
    resize_uint8,
    train_transform,
)


def test_eval_transform_gives_normalised_three_channel_square():
    image = np.zeros((50, 80), dtype=np.uint8)
    image[:, 40:] = 255
    out = eval_transform(Preprocessing(size=32))(as_image_tensor(image))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    for channel in range(3):
        black = (0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        white = (1 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.isclose(out[channel, 0, 0], torch.tensor(black), atol=1e-4)
        assert torch.isclose(out[channel, 0, -1], torch.tensor(white), atol=1e-4)


def test_uint8_cache_and_float_input_give_the_same_model_input():
    rng = np.random.default_rng(0)
    pixels = rng.random((120, 90), dtype=np.float32)
    prep = Preprocessing(size=48)
    direct = eval_transform(prep)(as_image_tensor(pixels))
    cached = eval_transform(prep)(as_image_tensor(resize_uint8(pixels, 48)))
    assert torch.allclose(direct, cached, atol=2.5 / 255 / min(IMAGENET_STD))


def test_train_transform_flips_some_images_and_keeps_the_shape():
    image = torch.zeros(1, 16, 16, dtype=torch.uint8)
    image[..., :8] = 255
    transform = train_transform(Preprocessing(size=16), hflip=True, rotation=30)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(20)]
    assert all(o.shape == (3, 16, 16) for o in outs)
    left_bright = [bool(o[0, 8, 2] > o[0, 8, 13]) for o in outs]
    assert any(left_bright) and not all(left_bright)


def test_preprocessing_round_trips_through_a_dict():
    prep = Preprocessing(size=224)
    assert Preprocessing.from_dict(prep.to_dict()) == prep


def test_model_input_is_the_eval_transform_of_the_uint8_image_and_batches_stack():
    from nextray_core.transforms import Preprocessing, eval_transform, model_batch, model_input

    prep = Preprocessing(size=48)
    pixels = np.random.default_rng(0).integers(0, 256, (70, 50), dtype=np.uint8)
    expected = eval_transform(prep)(torch.from_numpy(pixels)[None])
    torch.testing.assert_close(model_input(pixels, prep), expected)
    batch = model_batch([pixels, 255 - pixels], prep)
    assert batch.shape == (2, 3, 48, 48)
    torch.testing.assert_close(batch[0], expected)
