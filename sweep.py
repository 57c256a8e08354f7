r"""Runs every named override set of a config's `get_sweep()` and tabulates the results.

  python sweep.py --config=configs/digits_tokenlearner.py --workdir=/tmp/tl_sweep
  python sweep.py --config=configs/digits_tokenlearner.py --workdir=/tmp/tl_sweep --dry_run

Each entry {'name': str, 'overrides': {'model.tokenlearner.num_tokens': 0, ...}} trains into
WORKDIR/<name>/ (one after another; re-running resumes / re-evaluates finished runs); names are
checked first (a folder name: no '/', '..', empty or repeated names). WORKDIR/results.csv and
WORKDIR/results.md list name, status, overrides, GFLOPs, parameters and the final metrics of
every entry run so far in WORKDIR (`--only` replaces the rows it runs and keeps the others; status
fresh / reused / failed: token_learner/sweep_results.py); WORKDIR/results.png plots accuracy vs
GFLOPs, one labelled point per run. Command-line overrides of --config apply to every run.
--dry_run prints the equivalent `python main.py ...` command lines instead, e.g. to launch them
on a cluster.
"""
import copy
import importlib.util
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from token_learner import flag_parsing
from token_learner import paths
from token_learner import sweep_results
from token_learner import tree

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Root directory; each run goes to WORKDIR/<name>.')
config_flags.DEFINE_config_file('config', None, 'Config file with get_sweep().', lock_config=True)
flags.DEFINE_bool('dry_run', False, 'Print the main.py command lines and exit.')
flags.DEFINE_list('only', [], 'Run only these names of the sweep.')
flags.DEFINE_bool('subprocess', False, 'Run each entry as `python main.py` in a subprocess '
                  '(default: in this process, one after another).')
flags.mark_flags_as_required(['config', 'workdir'])

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


def _absolute_config(config_path: str) -> str:
  """The config path made absolute, its ':arg' suffix kept (main.py runs in this folder)."""
  path, sep, arg = config_path.partition(':')
  return paths.absolute(path) + sep + arg


def run_entry(config_path, workdir, overrides, cli_overrides) -> bool:
  """Trains / resumes one entry into `workdir`; whether it succeeded."""
  if FLAGS.subprocess:
    result = subprocess.run(command_line(config_path, workdir, overrides, cli_overrides),
                            check=False, cwd=os.path.dirname(os.path.abspath(__file__)))
    return result.returncode == 0
  import trainer  # pylint: disable=g-import-not-at-top  # Only runs in-process need jax.
  config = copy.deepcopy(FLAGS.config)
  config.update_from_flattened_dict(overrides)
  try:
    trainer.train_and_evaluate(config, workdir)
  except (ValueError, FloatingPointError, OSError) as e:  # A bad entry must not end the sweep.
    logging.error('Sweep entry %s failed: %s', paths.name(workdir), e)
    return False
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_path = config_flags.get_config_filename(FLAGS['config'])
  cli_overrides = config_flags.get_override_values(FLAGS['config'])
  cli_overrides = tree.flatten(cli_overrides, sep='.')
  sweep = load_sweep(config_path)
  try:
    sweep_results.check_names(sweep)
  except ValueError as e:  # Before anything runs: one line, exit 2.
    sys.stderr.write(f'sweep.py: {config_path}: {e}\n')
    sys.exit(2)
  order = [entry['name'] for entry in sweep]
  if FLAGS.only:
    unknown = set(FLAGS.only) - {entry['name'] for entry in sweep}
    if unknown:
      raise app.UsageError(f'--only names not in the sweep: {sorted(unknown)}')
    sweep = [entry for entry in sweep if entry['name'] in FLAGS.only]

  if FLAGS.dry_run:
    for entry in sweep:
      workdir = paths.join(FLAGS.workdir, entry['name'])
      args = command_line(config_path, workdir, entry.get('overrides', {}), cli_overrides)
      print(shlex.join(args[1:]).replace('main.py', 'python main.py', 1))
    return

  # Resolved once: a --subprocess run's main.py works in this file's folder, not in ours.
  root, config_path = paths.absolute(FLAGS.workdir), _absolute_config(config_path)
  paths.makedirs(root)
  rows = sweep_results.read(root)
  for entry in sweep:
    name, overrides = entry['name'], entry.get('overrides', {})
    workdir = paths.join(root, name)
    logging.info('Sweep entry %s: %s -> %s', name, overrides, workdir)
    ok = run_entry(config_path, workdir, overrides, cli_overrides)
    row = sweep_results.summary_row(name, overrides, workdir, ok)
    rows = sweep_results.merge(rows, [row], order)
    sweep_results.write(root, rows)
  print(paths.read_text(paths.join(root, 'results.md')))


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
