"""The encoder plan (token_learner/encoder_plan.py): the placement of §3.1 / Fig. 3 as data,
tested without building a model."""
import ast
import itertools
import os
import subprocess
import sys

import pytest

from token_learner.encoder_plan import (PATCHES, TOKENS, Blocks, Learn, LearnAndFuse, Pool, plan,
                                        segments)
from token_learner.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TL_FIELDS = ('num_tokens', 'loc', 'version', 'fuser', 'fuser_type', 'fuser_mixing')


def make_config(variant='B/16', image_size=224, name='vit', num_frames=8, **model):
  tl = {k: model.pop(k) for k in list(model) if k in _TL_FIELDS}
  section = dict(name=name, variant=variant, tokenlearner=tl, **model)
  return ModelConfig.from_dict(section, image_size=image_size, num_frames=num_frames)


def fuse(layer, num_tokens=8, version='v1', fuser_type='tokenfuser', mixing='global'):
  return LearnAndFuse(layer, num_tokens, version, fuser_type, mixing)


# ----------------------------------------------------------------------------- the paper's models
def test_vit_b16_8_tokens_at_layer_6():
  """§3.1, Fig. 3(a): "inserting TokenLearner ... after the 6th transformer among 12"."""
  assert plan(make_config(num_tokens=8, loc=6)) == (
      Blocks(0, 6, PATCHES), Learn(6, 8, 'v1'), Blocks(6, 12, TOKENS))


def test_vit_b16_fig3b_fuses_after_each_later_block():
  """§3.1, Fig. 3(b): six standard layers, then TokenLearner-Transformer-TokenFuser six times."""
  steps = plan(make_config(num_tokens=8, loc=6, fuser=True, version='v1.1'))
  assert steps == (Blocks(0, 6, PATCHES), *[fuse(lyr, version='v1.1') for lyr in range(6, 12)])


@pytest.mark.parametrize('loc', [12, 24])
def test_vit_l16_24_plus_11(loc):
  """Table 2, ViT L/16 "24+11": 35 layers, the TokenLearner at 12 ("16-TL at 12") or after the
  original 24; the layers after it run on the 16 tokens, one scan segment on each side."""
  cfg = make_config('L/16', 512, num_layers=35, num_tokens=16, loc=loc)
  assert plan(cfg) == (Blocks(0, loc, PATCHES), Learn(loc, 16, 'v1'), Blocks(loc, 35, TOKENS))
  scanned = make_config('L/16', 512, num_layers=35, num_tokens=16, loc=loc, scan_layers=True)
  assert plan(scanned) == (Blocks(0, loc, PATCHES, True), Learn(loc, 16, 'v1'),
                           Blocks(loc, 35, TOKENS, True))
  assert segments(plan(scanned)) == ((0, loc), (loc, 35))


@pytest.mark.parametrize('loc', range(13))
def test_scan_segments_are_0_to_loc_and_loc_to_L(loc):
  steps = plan(make_config(num_tokens=8, loc=loc, scan_layers=True))
  want = ((0, 12),) if loc in (0, 12) else ((0, loc), (loc, 12))
  assert segments(steps) == want
  assert all(s.scanned for s in steps if isinstance(s, Blocks))
  assert [s for s in steps if isinstance(s, Learn)] == [Learn(loc, 8, 'v1')]


@pytest.mark.parametrize('scan', [False, True])
def test_plain_vit_is_one_run_of_blocks(scan):
  assert plan(make_config(num_tokens=0, scan_layers=scan)) == (Blocks(0, 12, PATCHES, scan),)
  assert plan(make_config(num_tokens=0, classifier='token', num_layers=3)) == (Blocks(0, 3),)


def test_spatial_pooling_cuts_the_blocks():
  """§3.5.2, Table 6 "2x2 pool at 9 and 18" on ViT L/16 (a 32x32 grid at 512 px)."""
  cfg = make_config('L/16', 512, num_tokens=0, spatial_pooling=((18, 2), (9, 2)))
  assert plan(cfg) == (Blocks(0, 9), Pool(9, 2), Blocks(9, 18), Pool(18, 2), Blocks(18, 24))
  edges = make_config(num_tokens=0, num_layers=3, spatial_pooling=((0, 2), (3, 7)))
  assert plan(edges) == (Pool(0, 2), Blocks(0, 3), Pool(3, 7))


def test_tokenlearner_at_the_ends():
  """Fig. 4's locations '0' (before any transformer) and the end of the network."""
  assert plan(make_config(num_tokens=8, loc=0)) == (Learn(0, 8, 'v1'), Blocks(0, 12, TOKENS))
  assert plan(make_config(num_tokens=8, loc=12)) == (Blocks(0, 12, PATCHES), Learn(12, 8, 'v1'))
  assert plan(make_config(num_tokens=8, loc=0, fuser=True)) == tuple(
      fuse(lyr) for lyr in range(12))


def test_vivit_and_fuser_variants_are_carried():
  cfg = make_config('Mu/2', 8, name='vivit', num_layers=3, num_tokens=2, loc=1, fuser=True,
                    fuser_type='unpool', fuser_mixing='per_frame', version='v1.1')
  assert plan(cfg) == (Blocks(0, 1), fuse(1, 2, 'v1.1', 'unpool', 'per_frame'),
                       fuse(2, 2, 'v1.1', 'unpool', 'per_frame'))


# ----------------------------------------------------------------------------- properties
def _configs():
  """Every placement on a 5-layer Mu/4 model (16x16 grid at 64 px), images and video."""
  for loc, fuser, version, scan, classifier in itertools.product(
      range(6), (False, True), ('v1', 'v1.1'), (False, True), ('gap', 'token')):
    if fuser and (scan or loc == 5):
      continue
    yield make_config('Mu/4', 64, num_layers=5, num_tokens=4, loc=loc, fuser=fuser,
                      version=version, scan_layers=scan, classifier=classifier)
  for pools in [(), ((0, 2),), ((2, 2),), ((5, 2),), ((1, 2), (3, 4)), ((0, 2), (2, 2), (5, 2))]:
    yield make_config('Mu/4', 64, num_layers=5, num_tokens=0, spatial_pooling=pools)
  yield make_config('Mu/4', 64, num_layers=5, num_tokens=0, scan_layers=True)
  yield make_config('Mu/2', 16, name='vivit', num_layers=4, num_tokens=2, loc=2)


CONFIGS = list(_configs())


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: _describe(c))
def test_every_layer_runs_exactly_once_in_order(cfg):
  steps = plan(cfg)
  layers = [lyr for s in steps for lyr in s.layers]
  assert layers == list(range(cfg.num_layers))
  for lyr in range(cfg.num_layers):
    assert sum(lyr in s.layers for s in steps) == 1
  for s in steps:  # No empty runs, and two runs of blocks are always cut by something.
    assert not isinstance(s, Blocks) or s.start < s.stop
  assert not any(isinstance(a, Blocks) and isinstance(b, Blocks) for a, b in zip(steps, steps[1:]))
  # Steps between layers sit where their layer says: after the blocks of the layers before it.
  done = 0
  for s in steps:
    if isinstance(s, (Learn, Pool)):
      assert s.layer == done
    done += len(s.layers)


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: _describe(c))
def test_placement_follows_the_config(cfg):
  steps, tl, num_layers = plan(cfg), cfg.tokenlearner, cfg.num_layers
  learns = [s for s in steps if isinstance(s, Learn)]
  fused = [s for s in steps if isinstance(s, LearnAndFuse)]
  blocks = [s for s in steps if isinstance(s, Blocks)]
  pools = [(s.layer, s.k) for s in steps if isinstance(s, Pool)]
  assert pools == list(cfg.spatial_pooling)
  assert all(b.scanned == cfg.scan_layers for b in blocks)
  if not cfg.uses_tokenlearner:
    assert not learns and not fused and all(b.grid == PATCHES for b in blocks)
  elif not tl.fuser:  # Fig. 3(a): one TokenLearner, at loc; patches before, tokens after.
    assert learns == [Learn(tl.loc, tl.num_tokens, tl.version)] and not fused
    assert all(b.grid == (PATCHES if b.stop <= tl.loc else TOKENS) for b in blocks)
    assert all(b.start >= tl.loc or b.stop <= tl.loc for b in blocks)
  else:  # Fig. 3(b): TokenLearner -> block -> fuser at every layer from loc on.
    assert not learns and [s.layer for s in fused] == list(range(tl.loc, num_layers))
    assert all(s == fuse(s.layer, tl.num_tokens, tl.version, tl.fuser_type, tl.fuser_mixing)
               for s in fused)
    assert all(b.stop <= tl.loc and b.grid == PATCHES for b in blocks)
  if cfg.scan_layers:
    assert len(blocks) <= 2


def _describe(cfg):
  tl = cfg.tokenlearner
  return (f'{cfg.name}-L{cfg.num_layers}-S{tl.num_tokens}-loc{tl.loc}-{tl.version}-'
          f'fuser{int(tl.fuser)}-scan{int(cfg.scan_layers)}-{cfg.classifier}-'
          f'pool{"_".join(f"{a}x{b}" for a, b in cfg.spatial_pooling)}')


# ----------------------------------------------------------------------------- errors
def _forged(cfg, **fields):
  """`cfg` with fields set past ModelConfig's validation (tokenlearner fields as 'tl_<name>')."""
  for key, value in fields.items():
    target = cfg.tokenlearner if key.startswith('tl_') else cfg
    object.__setattr__(target, key.removeprefix('tl_'), value)
  return cfg


@pytest.mark.parametrize('bad,base', [
    (dict(scan_layers=True), dict(num_tokens=3, loc=1, fuser=True)),
    (dict(scan_layers=True), dict(num_tokens=0, spatial_pooling=((1, 2),))),
    (dict(spatial_pooling=((1, 2),)), dict(num_tokens=3, loc=1)),
    (dict(spatial_pooling=((1, 2),)), dict(num_tokens=0, classifier='token')),
    (dict(tl_loc=4), dict(num_tokens=3, loc=1)),
    (dict(tl_loc=3), dict(num_tokens=3, loc=1, fuser=True)),
])
def test_plan_raises_the_configs_errors(bad, base):
  """What ModelConfig rejects, the plan rejects with the same message (for a config that got past
  validation): unsupported layouts never reach the encoder."""
  config_section = dict(base, **{k.removeprefix('tl_'): v for k, v in bad.items()})
  with pytest.raises(ValueError) as from_config:
    make_config('Mu/4', 16, num_layers=3, **config_section)
  forged = _forged(make_config('Mu/4', 16, num_layers=3, **base), **bad)
  with pytest.raises(ValueError) as from_plan:
    plan(forged)
  assert str(from_plan.value) == str(from_config.value)
  assert 'config.model.' in str(from_plan.value)


def test_bottleneck_has_no_encoder_plan():
  with pytest.raises(ValueError, match="name='bottleneck'"):
    plan(ModelConfig.from_dict(dict(name='bottleneck'), image_size=32, num_frames=4))


# ----------------------------------------------------------------------------- no Flax
def test_encoder_plan_imports_only_the_standard_library_and_model_config():
  path = os.path.join(ROOT, 'token_learner', 'encoder_plan.py')
  imported = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      imported |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      imported.add(node.module)
  assert imported <= {'dataclasses', 'typing', 'token_learner.model_config'}, imported


def test_plans_are_built_without_flax_or_jax():
  """In a fresh interpreter, with the package's own __init__ (which imports the Flax models)
  bypassed: building plans loads neither flax nor jax."""
  script = f'''
import sys, types
pkg = types.ModuleType('token_learner')
pkg.__path__ = [{os.path.join(ROOT, 'token_learner')!r}]
sys.modules['token_learner'] = pkg
from token_learner.encoder_plan import plan
from token_learner.model_config import ModelConfig
for tl in (dict(num_tokens=8, loc=6), dict(num_tokens=8, loc=6, fuser=True), dict(num_tokens=0)):
  steps = plan(ModelConfig.from_dict(dict(variant='B/16', tokenlearner=tl), image_size=224))
  assert [l for s in steps for l in s.layers] == list(range(12)), steps
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'jax', 'jaxlib', 'numpy'))
print('LOADED', bad)
'''
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=''))
  assert 'LOADED []' in out.stdout, out.stdout + out.stderr
