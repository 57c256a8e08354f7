"""docs/datasets.md against the code, and every paper config run without its data.

The table of what each config reads (dataset, splits, feature keys) is compared with the data
section each config builds; the prepare commands with `token_learner.data.guide` (the ones the
error lines print) and with the flags prepare_video_data.py defines. Then each paper config is
run as a new user would, `python main.py` with an empty data_dir: one line, exit 2, quickly.
"""
import importlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

import processes
from token_learner import experiment as experiment_lib
from token_learner.data import guide

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, guide.DOC)
PAPER_CONFIGS = ('imagenet_tokenlearner', 'imagenet21k_tokenlearner', 'kinetics400_tokenlearner',
                 'charades_tokenlearner', 'charades_bottleneck', 'avid_tokenlearner',
                 'avid_bottleneck')


def _tables():
  """[[{header: cell}]] of every markdown table of the doc (code spans unwrapped)."""
  tables, rows, header = [], None, None
  for line in open(DOC).read().splitlines() + ['']:
    if not line.startswith('|'):
      if rows is not None:
        tables.append(rows)
      rows = header = None
      continue
    cells = [c.strip().strip('`') for c in line.strip().strip('|').split('|')]
    if header is None:
      header, rows = cells, []
    elif not set(''.join(cells)) <= set('-: '):
      rows.append(dict(zip(header, cells)))
  return tables


def _table(*columns):
  """The one table whose header has `columns`."""
  (table,) = [t for t in _tables() if t and set(columns) <= set(t[0])]
  return table


def _data(config_name):
  config = importlib.import_module(f'configs.{config_name}').get_config()
  return experiment_lib.from_config(config).data


def test_every_config_is_in_the_table_with_its_data_section():
  rows = {r['Config']: r for r in _table('Config', 'Features')}
  configs = sorted(f for f in os.listdir(os.path.join(REPO, 'configs'))
                   if f.endswith('.py') and f not in ('__init__.py', 'common.py'))
  assert sorted(rows) == configs
  for name, row in rows.items():
    cfg = _data(name[:-3])
    assert row['Dataset'] == cfg.name, name
    if cfg.is_video and cfg.source == 'dmvr':
      assert (row['Train split'], row['Eval split']) == (cfg.file_pattern_train,
                                                         cfg.file_pattern_eval), name
      assert row['Features'] == f'{cfg.frames_key}, {cfg.label_key}', name
      from token_learner.data import prepare  # pylint: disable=g-import-not-at-top
      assert (cfg.frames_key, cfg.label_key) == (prepare.FRAMES_KEY, prepare.LABEL_KEY)
    else:
      assert (row['Train split'], row['Eval split']) == (cfg.train_split, cfg.eval_split), name
    if not cfg.is_video and cfg.source == 'tfds':
      assert row['Features'] == 'image, label', name


def test_tfds_rows_match_the_builders_and_the_error_commands():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from token_learner.data.imagenet21k import imagenet21k  # pylint: disable=g-import-not-at-top
  rows = {r['Dataset']: r for r in _table('Dataset', 'Manual files')}
  assert set(rows) == {'imagenet2012', 'imagenet2012_real', 'imagenet21k'}
  for name, row in rows.items():
    assert row['Prepare'] == guide.tfds_command(name, 'DATA_DIR'), name
    for archive in re.split(r', | or ', row['Manual files']):
      assert archive in guide.TFDS[name].manual, (name, archive)
    builder = (imagenet21k.Imagenet21k(data_dir='/nonexistent') if name == 'imagenet21k'
               else tfds.builder(name, data_dir='/nonexistent'))
    features = builder.info.features
    assert 'image' in features and ('label' in features or 'original_label' in features)


def test_video_rows_match_the_error_commands_and_the_script_flags():
  rows = {r['Dataset']: r for r in _table('Dataset', 'Train command')}
  assert set(rows) == {'kinetics400', 'kinetics600', 'charades', 'avid'}
  script = open(os.path.join(REPO, 'prepare_video_data.py')).read()
  defined = set(re.findall(r"DEFINE_\w+\('(\w+)'", script))
  for name, row in rows.items():
    for split, column in (('train', 'Train command'), ('eval', 'Eval command')):
      out = re.search(r'--out=(\S+)', row[column]).group(1)
      assert row[column] == guide.dmvr_command(name, split, out + '-*.tfrecord'), (name, split)
      assert set(re.findall(r'--(\w+)=', row[column])) <= defined
  for config in ('kinetics400_tokenlearner', 'charades_tokenlearner', 'avid_tokenlearner'):
    cfg = _data(config)
    for split, pattern in (('train', cfg.file_pattern_train), ('eval', cfg.file_pattern_eval)):
      column = 'Train command' if split == 'train' else 'Eval command'
      assert guide.dmvr_command(cfg.name, split, pattern) == rows[cfg.name][column]


def test_imagenet21k_builder_reads_an_archive(tmp_path):
  """The builder on a 2-class winter21-style archive, then the data layer reads the result."""
  import io  # pylint: disable=g-import-not-at-top
  import tarfile  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from token_learner import data  # pylint: disable=g-import-not-at-top
  from token_learner.data.imagenet21k import imagenet21k  # pylint: disable=g-import-not-at-top

  def add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))
  manual = tmp_path / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'winter21_whole.tar.gz', 'w:gz') as outer:
    for synset, n in (('n002', 2), ('n001', 1)):
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
        for i in range(n):
          jpeg = io.BytesIO()
          Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(jpeg, format='JPEG')
          add(inner, f'{synset}_{i}.JPEG', jpeg.getvalue())
      add(outer, f'winter21_whole/{synset}.tar', inner_bytes.getvalue())
  data_dir = str(tmp_path / 'tfds')
  imagenet21k.Imagenet21k(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  cfg = data.from_dict(dict(name='imagenet21k', data_dir=data_dir, train_split='train[1:]',
                            eval_split='train[:1]', image_size=8))
  info = data.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (2, 2, 1)


# One process imports main.py once, then runs each paper config's main.train as main.py would.
_DRIVER = r"""
import contextlib, importlib, io, json, sys, time
start = time.time()
import main
imports = time.time() - start
out = {}
for name in sys.argv[2:]:
  config = importlib.import_module('configs.' + name).get_config()
  config.dataset.data_dir = sys.argv[1]
  err, start = io.StringIO(), time.time()
  with contextlib.redirect_stderr(err):
    try:
      main.train(config, sys.argv[1] + '/../work_' + name)
      code = 0
    except SystemExit as e:
      code = e.code
  out[name] = dict(code=code, stderr=err.getvalue(), seconds=time.time() - start)
print(json.dumps(dict(imports=imports, runs=out)))
"""


def _check_line(config, line, empty):
  cfg = _data(config)
  assert repr(cfg.name) in line and guide.DOC in line, line
  if cfg.is_video:
    assert repr(cfg.file_pattern_train) in line and 'python prepare_video_data.py' in line
    assert guide.dmvr_command(cfg.name, 'train', cfg.file_pattern_train) in line
  else:
    assert f'not prepared in {empty}' in line and f'{empty}/{cfg.name}' in line
    assert guide.tfds_command(cfg.name, str(empty)) in line


def test_imagenet_without_data_exits_2_with_one_line(tmp_path, subprocess_env):
  """The issue's first contact: `python main.py --config=configs/imagenet_tokenlearner.py`
  without ImageNet. Under 20 s on an idle machine (most of it importing jax and TensorFlow)."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  start = time.time()
  proc = processes.run(
      [sys.executable, 'main.py', '--config=configs/imagenet_tokenlearner.py',
       f'--workdir={tmp_path}/work', f'--config.dataset.data_dir={empty}'],
      REPO, subprocess_env(), timeout=300)
  seconds = time.time() - start
  errors = [l for l in proc.stderr.splitlines() if l.startswith('main.py: config error:')]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  _check_line('imagenet_tokenlearner', errors[0], empty)
  print(f'imagenet_tokenlearner: exit 2 after {seconds:.1f} s')
  assert seconds < 60, seconds  # 20 s idle; generous for a loaded shared machine.


def test_paper_configs_without_data_stop_before_compiling(tmp_path, subprocess_env):
  """Each paper config with an empty data_dir: exit 2, one line naming the dataset, where it
  looked and the command, seconds after the imports (nothing is read or compiled)."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = subprocess.run([sys.executable, '-c', _DRIVER, str(empty), *PAPER_CONFIGS], cwd=REPO,
                        env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.splitlines()[-1])
  for config, run in report['runs'].items():
    errors = [l for l in run['stderr'].splitlines() if l.startswith('main.py: config error:')]
    assert run['code'] == 2 and len(errors) == 1, (config, run['stderr'][-3000:])
    _check_line(config, errors[0], empty)
    print(f"{config}: exit 2 after {report['imports']:.1f} s imports + {run['seconds']:.1f} s")
    assert run['seconds'] < 10, (config, run['seconds'])


def test_three_class_image_folder_run_drops_top5_and_counts_ignored_files(
    tmp_path, tiny_config, caplog):
  """The real-photo path: a 3-class folder (plus a hidden file and a .txt) trains; summary.json
  has no top-5 accuracy (always 1 with <= 5 classes) and the dataset line counts the 2 files."""
  import json as json_  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from token_learner.train import loop  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'photos'
  for split, n in (('train', 4), ('test', 2)):
    for k, cls in enumerate(('ant', 'bee', 'cat')):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(np.full((12, 12, 3), 80 * k + i, np.uint8)).save(
            root / split / cls / f'{i}.png')
  (root / 'train' / 'ant' / '._0.png').write_bytes(b'AppleDouble')
  (root / 'train' / 'bee' / 'notes.txt').write_text('not an image')
  config = tiny_config(**{'dataset.name': 'image_folder', 'dataset.root': str(root),
                          'model.num_classes': 3, 'num_train_steps': 2, 'batch_size': 8,
                          'eval_batch_size': 8, 'checkpoint_every_steps': 0})
  with caplog.at_level(logging.INFO):
    final = loop.train_and_evaluate(config, str(tmp_path / 'work'))
  summary = json_.load(open(tmp_path / 'work' / 'summary.json'))
  assert 'eval_accuracy' in final and 'eval_accuracy' in json_.dumps(summary)
  assert 'top5' not in json_.dumps(summary) and not any('top5' in k for k in final)
  assert '12 train / 6 eval examples, 3 classes' in caplog.text
  assert '2 files ignored (1 hidden, 1 without an image extension)' in caplog.text
