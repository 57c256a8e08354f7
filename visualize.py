r"""Pictures of what the learned tokens look at (Fig. 10, §6.4), from a run's latest checkpoint.

  python visualize.py --workdir=/tmp/token_learner
  python visualize.py --workdir=/tmp/md_tl --split=test --num_examples=4 --out=/tmp/md_tl/maps

For an image model, each input beside its S token maps (one row per TokenLearner of the model);
for a video model, frames x tokens. Writes `OUT/example_<i>.png` (OUT defaults to WORKDIR/maps)
and `OUT/token_stats.json`: per TokenLearner the mean entropy of its maps and the mean overlap
between its tokens (`token_learner.diagnostics`; an overlap near 1 means collapsed tokens).

The checkpoint is read verified, and the config handled, as by evaluate.py: the one stored with
the checkpoint, or --config compared with it (differences listed, model changes refused unless
in --allow_config_change); a corrupt or unverifiable checkpoint is refused.
"""
import json

from absl import app
from absl import flags
from ml_collections import config_flags

from token_learner import experiment as experiment_lib
from token_learner import flag_parsing
from token_learner import paths
from token_learner.train import checkpoints
from token_learner.evals import attention_maps

flags.DEFINE_string('workdir', None, 'The run: its checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Config of the run (default: the saved one).',
                                lock_config=True)
flags.DEFINE_string('split', None, 'Split to draw examples from (default: the eval split).')
flags.DEFINE_integer('num_examples', 8, 'Examples to draw.')
flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/maps).')
flags.DEFINE_list('allow_config_change', [], 'Model fields of --config that may differ from the '
                  'config stored with the checkpoint.')
flags.DEFINE_bool('allow_unverified_checkpoint', False, 'Read a checkpoint without the metadata '
                  '(digest, config) to verify it; only checked for finite values.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  params, metadata = checkpoints.restore_verified(FLAGS.workdir,
                                                  FLAGS.allow_unverified_checkpoint)
  stored, config = metadata.get('config'), FLAGS.config
  if config is None:
    if not stored:
      raise app.UsageError('No config stored with the checkpoint: pass --config')
    config = stored
  elif stored:
    checkpoints.check_model_config(stored, experiment_lib.as_dict(config),
                                   FLAGS.allow_config_change)
  experiment = experiment_lib.from_config(config)
  inputs = attention_maps.examples(experiment.data, FLAGS.split, FLAGS.num_examples)
  out = FLAGS.out or paths.join(paths.absolute(FLAGS.workdir), 'maps')
  stats = attention_maps.render(experiment, params, inputs, out)
  print(f'{len(inputs)} figures in {out}; token stats: {json.dumps(stats)}')


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
