"""The paper configs against the paper's recipes.

Per config, a table of what the paper states (resolution, optimizer, schedule, batch, steps or
epochs, label smoothing, dropout / stochastic depth, tokens, TokenLearner location, ...), each
row with the section or table it comes from, compared with `get_config()`. Where a config differs
on purpose, the row says what it holds instead and a phrase its file must contain that explains
why (so the explanation cannot silently go). Rows only for facts the paper states; a row whose
source is "ViT [12]" or "ViViT [14]" is a setting the paper adopts by reference (B.1, B.2).

Table 14 (Appendix D.1): every one of its seven rows is a buildable config (jax.eval_shape only).
"""
import importlib
import inspect

import jax
import jax.numpy as jnp
import pytest

from token_learner import experiment
from token_learner.models import build_model

IMAGENET21K = 'configs.imagenet21k_tokenlearner'
KINETICS = 'configs.kinetics400_tokenlearner'


def _epochs(module, train_size):
  return lambda c: c.num_train_steps * c.batch_size / train_size(importlib.import_module(module))


# (config field or function, paper value, source); a 5-tuple adds (ours, phrase in the config).
PAPER = {
    'imagenet_tokenlearner': [
        ('model.variant', 'B/16', '§3.1 (ViT-B/16 backbone), Table 1'),
        ('model.tokenlearner.num_tokens', 8, '§3.1 "S=8 and 16 as our default"'),
        ('model.tokenlearner.loc', 6, '§3.1 "after the 6th transformer among 12"'),
        ('model.tokenlearner.version', 'v1', '§3.1 alpha = four 3x3 convs (v1)'),
        ('model.tokenlearner.fuser', False, 'Fig. 3(a)'),
        ('dataset.image_size', (384, 384), '§3.2 "384x384 for S/16 and B/16"'),
        ('optimizer', 'momentum', 'ViT [12] fine-tuning (B.1): SGD momentum 0.9'),
        ('momentum', 0.9, 'ViT [12] fine-tuning'),
        ('batch_size', 512, 'ViT [12] fine-tuning'),
        ('lr_schedule', 'cosine', 'ViT [12] fine-tuning'),
        ('num_train_steps', 20_000, 'ViT [12] Table 4: ImageNet 20k steps'),
        ('grad_clip_norm', 1.0, 'ViT [12] fine-tuning: clipping at global norm 1'),
        ('weight_decay', 0.0, 'ViT [12] fine-tuning: no weight decay'),
        ('label_smoothing', 0.0, 'ViT [12] fine-tuning'),
        ('model.dropout_rate', 0.0, 'ViT [12] fine-tuning'),
        ('model.stochastic_depth', 0.0, 'ViT [12]'),
        ('dataset.eval_resize', 'whole image to 384x384', 'ViT [12] / vit_jax eval',
         'short side 384/0.875, centre crop 384', 'vit_jax resizes the whole image'),
    ],
    'imagenet21k_tokenlearner': [
        ('model.variant', 'B/16', '§3.1'),
        ('model.tokenlearner.num_tokens', 8, '§3.1'),
        ('model.tokenlearner.loc', 6, '§3.1'),
        ('dataset.image_size', (224, 224), '§3.1 / ViT [12] pre-training at 224'),
        ('optimizer', 'adamw', 'ViT [12] Table 3: Adam, decoupled weight decay'),
        ('learning_rate', 1e-3, 'ViT [12] Table 3 (ImageNet-21k, B/16)'),
        ('lr_schedule', 'linear', 'ViT [12] B.1: linear decay'),
        ('warmup_steps', 10_000, 'ViT [12] B.1: 10k warmup steps'),
        ('weight_decay', 0.03, 'ViT [12] Table 3'),
        ('batch_size', 4096, 'ViT [12] Table 3'),
        (_epochs(IMAGENET21K, lambda m: m.IMAGENET21K_TRAIN_SIZE - m.HELD_OUT), 90,
         'ViT [12] Table 3: 90 epochs'),
        ('grad_clip_norm', 1.0, 'ViT [12] B.1'),
        ('model.dropout_rate', 0.1, 'ViT [12] Table 3: dropout 0.1'),
        ('model.representation_size', 768, 'ViT [12]: pre-logits layer in pre-training'),
    ],
    'kinetics400_tokenlearner': [
        ('model.name', 'vivit', '§5.1'),
        ('model.variant', 'L/16', '§5.3, Table 7 (ViViT-L/16)'),
        ('model.tokenlearner.num_tokens', 16, 'Table 7 "TokenLearner 16at12"'),
        ('model.tokenlearner.loc', 12, 'Table 7 "16at12"'),
        ('model.tokenlearner.fuser', False, 'Table 7 (no fuser)'),
        ('model.tubelet_size', 2, '§5.1 "16x16x2" space-time patches'),
        ('optimizer', 'momentum', '§5.2, B.2 "the Momentum optimizer"'),
        ('learning_rate', 0.05, '§5.2, B.2 "base learning rate of 0.05"'),
        (_epochs(KINETICS, lambda m: m.KINETICS400_TRAIN_SIZE), 30, '§5.2 "30 epochs"'),
        ('dataset.image_size', (224, 224), 'ViViT [14] (B.2), Table 7 GFLOPs per view'),
        ('dataset.num_frames', 32, 'ViViT [14] 32-frame clips (B.2)'),
        (lambda c: (c.dataset.eval_clips, c.dataset.eval_crops), (4, 3),
         'Table 8 "4x3 = 12" views'),
        ('dataset.eval_short_side', 256, 'ViViT [14] / Scenic eval: short side 256'),
    ],
    'charades_tokenlearner': [
        ('model.tokenlearner.num_tokens', 8, '§6.1 "S=8 number of tokens"'),
        ('model.tokenlearner.fuser', True, 'Fig. 8 / §6: TokenLearner + TokenFuser'),
        ('dataset.num_frames', 64, '§6.1 "64 frames"'),
        ('dataset.stride', 1, '§6.1.1 12 fps (frames decoded at 12 fps, every frame)'),
        ('dataset.image_size', (224, 224), '§6.1 "224x224x64 videos for training"'),
        ('lr_schedule', 'cosine', 'B.3 cosine decay'),
        ('num_train_steps', 100_000, 'B.3 "100k iterations"'),
        ('batch_size', 256, 'B.3 "4*64=256"'),
        ('label_smoothing', 0.0, 'B.3 "No label smoothing ... for the Charades"'),
        ('loss', 'sigmoid_xent', '§6.1.1 multi-label, mAP'),
        ('dataset.eval_resize', '256x256', '§6.1 "256x256x64 videos for testing"',
         'short side 256, centre crop 224', 'centre crop 224'),
        ('model.name', 'X(2+1)D bottleneck', '§6.1', 'vivit', "Charades backbone is X(2+1)D"),
    ],
    'charades_bottleneck': [
        ('model.name', 'bottleneck', '§6.1'),
        ('model.bottleneck.module', 'conv2d_tokenlearner', '§6.1 final model, Fig. 9'),
        ('model.bottleneck.num_tokens', 8, '§6.1 "S=8"'),
        ('model.bottleneck.transformer', 'vector', '§6.1, Appendix A'),
        ('model.bottleneck.tl_conv_layers', 1, '§6.1 "a single conv2d layer"'),
        (lambda c: round(c.model.bottleneck.expansion * c.model.bottleneck.widths[3]), 432,
         '§6.1 "d=432"'),
        ('model.bottleneck.depths', (3, 5, 11, 7), '§6.1 X3D-M layers'),
        ('dataset.num_frames', 64, '§6.1'),
        ('dataset.image_size', (224, 224), '§6.1'),
        ('learning_rate', 0.8, 'B.3 "0.8 per TPU core"'),
        ('lr_schedule', 'cosine', 'B.3'),
        ('num_train_steps', 100_000, 'B.3'),
        ('batch_size', 256, 'B.3'),
        ('label_smoothing', 0.0, 'B.3'),
        ('loss', 'sigmoid_xent', '§6.1.1'),
        ('dataset.eval_resize', '256x256', '§6.1 "256x256x64 videos for testing"',
         'short side 256, centre crop 224', "256x256 testing"),
    ],
    'avid_tokenlearner': [
        ('model.num_classes', 887, '§6.1.1 "887 classes"'),
        ('batch_size', 512, 'B.3 "8 per TPU core" x 64'),
        ('num_train_steps', 100_000, 'B.3 "100k iterations ... roughly 125 epochs"'),
        ('label_smoothing', 0.2, 'B.3 "Label smoothing of 0.2"'),
        ('loss', 'softmax_xent', '§6.1.1 single-label'),
        ('mean_per_class_accuracy', True, 'Table 11 "mean accuracy ... over 887 classes"'),
    ],
    'avid_bottleneck': [
        ('model.name', 'bottleneck', '§6.1'),
        ('model.num_classes', 887, '§6.1.1'),
        ('learning_rate', 0.025, 'B.3 "0.025 per TPU"'),
        ('batch_size', 512, 'B.3'),
        ('num_train_steps', 100_000, 'B.3'),
        ('label_smoothing', 0.2, 'B.3'),
        ('mean_per_class_accuracy', True, 'Table 11'),
    ],
}


def _eval_resize(config):
  """What the data layer does to an eval view (token_learner/data/images.py, videos.py)."""
  d = config.dataset
  size = d.image_size if isinstance(d.image_size, int) else d.image_size[0]
  if 'eval_short_side' not in d:  # images: short side to S / 0.875, centre crop S
    return f'short side {size}/0.875, centre crop {size}'
  return f'short side {d.eval_short_side or size}, centre crop {size}'


def _value(config, key):
  if callable(key):
    return key(config)
  if key == 'dataset.eval_resize':
    return _eval_resize(config)
  value = config
  for part in key.split('.'):
    value = value[part]
  if key == 'dataset.image_size' and isinstance(value, int):
    value = (value, value)
  return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize('name', sorted(PAPER))
def test_config_follows_the_paper(name):
  module = importlib.import_module(f'configs.{name}')
  config, source = module.get_config(), inspect.getsource(module)
  experiment.model_and_data(config)  # the config is valid as it stands
  for row in PAPER[name]:
    key, paper, where = row[:3]
    got = _value(config, key)
    if len(row) == 5:  # a documented difference
      ours, phrase = row[3:]
      assert got == ours, (key, got, ours)
      assert phrase in source, f'{name}: differs from the paper ({where}) without saying why'
    elif isinstance(paper, (int, float)) and not isinstance(paper, bool):
      assert got == pytest.approx(paper, rel=1e-3), (key, got, paper, where)
    else:
      assert got == paper, (key, got, paper, where)


# Table 14 (Appendix D.1): Conv2D + transformer inside the bottleneck; row -> config.model.bottleneck
# (the readings of the rows: token_learner/bottleneck.py's module docstring).
TABLE14 = {
    'Standard transformer (MHSA)': dict(module='conv2d_joint_mhsa'),
    'Vector transformer (VectT)': dict(module='conv2d_vector', query_chunk=64),
    'Prior-only-attention + broadcasting': dict(module='conv2d_prior_tokens', fuser='broadcast'),
    'Vector transformer (VectT) + broadcasting': dict(module='conv2d_grid_tokens',
                                                      fuser='broadcast'),
    'Vector transformer (VectT) + TokenFuser': dict(module='conv2d_grid_tokens'),
    'TokenLearner + MHSA + TokenFuser': dict(module='conv2d_tokenlearner', transformer='mhsa'),
    'TokenLearner + VectT + TokenFuser': dict(module='conv2d_tokenlearner'),
}


def test_table14_rows_build():
  """Each row, on the Charades config (64 x 224 x 224; one residual module per stage to keep
  the trace short), initialised abstractly: the module of res5 has the row's parts and no other
  row's."""
  from configs import charades_bottleneck  # pylint: disable=g-import-not-at-top
  seen = set()
  for row, bottleneck in TABLE14.items():
    config = charades_bottleneck.get_config()
    config.model.bottleneck.update(dict(bottleneck, depths=(1, 1, 1, 1)))
    model_cfg, _ = experiment.model_and_data(config)
    model = build_model(model_cfg)
    video = jax.ShapeDtypeStruct((1, *model_cfg.input_shape), jnp.float32)
    params = jax.eval_shape(lambda k, v: model.init(k, v, train=False), jax.random.key(0),
                            video)['params']
    parts = frozenset(params['res5_0']['module'])
    assert parts not in seen, row  # every row is a different module
    seen.add(parts)
    assert 'conv2d' in parts, row
    assert ('tokenlearner' in parts) == row.startswith('TokenLearner'), row
    assert ('tokenfuser' in parts) == row.endswith('TokenFuser'), row
    assert ('token_mhsa' in parts or 'joint_mhsa' in parts) == ('MHSA' in row), row
  assert len(seen) == 7
