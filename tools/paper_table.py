"""The paper's FLOPs rows as config overrides, and a table of paper value vs. ours.

    python -m tools.paper_table            # markdown table, ~1 s per row

Each row is (table, description, base config file, overrides, paper GFLOPs). Resolutions the paper
gives as 512 for L/14 and L/10 are not divisible by those patches; 504 (36x36) and 510 (51x51) are
the sizes whose FLOPs match the paper's rows.
"""
import importlib

from token_learner.experiment import model_and_data
from token_learner.flops import count_flops_and_params

IMAGE, VIDEO = 'configs.imagenet_tokenlearner', 'configs.kinetics400_tokenlearner'


def _vit(variant, size, tokens=0, loc=6, fuser=False, layers=None, version='v1'):
  overrides = {'model.variant': variant, 'dataset.image_size': size,
               'model.tokenlearner.num_tokens': tokens, 'model.tokenlearner.loc': loc,
               'model.tokenlearner.fuser': fuser, 'model.tokenlearner.version': version}
  if layers:
    overrides['model.num_layers'] = layers
  return overrides


ROWS = [
    ('1', 'ViT S/32', IMAGE, _vit('S/32', 384), 3.4),
    ('1', 'ViT B/32', IMAGE, _vit('B/32', 384), 19.8),
    ('1', 'ViT B/16', IMAGE, _vit('B/16', 384), 55.6),
    ('1', 'TokenLearner S/32 (8 at 6)', IMAGE, _vit('S/32', 384, 8, 6), 1.9),
    ('1', 'TokenLearner B/16 (16 at 6)', IMAGE, _vit('B/16', 384, 16, 6), 28.7),
    # "(n)": n layers with the TokenLearner at the mid-point (§3.4: "unless specified otherwise").
    ('1', 'TokenLearner S/32 (22), 8 at 11', IMAGE, _vit('S/32', 384, 8, 11, layers=22), 3.3),
    ('1', 'TokenLearner B/32 (20), 8 at 10', IMAGE, _vit('B/32', 384, 8, 10, layers=20), 11.5),
    ('1', 'TokenLearner B/16 (21), 8 at 10', IMAGE, _vit('B/16', 384, 8, 10, layers=21), 47.1),
    ('1', '16-TokenLearner B/16 (21), 16 at 10', IMAGE, _vit('B/16', 384, 16, 10, layers=21),
     47.7),
    ('2', 'ViT L/16 (24), 512', IMAGE, _vit('L/16', 512), 363.1),
    ('2', 'L/16 24, 16-TL at 12', IMAGE, _vit('L/16', 512, 16, 12), 178.1),
    ('2', 'L/16 24+11, 16-TL at 12', IMAGE, _vit('L/16', 512, 16, 12, layers=35), 186.8),
    ('2', 'L/16 24+6, 8-TL at 18', IMAGE, _vit('L/16', 512, 8, 18, layers=30), 274.2),
    ('2', 'L/14 24+11, 16-TL at 18 (504 px)', IMAGE, _vit('L/14', 504, 16, 18, layers=35), 361.6),
    ('4', 'ViT B/16', IMAGE, _vit('B/16', 384), 55.63),
    ('4', 'L/16, 16-TL at 2', IMAGE, _vit('L/16', 384, 16, 2), 20.91),
    ('4', 'L/16, 16-TL at 3', IMAGE, _vit('L/16', 384, 16, 3), 28.66),
    ('4', 'L/16, 16-TL at 6', IMAGE, _vit('L/16', 384, 16, 6), 51.92),
    ('5', 'B/16, 8-TL at 6', IMAGE, _vit('B/16', 384, 8, 6), 28.3),
    ('5', 'B/16, 8-TL at 6 + fuser', IMAGE, _vit('B/16', 384, 8, 6, True), 28.5),
    ('5', 'B/16, 16-TL at 6', IMAGE, _vit('B/16', 384, 16, 6), 28.7),
    ('5', 'B/16, 16-TL at 6 + fuser', IMAGE, _vit('B/16', 384, 16, 6, True), 29.1),
    ('5', 'L/16, 16-TL at 12', IMAGE, _vit('L/16', 512, 16, 12), 184.6),
    ('5', 'L/16, 16-TL at 12 + fuser', IMAGE, _vit('L/16', 512, 16, 12, True), 187.1),
    ('5', 'L/16, 8-TL at 18', IMAGE, _vit('L/16', 512, 8, 18), 273.2),
    ('5', 'L/16, 8-TL at 18 + fuser', IMAGE, _vit('L/16', 512, 8, 18, True), 273.8),
    ('5', 'L/10 24+11, 16-TL at 18 (510 px)', IMAGE, _vit('L/10', 510, 16, 18, layers=35), 849.0),
    ('5', 'L/10 24+11, 16-TL at 18 + fuser (510 px)', IMAGE,
     _vit('L/10', 510, 16, 18, True, layers=35), 856.9),
    ('6', '2x2 pool at 9 and 18', IMAGE,
     {**_vit('L/16', 512), 'model.spatial_pooling': ((9, 2), (18, 2))}, 144.3),
    ('6', '2x2 pool at 12 and 18', IMAGE,
     {**_vit('L/16', 512), 'model.spatial_pooling': ((12, 2), (18, 2))}, 187.2),
    ('6', '4x4 pool at 12', IMAGE, {**_vit('L/16', 512), 'model.spatial_pooling': ((12, 4),)},
     184.4),
    ('7', 'ViViT-L/16', VIDEO, {'model.tokenlearner.num_tokens': 0}, 1446),
    ('7', 'TokenLearner 16at12 + L/16', VIDEO, {}, 766),
    ('7', 'TokenLearner 8at18 + L/16 (24+6)', VIDEO,
     {'model.tokenlearner.num_tokens': 8, 'model.tokenlearner.loc': 18, 'model.num_layers': 30},
     1105),
    ('7', 'TokenLearner 16at18 + L/14 (24+11)', VIDEO,
     {'model.variant': 'L/14', 'model.tokenlearner.loc': 18, 'model.num_layers': 35}, 1621),
]


def build_config(module_name, overrides):
  """The base config with dotted-key overrides applied (as on the command line)."""
  config = importlib.import_module(module_name).get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def measure(row):
  """`(gflops, params)` of one ROWS entry."""
  _, _, module_name, overrides, _ = row
  return count_flops_and_params(model_and_data(build_config(module_name, overrides))[0])


def main():
  print('| Table | Model | paper GFLOPs | ours | diff | params |')
  print('|---|---|---|---|---|---|')
  for row in ROWS:
    gflops, params = measure(row)
    paper = row[4]
    print(f'| {row[0]} | {row[1]} | {paper} | {gflops:.2f} | {100 * (gflops / paper - 1):+.1f} % '
          f'| {params / 1e6:.1f} M |', flush=True)


if __name__ == '__main__':
  main()
