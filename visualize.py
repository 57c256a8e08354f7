r"""Pictures of what the learned tokens look at (Fig. 10, §6.4), from a run's latest checkpoint.

  python visualize.py --workdir=/tmp/token_learner
  python visualize.py --workdir=/tmp/md_tl --split=test --num_examples=4 --out=/tmp/md_tl/maps

For an image model, each input beside its S token maps (one row per TokenLearner of the model);
for a video model, frames x tokens. Writes `OUT/example_<i>.png` (OUT defaults to WORKDIR/maps)
and `OUT/token_stats.json`: per TokenLearner the mean entropy of its maps and the mean overlap
between its tokens (`token_learner.diagnostics`; an overlap near 1 means collapsed tokens). The
run's config is the one stored with the checkpoint, unless --config names one.
"""
import json

from absl import app
from absl import flags
from ml_collections import config_flags

from token_learner import experiment as experiment_lib
from token_learner import paths
from token_learner.train import checkpoints
from token_learner.evals import attention_maps

flags.DEFINE_string('workdir', None, 'The run: its checkpoints.')
config_flags.DEFINE_config_file('config', None, 'Config of the run (default: the saved one).',
                                lock_config=True)
flags.DEFINE_string('split', None, 'Split to draw examples from (default: the eval split).')
flags.DEFINE_integer('num_examples', 8, 'Examples to draw.')
flags.DEFINE_string('out', None, 'Output folder (default: WORKDIR/maps).')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config if FLAGS.config is not None else checkpoints.saved_config(FLAGS.workdir)
  experiment = experiment_lib.from_config(config)
  params = checkpoints.restore_params(FLAGS.workdir)
  inputs = attention_maps.examples(experiment.data, FLAGS.split, FLAGS.num_examples)
  out = FLAGS.out or paths.join(paths.absolute(FLAGS.workdir), 'maps')
  stats = attention_maps.render(experiment, params, inputs, out)
  print(f'{len(inputs)} figures in {out}; token stats: {json.dumps(stats)}')


if __name__ == '__main__':
  app.run(main)
