"""The image-to-image tasks as data transforms, against their definitions; the restoration
metrics; the configs and their one-line errors."""

import io
import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxdiff import images, resampling
from jaxdiff.config import schema, validation
from jaxdiff.data import photos, pipeline, sources, tasks
from jaxdiff.evaluation import restoration
from jaxdiff.job import cli, evaluation, generation

ROOT = pathlib.Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)


def test_area_downsampling_averages_blocks_and_low_pass_is_a_projection():
  low = tasks.downsample(IMAGES, 4, "area")
  assert low.shape == (3, 2, 2, 3)
  np.testing.assert_allclose(low[1, 1, 0, 2], IMAGES[1, 4:8, 0:4, 2].mean(), rtol=1e-6)
  smooth = resampling.low_pass(IMAGES, 2)
  np.testing.assert_allclose(resampling.low_pass(smooth, 2), smooth, rtol=1e-6)
  other = RNG.standard_normal(IMAGES.shape)
  np.testing.assert_allclose(np.sum(smooth * other), np.sum(IMAGES * resampling.low_pass(other, 2)),
                             rtol=1e-5)  # self-adjoint
  np.testing.assert_array_equal(resampling.nearest_upsample(low, 4)[:, :4, :4],
                                np.broadcast_to(low[:, :1, :1], (3, 4, 4, 3)))


def test_bicubic_downsampling_is_pillows_filter_on_floats():
  low = tasks.downsample(IMAGES, 2, "bicubic")
  channel = Image.fromarray(IMAGES[2, ..., 1], mode="F").resize((4, 4), Image.Resampling.BICUBIC)
  np.testing.assert_allclose(low[2, ..., 1], np.asarray(channel), rtol=1e-6)
  constant = np.full((1, 8, 8, 1), 0.3, np.float32)
  np.testing.assert_allclose(tasks.downsample(constant, 4, "bicubic"), 0.3, atol=1e-6)


def test_luminance_is_pillows_l_conversion():
  levels = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  gray = np.asarray(Image.fromarray(levels).convert("L"), np.float64)
  ours = (tasks.luminance(images.from_uint8(levels))[..., 0] + 1.0) * 127.5
  np.testing.assert_array_less(np.abs(ours - gray), 1.0)  # Pillow rounds to integers


def test_jpeg_round_trip_is_pillows_and_quality_orders_the_error():
  image = tasks.downsample(np.tile(IMAGES[:1], (1, 4, 4, 1)), 1, "area")[0]
  buffer = io.BytesIO()
  Image.fromarray(images.to_uint8(image)).save(buffer, format="JPEG", quality=20)
  expected = images.from_uint8(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
  np.testing.assert_array_equal(tasks.jpeg_round_trip(image, 20), expected)
  errors = [np.abs(tasks.jpeg_round_trip(image, q) - image).mean() for q in (5, 30, 90)]
  assert errors[0] > errors[1] > errors[2]
  gray = tasks.jpeg_round_trip(image[..., :1], 50)
  assert gray.shape == (32, 32, 1)


def test_masks_follow_their_definitions():
  for seed in range(20):
    rng = np.random.default_rng(seed)
    box = tasks.box_mask(rng, (16, 16))
    rows, cols = np.where(~box)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 4 <= h <= 8 and 4 <= w <= 8 and (~box).sum() == h * w  # one rectangle
    free = tasks.free_form_mask(rng, (16, 16))
    assert 0 < (~free).sum() < 256
    for kind, band in (("half", 8), ("quarter", 4)):
      missing = ~tasks.uncrop_mask(rng, (16, 16), kind)
      assert missing.sum() == 16 * band
      assert (missing.all(0).sum() == band) or (missing.all(1).sum() == band)  # one side
  box = tasks.box_mask(np.random.default_rng(0), (8, 8))
  condition = tasks.masked_condition(IMAGES[0], box)
  known, mask = tasks.known_and_mask(condition)
  np.testing.assert_array_equal(mask[..., 0], box)
  np.testing.assert_array_equal(known, np.where(box[..., None], IMAGES[0], 0.0))
  assert set(np.unique(condition[..., -1])) == {-1.0, 1.0}


def test_noise_augmentation_is_a_variance_preserving_path():
  c, noise = IMAGES, RNG.standard_normal(IMAGES.shape).astype(np.float32)
  np.testing.assert_array_equal(tasks.noise_augment(c, np.zeros(3), noise), c)
  np.testing.assert_allclose(tasks.noise_augment(c, np.ones(3), noise), noise, atol=1e-6)
  mid = tasks.noise_augment(c, np.full(3, 0.5), noise)
  np.testing.assert_allclose(mid, np.sqrt(0.5) * (c + noise), rtol=1e-5, atol=1e-6)


def test_task_conditions_shapes_and_training_pairs():
  shapes = {"super_resolution": (2, 2, 3), "colorization": (8, 8, 1), "inpainting": (8, 8, 4),
            "uncropping": (8, 8, 4), "jpeg_restoration": (8, 8, 3)}
  for name, shape in shapes.items():
    task = tasks.Task(name)
    task.check((8, 8, 3))
    assert task.condition_shape((8, 8, 3)) == shape
    assert task.degrade(IMAGES[0], np.random.default_rng(0)).shape == shape
  task = tasks.Task("super_resolution", factor=2, augment_max=0.5, condition_dropout=0.3)
  pairs = [task.training_pair(IMAGES[0], np.random.default_rng(s)) for s in range(200)]
  levels = np.array([level for _, level in pairs])
  dropped = np.array([not c.any() for c, _ in pairs])
  assert levels.max() <= 0.5 and np.all(levels[dropped] == 0)
  assert 0.2 < dropped.mean() < 0.4  # 0.3 +- 4.5 standard errors (0.03)


def test_pipeline_batches_carry_deterministic_conditions():
  source = sources.ArraySource(images.to_uint8(IMAGES[:, :, :, :1]))
  task = tasks.Task("super_resolution", factor=2, augment_max=0.2)
  kwargs = dict(step=3, seed=1, batch_size=3, image_size=8, channels=1, random_flip=False,
                task=task)
  whole = pipeline.host_batch(source, rows=slice(0, 3), **kwargs)
  part = pipeline.host_batch(source, rows=slice(1, 3), **kwargs)
  np.testing.assert_array_equal(whole["condition"][1:], part["condition"])
  assert whole["condition"].shape == (3, 4, 4, 1) and whole["aug_level"].shape == (3,)
  level = whole["aug_level"][0]
  clean = tasks.downsample(whole["image"][:1], 2, "area")
  cosine = np.cos(0.5 * np.pi * level)
  assert np.corrcoef(whole["condition"][0].ravel(), clean.ravel())[0, 1] > cosine - 0.3


def test_photo_patches_are_colour_and_the_splits_do_not_overlap():
  train = photos.photo_patches(split="train")
  test = photos.photo_patches(split="test")
  # Counted from the geometry: columns whose patch lies left (right) of 3/4 of the width.
  counts = np.zeros(2, int)
  for photo in photos.photographs():
    height, width, _ = photo.shape
    rows = (height - 64) // 16 + 1
    lefts = np.arange(0, width - 63, 16)
    counts += rows * np.array([np.sum(lefts + 64 <= int(0.75 * width)),
                               np.sum(lefts >= int(0.75 * width))])
  assert len(photos.photographs()) == 7 and (len(train), len(test)) == tuple(counts)
  assert train.shape[1:] == (64, 64, 3) and train.dtype == np.uint8
  assert not {patch.tobytes() for patch in test} & {patch.tobytes() for patch in train}
  chroma = np.abs(train.astype(float) - train.mean(-1, keepdims=True)).mean()
  assert chroma > 5.0
  source = sources.make_source(ml_collections.ConfigDict(dict(source="photos", split="test")))
  np.testing.assert_array_equal(source.read([0])[0][0], test[0])


# --- metrics -----------------------------------------------------------------------------

def test_psnr_ssim_and_consistency_against_their_definitions():
  x = RNG.uniform(-1, 1, (2, 16, 16, 1))
  y = np.clip(x + RNG.normal(0, 0.1, x.shape), -1, 1)
  mse = np.mean(((x + 1) / 2 - (y + 1) / 2) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(restoration.psnr(x, y), -10 * np.log10(mse))
  np.testing.assert_allclose(restoration.ssim(x, x), 1.0)
  # Brute force: every valid 11x11 window, weighted statistics by their definitions.
  a, b, w = (x[0, ..., 0] + 1) / 2, (y[0, ..., 0] + 1) / 2, restoration.gaussian_window()
  values = []
  for i in range(6):
    for j in range(6):
      pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
      ma, mb = np.sum(w * pa), np.sum(w * pb)
      va, vb = np.sum(w * (pa - ma) ** 2), np.sum(w * (pb - mb) ** 2)
      cov = np.sum(w * (pa - ma) * (pb - mb))
      values.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4)
                    / ((ma**2 + mb**2 + 1e-4) * (va + vb + 9e-4)))
  np.testing.assert_allclose(restoration.ssim(x, y)[0], np.mean(values), rtol=1e-10)
  low = tasks.downsample(x, 4, "area")
  np.testing.assert_allclose(restoration.consistency_error(x, low, 4), 0.0, atol=1e-7)
  np.testing.assert_allclose(restoration.consistency_error(x, low + 0.25, 4), 0.25, rtol=1e-6)


def test_harmonic_fill_solves_laplace_and_reproduces_linear_images():
  rows, cols = np.mgrid[0:12, 0:10]
  ramp = (0.05 * rows - 0.08 * cols + 0.3)[None, ..., None] * np.ones((1, 1, 1, 2))
  known = np.ones((1, 12, 10, 1), bool)
  known[0, 3:9, 2:7] = False  # Away from the edge a linear image is its own harmonic fill.
  np.testing.assert_allclose(restoration.harmonic_fill(np.where(known, ramp, 0.0), known),
                             ramp, atol=1e-12)
  image = RNG.uniform(-1, 1, (2, 9, 11, 3))
  mask = np.ones((2, 9, 11, 1), bool)
  mask[0, :4, :] = False                       # A band along the top edge (uncropping).
  mask[1] = ~(RNG.uniform(size=(9, 11, 1)) < 0.5)
  filled = restoration.harmonic_fill(image, mask)
  np.testing.assert_array_equal(filled[mask[..., 0]], image[mask[..., 0]])
  padded = np.pad(filled, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
  shifts = [padded[:, 1 + di:10 + di, 1 + dj:12 + dj] for di, dj in
            ((-1, 0), (1, 0), (0, -1), (0, 1))]
  neighbour_mean = np.nanmean(np.stack(shifts), axis=0)  # In-image neighbours only.
  hole = ~mask[..., 0]
  np.testing.assert_allclose(filled[hole], neighbour_mean[hole], atol=1e-10)


def test_hole_psnr_and_the_harmonic_baseline_of_masked_tasks():
  config = _sr()
  config.data.task.update(name="inpainting", augment_max=0.0)
  references = RNG.uniform(-1, 1, (3, 28, 28, 1))
  known = np.ones((3, 28, 28, 1), bool)
  known[:, 5:15, 8:20] = False
  outputs = np.where(known, references, references + 0.2)
  mse = 0.1 ** 2                               # 0.2 on [-1, 1] is 0.1 on the [0, 1] scale.
  np.testing.assert_allclose(restoration.missing_psnr(outputs, references, known),
                             -10 * np.log10(mse), rtol=1e-10)
  inputs = np.where(known, references, 0.0)
  result = evaluation.restoration_metrics(config, outputs, inputs, references, known=known)
  np.testing.assert_allclose(result["hole_psnr"], -10 * np.log10(mse), rtol=1e-10)
  harmonic = restoration.harmonic_fill(inputs, known)
  np.testing.assert_allclose(result["baseline_hole_psnr"], np.mean(
      restoration.missing_psnr(harmonic, references, known)), rtol=1e-10)
  with pytest.raises(ValueError, match="scored with its masks"):
    evaluation.restoration_metrics(config, outputs, inputs, references)


def test_sample_files_of_masked_tasks_carry_their_masks(tmp_path):
  config = _sr()
  config.data.task.update(name="inpainting", augment_max=0.0)
  clean = RNG.uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
  known = np.ones((2, 28, 28), bool)
  known[0, 2:9, 3:12] = False
  known[1, 20:, :] = False
  conditions = np.stack([tasks.masked_condition(x, m) for x, m in zip(clean, known)])
  request = generation.Request(num_samples=2, batch_size=2, sampler="ddim",
                               conditions=conditions)
  _, path = cli.write_samples(str(tmp_path / "s"), clean, request, config, references=clean,
                              rows=None)
  with np.load(path) as data:
    np.testing.assert_array_equal(data["masks"][..., 0], known.astype(np.uint8))
    np.testing.assert_array_equal(data["inputs"][~known], 128)  # Missing: 0 on [-1, 1].


# --- configs and bad input ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["fashion_sr.py", "fashion_cascade.py", "fashion_inpainting.py",
                                  "photos_colorization.py"])
def test_configs_validate(name):
  validation.validate_config(schema.load_config_file(ROOT / "configs" / name), num_devices=1)


def _sr():
  return schema.load_config_file(ROOT / "configs" / "fashion_sr.py")


@pytest.mark.parametrize("change,message", [
    (lambda c: c.data.task.update(name="colorization"), "needs RGB data"),
    (lambda c: c.data.task.update(factor=3), "factor=3 must be >= 2 and divide"),
    (lambda c: c.data.task.update(name="deblur"), "task.name='deblur' is not one of"),
    (lambda c: c.model.update(condition_channels=3), "set config.model.condition_channels=1"),
    (lambda c: c.model.update(aug_level_embedding=False), "aug_level_embedding=False must be"),
    (lambda c: c.data.task.update(name=None), "needs an image-to-image task"),
    (lambda c: c.data.task.update(jpeg_quality=(40, 10)), "jpeg_quality=(40, 10)"),
])
def test_a_task_that_does_not_fit_is_a_one_line_error(change, message):
  config = _sr()
  change(config)
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
    validation.validate_config(config, num_devices=1)
  assert "\n" not in str(info.value)


def test_cascade_stages_must_chain():
  base = schema.load_config_file(ROOT / "configs" / "fashion_cascade.py")
  generation.check_cascade([base, _sr()])
  x4 = _sr()
  x4.data.task.factor = 4
  with pytest.raises(ValueError, match="stage 1 takes 7x7x1 conditions, but stage 0 makes "
                                       "14x14x1 images"):
    generation.check_cascade([base, x4])
  with pytest.raises(ValueError, match="stage 1 is not a super-resolution run"):
    generation.check_cascade([base, base])


def test_restoration_metrics_put_the_model_beside_the_bicubic_baseline():
  config = _sr()
  references = RNG.uniform(-1, 1, (3, 28, 28, 1)).astype(np.float32)
  inputs = tasks.downsample(references, 2, "area")
  result = evaluation.restoration_metrics(config, references, inputs, references)
  assert result["psnr"] == 200.0 and result["ssim"] == 1.0 and result["consistency"] < 1e-6
  bicubic = np.stack([np.asarray(Image.fromarray(image[..., 0], mode="F").resize(
      (28, 28), Image.Resampling.BICUBIC))[..., None] for image in inputs])
  np.testing.assert_allclose(result["baseline_psnr"],
                             np.mean(restoration.psnr(bicubic, references)), rtol=1e-6)
  assert result["baseline_psnr"] < 20.0 and result["psnr_stderr"] == 0.0
  config.data.task.name = None
  with pytest.raises(ValueError, match="needs an image-to-image run"):
    evaluation.restoration_metrics(config, references, inputs, references)
