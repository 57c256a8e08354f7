"""The offline datasets: scikit-learn's 8x8 digits (images) and moving_digits (videos).

Both use the same fixed stratified 1437 / 360 train / test split of the 1797 scans, independent
of the run's seed, so moving_digits' train and test videos come from disjoint scans.

moving_digits: a 16x16 digit (an 8x8 scan, 2x upsampled) slides 1 pixel per frame across a 32x32
canvas; label = digit * directions + direction, so the class needs both what the digit is and
where it moves: a single frame is ambiguous (the digit passes the same places going right and
going left).
"""
import numpy as np

# Fixed seed of the split and of the video layouts: the data must not change with the seed.
FIXED_SPLIT_SEED = 0
DIRECTIONS = ('right', 'left', 'down', 'up')
_CANVAS, _DIGIT, _VIDEO_FRAMES = 32, 16, 16
_TRAVEL = _CANVAS - _DIGIT  # positions 0..16 along the motion axis


def load_digit_scans(split: str):
  """scikit-learn's 1797 digits: `(images [N, 8, 8] in 0..16, labels [N], scan indices [N])` of
  the fixed stratified 1437 / 360 train / test split."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(digits.target)), test_size=360, stratify=digits.target,
      random_state=FIXED_SPLIT_SEED)
  idx = np.sort(train_idx if split == 'train' else test_idx)
  return digits.images[idx], digits.target[idx], idx


def render_moving_digit(scan, direction: int, offset: int, num_frames: int = _VIDEO_FRAMES):
  """uint8 `[num_frames, 32, 32, 3]`: `scan` (8x8, values 0..16) moving 1 pixel per frame.

  Args:
    scan: `[8, 8]` digit image.
    direction: index into DIRECTIONS.
    offset: position on the axis across the motion, in [0, 16].
    num_frames: <= 17, so the digit never leaves the canvas.
  """
  digit = np.kron(np.asarray(scan, np.float32) * (255.0 / 16.0), np.ones((2, 2), np.float32))
  video = np.zeros((num_frames, _CANVAS, _CANVAS), np.uint8)
  for t in range(num_frames):
    along = t if DIRECTIONS[direction] in ('right', 'down') else _TRAVEL - t
    y, x = (offset, along) if DIRECTIONS[direction] in ('right', 'left') else (along, offset)
    video[t, y:y + _DIGIT, x:x + _DIGIT] = np.round(digit).astype(np.uint8)
  return np.repeat(video[..., None], 3, axis=-1)


class MovingDigits:
  """The 'train' (1437 scans) or 'test' (360 scans) split, `directions` videos per scan.

  Videos are rendered on demand (`video(i)`), deterministically. With `digits_per_video=k > 1`
  (multi-label), video i shows its own digit (as with k = 1) plus k - 1 more digits of the same
  split, each with a fixed random direction and offset, overlaid (pixel maximum); `labels(i)` is
  the set of their (digit, direction) classes. k = 1 is the single-label dataset, unchanged.
  """

  def __init__(self, split: str, directions: int = 4, digits_per_video: int = 1):
    if split not in ('train', 'test'):
      raise ValueError(f"moving_digits has splits 'train' and 'test', not {split!r}")
    self._scans, self._digits, _ = load_digit_scans(split)
    self.directions = directions
    rng = np.random.default_rng([FIXED_SPLIT_SEED, split == 'test'])
    self._offsets = rng.integers(0, _TRAVEL + 1, size=len(self._digits) * directions)
    self.num_classes = 10 * directions
    self.digits_per_video = digits_per_video
    if digits_per_video > 1:  # A separate stream: the k = 1 layouts above are unchanged.
      extra = np.random.default_rng([FIXED_SPLIT_SEED, split == 'test', digits_per_video])
      n, m = len(self._offsets), digits_per_video - 1
      self._extra = (extra.integers(0, len(self._digits), size=(n, m)),
                     extra.integers(0, directions, size=(n, m)),
                     extra.integers(0, _TRAVEL + 1, size=(n, m)))

  def __len__(self):
    return len(self._offsets)

  def video(self, i):
    scan, direction = divmod(int(i), self.directions)
    video = render_moving_digit(self._scans[scan], direction, int(self._offsets[i]))
    if self.digits_per_video > 1:
      for s, d, o in zip(*(e[int(i)] for e in self._extra)):
        video = np.maximum(video, render_moving_digit(self._scans[s], int(d), int(o)))
    return video

  def label(self, i):
    scan, direction = divmod(int(i), self.directions)
    return int(self._digits[scan]) * self.directions + direction

  def labels(self, i):
    """The sorted class ids of video i: `[label(i)]` for one digit per video."""
    ids = {self.label(i)}
    if self.digits_per_video > 1:
      scans, dirs, _ = self._extra
      ids.update(int(self._digits[s]) * self.directions + int(d)
                 for s, d in zip(scans[int(i)], dirs[int(i)]))
    return sorted(ids)
