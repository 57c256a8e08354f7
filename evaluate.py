r"""Evaluates a run's checkpoint with the run's evaluators, without training or writing checkpoints.

  python evaluate.py --workdir=/tmp/token_learner                 # the latest checkpoint
  python evaluate.py --workdir=/tmp/md_tl --step=800 --split=test
  python evaluate.py --workdir=DIR --evals=eval,fewshot --fewshot

Runs the evaluators of `config.evals` (token_learner.evals: classification with multi-view
averaging for video, mAP for multi-label data, the metrics the config asks for; few-shot) over
their splits once, on all devices (and processes: launch it like main.py), and writes
WORKDIR/eval_<step>.json with `<evaluator>_<metric>` keys. The config is the one stored with the
checkpoint unless --config names one. --split replaces the dataset's eval split (evaluators with
a split of their own keep it); --fewshot adds a few-shot evaluator ('fewshot', the defaults of
token_learner.evals.config.FewShotEval) if the config has none. Nothing in WORKDIR/checkpoints is
touched.
"""
import json
import re

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from token_learner import data
from token_learner import evals as evals_lib
from token_learner import experiment as experiment_lib
from token_learner import paths
from token_learner.train import checkpoints
from token_learner.train import setup

flags.DEFINE_string('workdir', None, 'The run: its checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Config of the run (default: the checkpoint\'s).',
                                lock_config=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
flags.DEFINE_string('split', None, 'Eval split (default: the config\'s).')
flags.DEFINE_list('evals', None, 'Evaluators of config.evals to run (default: all but '
                  'attention_maps).')
flags.DEFINE_bool('fewshot', False, 'Also run a few-shot linear evaluation on the checkpoint\'s '
                  'pre-logit features if config.evals has none.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def _with_options(config, split=None, names=None, fewshot=False) -> dict:
  """The config dict with the command line's split, evaluator selection and few-shot."""
  config = json.loads(json.dumps(experiment_lib.as_dict(config), default=list))
  if split:
    config['dataset']['eval_split'] = split
  evals = dict(config.get('evals') or {'eval': {'kind': 'classification'}})
  if fewshot and not any(e.get('kind') == 'fewshot' for e in evals.values()):
    evals['fewshot'] = {'kind': 'fewshot'}
  if names is not None:
    unknown = sorted(set(names) - set(evals))
    if unknown:
      raise ValueError(f'--evals: {unknown[0]!r} is not in config.evals ({sorted(evals)})')
    evals = {k: v for k, v in evals.items() if k in names}
  else:
    evals = {k: v for k, v in evals.items() if v.get('kind') != 'attention_maps'}
  config['evals'] = evals
  return config


def evaluate_checkpoint(config, workdir: str, step=None, split=None, fewshot=False,
                        names=None) -> dict:
  """{'step', 'split', '<evaluator>_<metric>' of every evaluator} of checkpoint `step` (default:
  the latest) of `workdir`; `config` None: the one stored with the checkpoint."""
  path = workdir if step is None else paths.join(workdir, checkpoints.CHECKPOINTS, str(step))
  item = checkpoints.item_dir(path)
  step = int(re.search(r'(\d+)(/[^/]*)?$', item.rstrip('/')).group(1))
  if config is None:
    config = checkpoints.saved_config(item)
  experiment = experiment_lib.from_config(_with_options(config, split, names, fewshot))
  checked = evals_lib.check(experiment, data.dataset_info)
  run = setup.build(experiment, num_train_examples=data.dataset_info(experiment.data).num_train)
  params = run.place_params(checkpoints.restore_params(item))
  result = {'step': step, 'split': experiment.data.eval_split}
  for evaluator in evals_lib.build(run, checked):
    result.update(evals_lib.prefixed(evaluator.name, evaluator(params)[0]))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  result = evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.step, FLAGS.split,
                               FLAGS.fewshot, FLAGS.evals)
  if jax.process_index() == 0:
    path = paths.join(paths.absolute(FLAGS.workdir), f'eval_{result["step"]}.json')
    paths.write_text_atomic(path, json.dumps(result, indent=2))
    print(f'{path}: {json.dumps(result)}')


if __name__ == '__main__':
  app.run(main)
