"""Attention maps of a trained model as figures and token statistics (Fig. 10, §6.4).

`visualize.py` is the command line; `render` is also what a notebook would call; an evaluator of
kind 'attention_maps' in `config.evals` draws them to TensorBoard during training. matplotlib is
imported here, so only runs that draw maps load it.
"""
import json

import jax
import numpy as np

from token_learner import build_model
from token_learner import data
from token_learner import diagnostics
from token_learner import fields
from token_learner import paths
from token_learner import plots
from token_learner.data.normalize import normalize


def examples(data_cfg, split, num_examples):
  """The first `num_examples` unpadded inputs of `split` (one view of each video): uint8
  pixels, as batches carry them."""
  if split:
    data_cfg = data.from_dict({**fields.section_dict(data_cfg), 'eval_split': split},
                              num_classes=data_cfg.num_classes)
  batch_size = max(1, min(num_examples, 64))
  inputs = []
  for batch in data.eval_input(data_cfg, batch_size=batch_size):
    x = batch['inputs'][batch['mask'] > 0]
    inputs.extend(x[:, 0] if data_cfg.is_video else x)  # View 0 of each video.
    if len(inputs) >= num_examples:
      break
  return np.stack(inputs[:num_examples])


def _figure(experiment, x, maps, title):
  """The figure of one input `x` with its maps (one `[S, h, w]` / `[T', S, h, w]` per TL)."""
  norm = dict(mean=experiment.data.mean, std=experiment.data.std)
  if experiment.data.is_video:
    return plots.video_attention_figure(x, maps[0], title=title, **norm)
  return plots.image_attention_figure(x, maps, title=title, **norm)


def _attention_maps(experiment, data_cfg=None):
  """`(params, inputs) -> [maps of each TokenLearner]`, jitted; an error if the model has none.

  uint8 inputs are normalised first with the mean / std of `data_cfg` (default: the run's
  dataset), as in the train and eval steps."""
  model_cfg = experiment.model
  if not model_cfg.has_attention_maps:
    where = (f'config.model.bottleneck.module={model_cfg.bottleneck.module!r}'
             if model_cfg.name == 'bottleneck' else 'config.model.tokenlearner.num_tokens=0')
    raise ValueError(f'The model has no TokenLearner ({where}): there are no maps to draw.')
  model = build_model(model_cfg)
  data_cfg = data_cfg or experiment.data
  mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)
  return jax.jit(lambda p, x: model.apply({'params': p}, normalize(x, mean, std),
                                          train=False)[1]['attention_maps'])


def render(experiment, params, inputs, out):
  """Writes one figure per input and token_stats.json to folder `out` (local or a URL);
  returns the stats."""
  maps = [np.asarray(m) for m in _attention_maps(experiment)(params, inputs)]
  paths.makedirs(out)
  for i, x in enumerate(inputs):
    title = f'{experiment.model.name} {experiment.model.variant}, example {i}'
    plots.save(_figure(experiment, x, [m[i] for m in maps], title),
               paths.join(out, f'example_{i}.png'))
  stats = diagnostics.all_token_stats(maps)
  paths.write_text_atomic(paths.join(out, 'token_stats.json'), json.dumps(stats, indent=2))
  return stats


class AttentionMapsEvaluator:
  """`config.evals.<name>` of kind 'attention_maps': the maps of the first `num_examples`
  examples of its split as TensorBoard images plus the token diagnostics as scalars; the
  examples are read once."""

  def __init__(self, name: str, cfg, run, data_cfg, info):
    del info
    self.name, self.every_steps = name, cfg.every_steps
    self._experiment = run.experiment
    self._maps = _attention_maps(run.experiment, data_cfg)
    self._inputs = examples(data_cfg, None, cfg.num_examples)

  def __call__(self, params):
    """({'tokenlearner_k/...': diagnostics}, {'images': uint8 [N, H, W, 3]})."""
    maps = [np.asarray(m) for m in self._maps(params, self._inputs)]
    figures = [_figure(self._experiment, x, [m[i] for m in maps], f'example {i}')
               for i, x in enumerate(self._inputs)]
    arrays = [plots.to_array(f) for f in figures]
    h, w = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
    images = np.stack([np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1]), (0, 0)),
                              constant_values=255) for a in arrays])
    return diagnostics.all_token_stats(maps), {'images': images}
