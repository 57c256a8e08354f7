"""Attention maps of a trained model as figures and token statistics (Fig. 10, §6.4).

`visualize.py` is the command line; `render` is also what a notebook would call.
"""
import json
import os

import jax
import numpy as np

from token_learner import build_model
from token_learner import data
from token_learner import diagnostics
from token_learner import fields
from tools import plots


def saved_config(workdir: str) -> dict:
  """The config a finished run recorded in WORKDIR/summary.json."""
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: pass --config=the run\'s config file')
  with open(path) as f:
    return json.load(f)['config']


def examples(data_cfg, split, num_examples):
  """The first `num_examples` unpadded inputs of `split` (one view of each video)."""
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


def render(experiment, params, inputs, out):
  """Writes one figure per input and token_stats.json; returns the stats."""
  model = build_model(experiment.model)
  _, aux = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, inputs)
  maps = [np.asarray(m) for m in aux['attention_maps']]
  if not maps:
    raise ValueError('The model has no TokenLearner (config.model.tokenlearner.num_tokens=0): '
                     'there are no maps to draw.')
  os.makedirs(out, exist_ok=True)
  norm = dict(mean=experiment.data.mean, std=experiment.data.std)
  for i, x in enumerate(inputs):
    title = f'{experiment.model.name} {experiment.model.variant}, example {i}'
    if experiment.data.is_video:
      fig = plots.video_attention_figure(x, maps[0][i], title=title, **norm)
    else:
      fig = plots.image_attention_figure(x, [m[i] for m in maps], title=title, **norm)
    plots.save(fig, os.path.join(out, f'example_{i}.png'))
  stats = diagnostics.all_token_stats(maps)
  with open(os.path.join(out, 'token_stats.json'), 'w') as f:
    json.dump(stats, f, indent=2)
  return stats
