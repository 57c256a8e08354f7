"""Figures: accuracy vs GFLOPs of a sweep (the paper's Fig. 5 / 6), TokenLearner attention maps
(Fig. 10).
"""
import io

import matplotlib
import numpy as np

from token_learner import paths
from token_learner.data.normalize import to_unit

matplotlib.use('Agg')  # Files only, no display.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def accuracy_vs_gflops(path, rows, metric='eval_accuracy'):
  """Accuracy vs GFLOPs, one labelled point per finished run (the paper's Fig. 5 / 6 style)."""
  done = [r for r in rows if isinstance(r['gflops'], float) and isinstance(r[metric], float)]
  fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
  for row in done:
    ax.scatter(row['gflops'], 100 * row[metric], color='tab:blue')
    ax.annotate(row['name'], (row['gflops'], 100 * row[metric]), textcoords='offset points',
                xytext=(4, 4), fontsize=8)
  ax.set_xlabel('GFLOPs (multiply-adds, one forward pass)')
  ax.set_ylabel(f'{metric} (%)')
  ax.set_title(f'{len(done)} runs: accuracy vs compute')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save(fig, path)


def _display(image, mean, std):
  """An input `[H, W, 3]` (uint8 pixels, or normalised floats) as [0, 1] for display."""
  return to_unit(image, mean, std)


def _overlay(ax, image, attention, title=None):
  """`image` [H, W, 3] with `attention` [h, w] (a coarser grid) as a heat map on top."""
  ax.imshow(image, interpolation='nearest')
  h, w = image.shape[:2]
  ax.imshow(attention, cmap='inferno', alpha=0.6, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
            interpolation='bilinear')
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=7)


def image_attention_figure(image, attention_maps, *, mean, std, title=''):
  """One input beside every token's map: a row per TokenLearner, input then S maps (Fig. 10).

  Args:
    image: input `[H, W, 3]`: uint8 pixels (a batch's) or normalised floats.
    attention_maps: one `[S, h, w]` array per TokenLearner of the model.
    mean, std: the dataset's normalisation, to show a normalised input as it was.
  """
  rows, cols = len(attention_maps), 1 + max(m.shape[0] for m in attention_maps)
  fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows), dpi=120, squeeze=False)
  shown = _display(image, mean, std)
  for r, maps in enumerate(attention_maps):
    axes[r, 0].imshow(shown, interpolation='nearest')
    axes[r, 0].set_title(f'input, TL {r}', fontsize=7)
    for s in range(cols - 1):
      if s < maps.shape[0]:
        _overlay(axes[r, 1 + s], shown, maps[s], f'token {s}')
    for ax in axes[r]:
      ax.axis('off')
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def video_attention_figure(clip, maps, *, mean, std, title=''):
  """Frames x tokens: row t is temporal slice t (its first frame) beside its S maps.

  Args:
    clip: input `[T, H, W, 3]`: uint8 pixels (a batch's) or normalised floats.
    maps: one TokenLearner's maps `[T', S, h, w]`, T' = T / tubelet size (`[S, h, w]` when
      the clip is a single temporal slice).
  """
  maps = maps[None] if maps.ndim == 3 else maps
  slices, tokens = maps.shape[:2]
  stride = max(1, clip.shape[0] // slices)
  fig, axes = plt.subplots(slices, 1 + tokens, figsize=(1.3 * (1 + tokens), 1.4 * slices),
                           dpi=120, squeeze=False)
  for t in range(slices):
    frame = _display(clip[t * stride], mean, std)
    axes[t, 0].imshow(frame, interpolation='nearest')
    axes[t, 0].set_title(f'frame {t * stride}', fontsize=7)
    for s in range(tokens):
      _overlay(axes[t, 1 + s], frame, maps[t, s], f'token {s}')
    for ax in axes[t]:
      ax.axis('off')
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return fig


def to_array(fig) -> np.ndarray:
  """The rendered figure as uint8 `[H, W, 3]` (closed afterwards), e.g. for TensorBoard."""
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


def save(fig, path):
  """Writes `fig` to `path` (local or a URL; the format from its extension) and closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format=paths.name(path).rsplit('.', 1)[-1])
  plt.close(fig)
  paths.write_bytes_atomic(path, buffer.getvalue())


def accuracy_vs_gflops_spread(path, title, points):
  """Accuracy vs GFLOPs with each run's seeds: `points` {label: (gflops, [accuracy %, ...])}.

  One dot per seed, the mean as a bar with the standard deviation as error bar, labelled."""
  fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
  for i, (label, (gflops, accuracies)) in enumerate(points.items()):
    color = f'C{i % 10}'
    ax.scatter([gflops] * len(accuracies), accuracies, color=color, alpha=0.35, s=14)
    std = float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0
    ax.errorbar(gflops, float(np.mean(accuracies)), yerr=std, color=color, marker='o', capsize=4)
    ax.annotate(label, (gflops, float(np.mean(accuracies))), textcoords='offset points',
                xytext=(5, 4), fontsize=8)
  ax.set_xlabel('GFLOPs (multiply-adds, one forward pass)')
  ax.set_ylabel('test accuracy (%), mean +- std over seeds')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save(fig, path)
