"""The LM over image pixels (the `pixel_lm` task, experiments/pixel_lm_mnist.py): rows are images
in raster order behind a start token, evaluation walks the split in order, the reported bits/dim
is the exact NLL of the discrete images, training lowers it and sampling draws image grids."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import DATA, REPO, assert_sample_grid
from PIL import Image

from launch.cli import main
from launch.config import apply_overrides, load_config
from train.capabilities import ImageSampler, ReferenceImages, TextSampler, has
from train.data import pixels
from train.data.images import load_split
from train.data.splits import EVAL, NONE, TRAINING
from train.logging import read_metrics
from train.tasks import build_task
from train.trainer import restore_run, train

CONFIG = REPO / "experiments" / "pixel_lm_mnist.py"
MNIST = DATA / "mnist"


def _config(**overrides: str):
    config = load_config(f"{CONFIG}:test")
    apply_overrides(config, {"data.path": str(MNIST), "mesh.data": "1", **overrides})
    return config


def test_rows_are_images_behind_a_start_token_and_eval_walks_the_split_in_order():
    test_images, _ = load_split("mnist", str(MNIST), "test")
    flat = test_images.reshape(len(test_images), -1)
    _, val = pixels.load_pixel_rows(_config().data, EVAL)
    seen = [val.batch(0, index, 4) for index in range(3)]
    targets = np.concatenate([b["targets"] for b in seen])
    np.testing.assert_array_equal(targets, flat[:12])  # the first 12 test images, in order
    for batch in seen:
        assert (batch["inputs"][:, 0] == pixels.START).all()
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])

    # training rows: shuffled whole images, and two processes' rows make the one-process batch
    train_rows, _ = pixels.load_pixel_rows(_config().data, TRAINING)
    whole = train_rows.batch(5, 7, 8)
    halves = [train_rows.batch(5, 7, 8, index, 2) for index in range(2)]
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    rows = {bytes(row) for row in train_rows.pixels}
    assert all(bytes(row.astype(np.uint8)) in rows for row in whole["targets"])


def test_eval_bits_per_dim_is_the_exact_nll_of_the_images(tmp_path):
    config = _config(**{"train.steps": "4", "train.eval_every": "4"})
    train(config, tmp_path, devices=jax.devices()[:1])
    task, state, _, _ = restore_run(config, tmp_path, devices=jax.devices()[:1], splits=EVAL)
    batch = task.data.val.batch(0, 0, 4)
    logits = task.model.apply({"params": state.params}, batch["inputs"])
    log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    picked = np.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    nll_nats = -picked.sum(axis=1)  # log p(image) as a product over its 784 pixels
    sums = jax.tree.map(np.asarray, task.eval_step(state, batch))
    metrics = task.summarize_eval(sums)
    expected = nll_nats.mean() / (784 * math.log(2.0))
    assert metrics["eval/bpd"] == pytest.approx(expected, rel=1e-5)
    assert "eval/bpc" not in metrics


def test_training_lowers_bits_per_dim_and_samples_an_image_grid(tmp_path):
    train(_config(), tmp_path, devices=jax.devices()[:1])
    records = read_metrics(tmp_path)
    bpd = [r["eval/bpd"] for r in records if "eval/bpd" in r]
    assert len(bpd) == 2 and bpd[-1] < bpd[0] < math.log2(pixels.VOCAB_SIZE) + 0.5
    grid = tmp_path / "samples" / "samples_0000030.png"
    with Image.open(grid) as picture:  # 4 images, 2 per row, 2-pixel gaps, doubled
        assert picture.size == ((2 * 30 + 2) * 2, (2 * 30 + 2) * 2)
        assert np.asarray(picture).std() > 0  # drawn grey levels, not a blank page
    # `genlab sample` draws a grid as for the image families; the task offers FID's inputs
    assert_sample_grid(tmp_path, tmp_path / "grid.png")
    task = build_task(_config(), splits=NONE)
    assert has(task, ImageSampler) and has(task, ReferenceImages) and not has(task, TextSampler)


def test_sampled_ids_become_grey_levels_and_a_stray_start_token_is_black():
    ids = np.array([[0, 255, 128, pixels.START]])
    images = pixels.to_images(ids, (2, 2, 1))
    np.testing.assert_allclose(images[0, ..., 0], [[0.0, 1.0], [128 / 255, 0.0]])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.data.block_size=100",
            "data.block_size=100: data.source=pixels needs one position per pixel of mnist, "
            "784 (28 x 28 x 1)",
        ),
        ("--config.data.name=shakespeare", "data.name='shakespeare' has no images; allowed"),
    ],
)
def test_bad_pixel_settings_are_one_line_errors(capsys, tmp_path, override, message):
    argv = ["train", "--config", f"{CONFIG}:test", "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, f"--config.data.path={MNIST}", override])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
