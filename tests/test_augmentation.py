"""Train augmentation and eval views by value (token_learner.data.stream / images / videos).

Inception crops (Szegedy et al. 2015) within [crop_min_area, 1] of the area and aspect ratios
in [3/4, 4/3]; flips that happen both ways and are exact mirrors; the digits' shift of up to one
pixel; for video (§5, §6.1.1) one crop and one flip shared by every frame of a clip, frames
`stride` apart from a random start, and eval views at clips spread uniformly over the video x
crops at the start / centre / end of the longer side. Frames carry their own index and their
pixel coordinates in their channels, so what the pipeline took can be read back from its output.
"""
import numpy as np
import pytest
import tensorflow as tf

from token_learner import data
from token_learner.data import images, stream, videos

SEEDS = range(60)


def _seed(i):
  return stream.augment_seed(0, i)


def test_inception_crop_box_bounds():
  h, w, min_area = 60, 80, 0.25
  areas, ratios = [], []
  for i in range(200):
    begin, size = (t.numpy() for t in stream.inception_crop_box(
        tf.constant([h, w, 3]), _seed(i), min_area))
    assert begin[2] == 0 and size[2] in (-1, 3)  # all channels
    assert 0 <= begin[0] and begin[0] + size[0] <= h and 0 <= begin[1] and begin[1] + size[1] <= w
    areas.append(size[0] * size[1] / (h * w))
    ratios.append(size[1] / size[0])
  areas, ratios = np.array(areas), np.array(ratios)
  # Integer box sides: allow a pixel of rounding on each side.
  assert areas.min() >= min_area * (1 - 2 / 60) and areas.max() <= 1.0
  assert ratios.min() >= 3 / 4 * (1 - 1 / 30) and ratios.max() <= 4 / 3 * (1 + 1 / 30)
  # The whole range is used, not one fixed box.
  assert areas.min() < min_area + 0.1 and areas.max() > 0.8
  assert ratios.min() < 0.85 and ratios.max() > 1.2


def _coordinate_image(h, w):
  """float32 [h, w, 3] in [0, 1]: channel 0 the row, 1 the column, 2 noise."""
  rng = np.random.default_rng(0)
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows / (h - 1), cols / (w - 1), rng.random((h, w))], -1).astype(np.float32)


def test_image_flip_is_a_true_mirror_and_happens_both_ways():
  cfg = data.from_dict({'name': 'digits', 'image_size': 16, 'crop_min_area': 1.0})
  source = images._ImageSource(description='test', num_examples=1, num_classes=1)  # not tiny
  image = _coordinate_image(16, 16)
  flips = 0
  for i in SEEDS:
    out = images._train_image(source, tf.constant(image), _seed(i), cfg).numpy()
    if np.allclose(out, image, atol=1e-5):
      continue
    np.testing.assert_allclose(out, image[:, ::-1], atol=1e-5)  # left-right, nothing else
    flips += 1
  assert 15 < flips < 45  # ~ half of 60


def test_image_crop_covers_the_configured_area():
  """The crop's content, read back from the coordinate channels of the resized output: its
  rows x columns cover [crop_min_area, 1] of the image (with a pixel of resize slack)."""
  min_area, h, w = 0.3, 40, 40
  cfg = data.from_dict({'name': 'digits', 'image_size': 20, 'crop_min_area': min_area})
  source = images._ImageSource(description='test', num_examples=1, num_classes=1)
  image = _coordinate_image(h, w)
  areas = []
  for i in SEEDS:
    out = images._train_image(source, tf.constant(image), _seed(i), cfg).numpy()
    span_rows = (out[..., 0].max() - out[..., 0].min()) * (h - 1) + 1
    cols = out[..., 1] if out[0, 0, 1] < out[0, -1, 1] else out[..., 1][:, ::-1]
    span_cols = (cols.max() - cols.min()) * (w - 1) + 1
    areas.append(span_rows * span_cols / (h * w))
  assert min(areas) >= min_area * 0.85 and max(areas) <= 1.0 + 1e-6
  assert min(areas) < min_area + 0.15 and max(areas) > 0.8


def test_digits_shift_at_most_one_pixel_and_no_flip():
  cfg = data.from_dict({'name': 'digits', 'image_size': 8})
  source = images._ImageSource(description='test', num_examples=1, num_classes=1, tiny=True)
  image = _coordinate_image(8, 8)
  shifts = set()
  padded = np.pad(image, [(1, 1), (1, 1), (0, 0)])
  for i in SEEDS:
    out = images._train_image(source, tf.constant(image), _seed(i), cfg).numpy()
    found = [(dy, dx) for dy in range(3) for dx in range(3)
             if np.allclose(out, padded[dy:dy + 8, dx:dx + 8], atol=1e-5)]
    assert found, i  # a window of the 1-pixel padding: a shift, never a mirror
    shifts.add(found[0])
  assert len(shifts) >= 6  # shifts in both directions of both axes


def _video(n, h, w):
  """uint8 [n, h, w, 3]: channel 0 = 8 x frame index, 1 = 16 x column, 2 = 16 x row (+ frame-
  independent noise in the low bits, so different crops never look alike)."""
  rng = np.random.default_rng(1)
  t, rows, cols = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing='ij')
  noise = rng.integers(0, 4, size=(h, w))
  return np.stack([8 * t, 16 * cols + noise, 16 * rows + noise], -1).astype(np.uint8)


def _video_cfg(**kw):
  base = {'name': 'moving_digits', 'image_size': 8, 'num_frames': 4, 'stride': 3}
  return data.from_dict({**base, **kw}, num_classes=40)


_FRAMES = videos._VideoSource(description='test', num_examples=1, num_classes=1)


def _train_clip(cfg, frames, i):
  out = videos._train_clip(_FRAMES, cfg, _seed(i), tf.constant(frames), tf.shape(frames)[0])
  return np.asarray(out.numpy(), np.float64) * 255.0


def test_video_clip_stride_start_and_shared_crop():
  cfg = _video_cfg(crop_min_area=0.3, random_flip=True)
  frames = _video(20, 16, 16)
  starts, flips = set(), 0
  for i in SEEDS:
    clip = _train_clip(cfg, frames, i)
    assert clip.shape == (4, 8, 8, 3)
    t = np.round(clip[..., 0] / 8)  # the frame index, constant over each frame
    np.testing.assert_allclose(clip[..., 0] / 8, t, atol=0.05)
    idx = t[:, 0, 0].astype(int)
    np.testing.assert_array_equal(np.diff(idx), [3, 3, 3])  # stride 3
    assert 0 <= idx[0] <= 20 - 10
    starts.add(idx[0])
    # One box and one flip for all frames: the spatial channels are identical frame to frame.
    for f in range(1, 4):
      np.testing.assert_array_equal(clip[f, ..., 1:], clip[0, ..., 1:])
    flips += clip[0, 0, 0, 1] > clip[0, 0, -1, 1]  # columns decrease: mirrored
  assert {0, 10} <= starts and len(starts) > 6  # random starts over the whole range
  assert 15 < flips < 45


def test_video_flip_and_crop_off():
  """crop_min_area=1 and no flip: every clip is the frames, resized, in order."""
  cfg = _video_cfg(crop_min_area=1.0, random_flip=False, image_size=16)
  frames = _video(20, 16, 16)
  for i in range(5):
    clip = _train_clip(cfg, frames, i)
    start = int(round(clip[0, 0, 0, 0] / 8))
    np.testing.assert_allclose(clip, frames[start:start + 10:3], atol=0.5)


def test_short_video_is_looped():
  cfg = _video_cfg(crop_min_area=1.0, random_flip=False)
  clip = _train_clip(cfg, _video(5, 8, 8), 0)
  np.testing.assert_array_equal(np.round(clip[:, 0, 0, 0] / 8), [0, 3, 1, 4])  # (0,3,6,9) % 5


@pytest.mark.parametrize('landscape', [True, False])
def test_eval_views_positions(landscape):
  """3 clips x 3 crops: starts round(linspace(0, n - span, 3)), crops at the start, centre and
  end of the longer side, centred on the shorter; views ordered clip-major."""
  cfg = _video_cfg(eval_clips=3, eval_crops=3)
  h, w = (8, 16) if landscape else (16, 8)
  frames = _video(21, h, w)
  out = videos._eval_views(_FRAMES, cfg, tf.constant(frames), tf.constant(21)).numpy() * 255.0
  assert out.shape == (9, 4, 8, 8, 3)
  span = 3 * 3 + 1
  starts = np.round(np.linspace(0, 21 - span, 3)).astype(int)  # 0, 6 (5.5 rounds to even), 11
  offsets = [0, 4, 8]
  for c in range(3):
    for j in range(3):
      top, left = (0, offsets[j]) if landscape else (offsets[j], 0)
      want = frames[starts[c]:starts[c] + span:3, top:top + 8, left:left + 8]
      np.testing.assert_allclose(out[c * 3 + j], want, atol=0.01, err_msg=f'clip {c} crop {j}')
