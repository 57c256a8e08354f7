r"""Runs every named override set of a config's `get_sweep()` and tabulates the results.

  python sweep.py --config=configs/digits_tokenlearner.py --workdir=/tmp/tl_sweep
  python sweep.py --config=configs/digits_tokenlearner.py --workdir=/tmp/tl_sweep --dry_run

Each entry {'name': str, 'overrides': {'model.tokenlearner.num_tokens': 0, ...}} trains into
WORKDIR/<name>/ (one after another; re-running resumes / re-evaluates finished runs), then
WORKDIR/results.csv and WORKDIR/results.md list name, overrides, GFLOPs, parameters and the final
metrics; WORKDIR/results.png plots accuracy vs GFLOPs, one labelled point per run. Command-line
overrides of --config apply to every run. --dry_run prints the equivalent `python main.py ...`
command lines instead, e.g. to launch them on a cluster.
"""
import copy
import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from token_learner import flag_parsing
from token_learner import tree
from token_learner import plots

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Root directory; each run goes to WORKDIR/<name>.')
config_flags.DEFINE_config_file('config', None, 'Config file with get_sweep().', lock_config=True)
flags.DEFINE_bool('dry_run', False, 'Print the main.py command lines and exit.')
flags.DEFINE_list('only', [], 'Run only these names of the sweep.')
flags.DEFINE_bool('subprocess', False, 'Run each entry as `python main.py` in a subprocess '
                  '(default: in this process, one after another).')
flags.mark_flags_as_required(['config', 'workdir'])

METRICS = ('eval_accuracy', 'eval_top5_accuracy', 'eval_loss', 'train_loss')


def load_sweep(config_path: str):
  """The `get_sweep()` list of the config file (path may carry a ':arg' suffix)."""
  path = config_path.split(':')[0]
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise app.UsageError(f'{path} has no get_sweep()')
  return module.get_sweep()


def command_line(config_path, workdir, overrides, cli_overrides):
  """The `python main.py ...` equivalent of one sweep entry."""
  args = [sys.executable, 'main.py', f'--config={config_path}', f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in cli_overrides.items()]
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  return args


def write_results(root, rows):
  """results.csv and results.md (a Markdown table) in `root`."""
  fields = ['name', 'overrides', 'gflops', 'num_params', 'steps', 'wall_time_s', *METRICS]
  with open(os.path.join(root, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(root, 'results.md'), 'w') as f:
    f.write('| ' + ' | '.join(fields) + ' |\n')
    f.write('|' + '---|' * len(fields) + '\n')
    for row in rows:
      cells = [f'{row[k]:.4g}' if isinstance(row[k], float) else str(row[k]) for k in fields]
      f.write('| ' + ' | '.join(cells) + ' |\n')
  plots.accuracy_vs_gflops(os.path.join(root, 'results.png'), rows)


def result_row(name, overrides, workdir):
  path = os.path.join(workdir, 'summary.json')
  row = dict(name=name, overrides=json.dumps(overrides, sort_keys=True))
  if not os.path.exists(path):
    return dict(row, gflops='', num_params='', steps='', wall_time_s='',
                **{k: 'failed' for k in METRICS})
  with open(path) as f:
    summary = json.load(f)
  final = summary['final_metrics']
  return dict(row, gflops=summary['gflops'], num_params=summary['num_params'],
              steps=summary['steps'], wall_time_s=round(summary['wall_time_s'], 1),
              **{k: final.get(k, '') for k in METRICS})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = config_flags.get_config_filename(FLAGS['config'])
  cli_overrides = config_flags.get_override_values(FLAGS['config'])
  cli_overrides = tree.flatten(cli_overrides, sep='.')
  sweep = load_sweep(config_path)
  if FLAGS.only:
    unknown = set(FLAGS.only) - {entry['name'] for entry in sweep}
    if unknown:
      raise app.UsageError(f'--only names not in the sweep: {sorted(unknown)}')
    sweep = [entry for entry in sweep if entry['name'] in FLAGS.only]

  if FLAGS.dry_run:
    for entry in sweep:
      workdir = os.path.join(FLAGS.workdir, entry['name'])
      print(shlex.join(command_line(config_path, workdir, entry['overrides'], cli_overrides)[1:]
                       ).replace('main.py', 'python main.py', 1))
    return

  os.makedirs(FLAGS.workdir, exist_ok=True)
  rows = []
  for entry in sweep:
    name, overrides = entry['name'], entry['overrides']
    workdir = os.path.join(FLAGS.workdir, name)
    logging.info('Sweep entry %s: %s -> %s', name, overrides, workdir)
    if FLAGS.subprocess:
      subprocess.run(command_line(config_path, workdir, overrides, cli_overrides), check=False,
                     cwd=os.path.dirname(os.path.abspath(__file__)))
    else:
      import trainer  # pylint: disable=g-import-not-at-top  # Only runs in-process need jax.
      config = copy.deepcopy(FLAGS.config)
      config.update_from_flattened_dict(overrides)
      try:
        trainer.train_and_evaluate(config, workdir)
      except (ValueError, FloatingPointError) as e:  # A bad entry must not end the sweep.
        logging.error('Sweep entry %s failed: %s', name, e)
    rows.append(result_row(name, overrides, workdir))
    write_results(FLAGS.workdir, rows)
  print(open(os.path.join(FLAGS.workdir, 'results.md')).read())


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
