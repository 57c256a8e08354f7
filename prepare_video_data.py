r"""Writes videos as the sharded TFRecords the video reader trains on (`dataset.name='dmvr'`).

  python prepare_video_data.py --videos=/data/clips --out=/data/clips_tfr/train --fps=12 \
      --short_side=256 --shards=16
  python prepare_video_data.py --videos=/data/test.csv --out=/data/clips_tfr/test \
      --classes=/data/clips_tfr/train.classes.txt

--videos is a folder of `<class>/` subfolders (video files or folders of frames) or a CSV of
`path,label[,label...]` lines (multi-label allowed), or, with --annotations=kinetics|charades
and --video_root=DIR (the downloaded videos), the dataset's public annotation CSV
(docs/datasets.md). The class list is written next to the shards
(`OUT.classes.txt`); pass the train split's list with --classes for the other splits so ids agree.
Re-running the same command resumes: complete shards are kept; a rerun with other settings
(classes, fps, short_side, shards, quality, videos) over complete shards is refused, naming
them (OUT.manifest.json records them). Bad flags and bad input (a CSV path outside its folder,
a label with control characters, a FIFO named *.mp4, ...) are one line and exit status 2.
Then train with e.g.

  python main.py --config=configs/kinetics400_tokenlearner.py --workdir=/tmp/run \
      --config.dataset.file_pattern_train='/data/clips_tfr/train-*' \
      --config.dataset.file_pattern_eval='/data/clips_tfr/test-*' --config.model.num_classes=K
"""
import sys

from absl import app
from absl import flags

from token_learner import flag_parsing
from token_learner.data import prepare

flags.DEFINE_string('videos', None, 'Folder of <class>/ subfolders, or a CSV path,label[,...].')
flags.DEFINE_enum('annotations', 'paths', prepare.ANNOTATIONS,
                  "--videos format: 'paths' (class folders or a path,label CSV), or a public "
                  "annotation CSV: 'kinetics' (Kinetics-400/600), 'charades' (Charades_v1_*.csv).")
flags.DEFINE_string('video_root', None, 'With --annotations=kinetics|charades: the folder of the '
                    'downloaded videos.')
flags.DEFINE_string('out', None, 'Output prefix: OUT-00000-of-0000N.tfrecord, OUT.classes.txt, '
                    'OUT.manifest.json (local or gs://...).')
flags.DEFINE_float('fps', None, 'Resample video files to this frame rate (default: as stored).')
flags.DEFINE_integer('short_side', None, 'Resize frames so the short side has this many pixels.')
flags.DEFINE_integer('shards', 1, 'Number of output files.')
flags.DEFINE_integer('quality', 90, 'JPEG quality of the stored frames.')
flags.DEFINE_float('decode_timeout', prepare.DECODE_TIMEOUT_S,
                   'Seconds one video may take to decode before it counts as unreadable.')
flags.DEFINE_string('classes', None, 'Class list to use (one name a line), e.g. the train one.')
flags.DEFINE_bool('skip_unreadable', False, 'Skip (and count) videos that cannot be decoded '
                  'instead of stopping with an error naming them.')
flags.DEFINE_bool('allow_outside_root', False, 'Accept CSV paths outside the CSV\'s folder '
                  '(or --video_root): `..`, absolute paths elsewhere.')
flags.mark_flags_as_required(['videos', 'out'])
FLAGS = flags.FLAGS


def _checked(flag: str, setting: str):
  """A validator of `flag`: prepare.check_settings on it alone, its message naming the flag."""
  def check(value):
    try:
      prepare.check_settings(**{setting: value})
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True
  flags.register_validator(flag, check)


for _flag, _setting in (('fps', 'fps'), ('short_side', 'short_side'), ('shards', 'num_shards'),
                        ('quality', 'quality'), ('decode_timeout', 'decode_timeout')):
  _checked(_flag, _setting)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    examples, classes = prepare.list_annotated(FLAGS.videos, FLAGS.annotations,
                                               FLAGS.video_root, FLAGS.allow_outside_root)
    if FLAGS.classes:
      classes = prepare.read_classes(FLAGS.classes)
    stats = prepare.write_shards(
        examples, FLAGS.out, num_shards=FLAGS.shards, fps=FLAGS.fps, short_side=FLAGS.short_side,
        skip_unreadable=FLAGS.skip_unreadable, classes=classes, quality=FLAGS.quality,
        decode_timeout=FLAGS.decode_timeout)
  except (ValueError, OSError) as e:  # Bad input, named by the message: one line.
    sys.stderr.write(f'prepare_video_data.py: error: {" ".join(str(e).split())}\n')
    sys.exit(2)
  print(f"{stats['written']} videos written, {stats['skipped']} unreadable skipped, "
        f"{stats['shards_done']} shards already complete, {stats['classes']} classes "
        f'({FLAGS.out}.classes.txt)')


if __name__ == '__main__':
  app.run(main, flags_parser=flag_parsing.parse_flags)
