r"""Evaluates a run's checkpoint on the whole eval split, without training or writing checkpoints.

  python evaluate.py --workdir=/tmp/token_learner                 # the latest checkpoint
  python evaluate.py --workdir=/tmp/md_tl --step=800 --split=test
  python evaluate.py --workdir=DIR --config=configs/X.py --config.dataset.eval_split=validation

Runs the trainer's own eval step (multi-view averaging for video, mAP for multi-label data, the
metrics the config asks for) over every example of the split once, on all devices (and processes:
launch it like main.py), and writes WORKDIR/eval_<step>.json; --fewshot adds the few-shot linear
accuracies of `config.fewshot` (token_learner/train/fewshot.py). The config is the run's (saved in
WORKDIR/summary.json) unless --config names one. Nothing in WORKDIR/checkpoints is touched.
"""
import json
import os
import re

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from token_learner import build_model
from token_learner import data
from token_learner import experiment as experiment_lib
from token_learner import fields
from token_learner.train import checkpoints
from token_learner.train import fewshot as fewshot_lib
from token_learner.train import optim
from token_learner.train import sharding
import trainer
from tools import attention_maps

flags.DEFINE_string('workdir', None, 'The run: its checkpoints (and summary.json).')
config_flags.DEFINE_config_file('config', None, 'Config of the run (default: the saved one).',
                                lock_config=True)
flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
flags.DEFINE_string('split', None, 'Split to evaluate (default: the config\'s eval split).')
flags.DEFINE_bool('fewshot', False, 'Also run the few-shot linear evaluation (config.fewshot: '
                  'shots, seeds, splits) on the checkpoint\'s pre-logit features.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def evaluate_checkpoint(config, workdir: str, step=None, split=None, fewshot=False) -> dict:
  """{'step', 'split', 'eval_*' metrics (and 'fewshot_*')} of checkpoint `step` (default: the
  latest) of `workdir`."""
  experiment = experiment_lib.from_config(config)
  data_cfg = experiment.data
  if split:
    data_cfg = data.from_dict({**fields.section_dict(data_cfg), 'eval_split': split},
                              num_classes=data_cfg.num_classes)
  path = workdir if step is None else os.path.join(workdir, checkpoints.CHECKPOINTS, str(step))
  item = checkpoints.item_dir(path)
  step = int(re.search(r'(\d+)(/[^/]*)?$', item.rstrip('/')).group(1))
  mesh = sharding.create_mesh(mesh_shape=experiment.train.mesh_shape)
  info = data.dataset_info(data_cfg)
  cfg = experiment.train.for_run(num_train_examples=info.num_train, num_devices=mesh.size,
                                 num_processes=jax.process_count())
  model = build_model(experiment.model)
  tx = optim.create_optimizer(cfg, optim.learning_rate_fn(cfg))
  init_rng, _ = sharding.replicated_keys(cfg.seed, mesh)
  abstract, shardings = sharding.abstract_train_state(
      init_rng, model, tx, experiment.model.input_shape, mesh, sharding.rules_of(cfg))
  params = sharding.place(checkpoints.restore_params(item), shardings.params, abstract.params)
  eval_step = trainer.compile_eval_step(model, cfg, mesh, shardings.params, data_cfg.is_video)
  eval_input = data.eval_input(data_cfg, batch_size=cfg.eval_batch_size,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
  metrics = trainer.evaluate(eval_step, params, eval_input, mesh)
  result = {'step': step, 'split': data_cfg.eval_split,
            **{f'eval_{k}': v for k, v in metrics.items()}}
  if fewshot:
    batches = sharding.batch_sharding(mesh)
    evaluator = fewshot_lib.FewShotEvaluator(experiment.fewshot, experiment.data, mesh, batches)
    result.update(evaluator(fewshot_lib.compile_features(model, shardings.params, batches),
                            params))
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config if FLAGS.config is not None else attention_maps.saved_config(
      FLAGS.workdir)
  result = evaluate_checkpoint(config, FLAGS.workdir, FLAGS.step, FLAGS.split, FLAGS.fewshot)
  if jax.process_index() == 0:
    path = os.path.join(FLAGS.workdir, f'eval_{result["step"]}.json')
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)
    print(f'{path}: {json.dumps(result)}')


if __name__ == '__main__':
  app.run(main)
