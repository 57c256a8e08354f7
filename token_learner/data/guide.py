"""What each dataset needs on disk, and the one-line error when it is not there.

A paper config run without its data stops in `data.dataset_info` (before anything is compiled)
with a ValueError (main.py: `config error: ...`, exit 2) naming the dataset, the folder or glob
it looked in and the command that prepares it. The facts here (the TFDS manual downloads, the
`prepare_video_data.py` flags of each DMVR dataset) are the ones docs/datasets.md states; a test
compares the two. This module imports no TensorFlow (TFDS is imported inside `tfds_builder`).
"""
import dataclasses
import os
from typing import Optional, Tuple

DOC = 'docs/datasets.md'
# image_folder files taken as images. The format is then read from the content (TensorFlow decodes
# PNG, JPEG, GIF, BMP and WebP, whatever the name says); TIFF is listed so that a .tif is
# reported by name as undecodable instead of silently left out.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.jfif', '.gif', '.bmp', '.webp', '.tif', '.tiff')


def image_extensions() -> str:
  """'.png/.jpg/...': the image_folder extensions, for messages."""
  return '/'.join(IMAGE_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class TfdsPrep:
  title: str
  manual: Optional[str] = None  # the files of the manual download (None: TFDS downloads them)
  build_flags: str = ''  # extra `tfds build` flags
  builder: Optional[str] = None  # `tfds build` target when TFDS itself has no builder


TFDS = {
    'imagenet2012': TfdsPrep(
        'ImageNet-1k', manual='ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar '
        '(image-net.org, after registering)'),
    'imagenet2012_real': TfdsPrep(
        'ImageNet ReaL', manual='ILSVRC2012_img_val.tar (image-net.org; the ReaL labels are '
        'downloaded by TFDS)'),
    'imagenet21k': TfdsPrep(
        'ImageNet-21k', manual='fall11_whole.tar (21,843 classes) or winter21_whole.tar.gz '
        '(19,167 classes; image-net.org, after registering)',
        builder='token_learner/data/imagenet21k'),
    'ucf101': TfdsPrep('UCF101', build_flags=' --file_format=array_record'),
}


@dataclasses.dataclass(frozen=True)
class DmvrPrep:
  """`python prepare_video_data.py` flags that give the TFRecords a config of `name` expects."""
  title: str
  videos: Tuple[str, str]  # --videos of the train / eval split
  annotations: str  # --annotations
  fps: Optional[int]
  short_side: int
  shards: Tuple[int, int]  # --shards of the train / eval split


DMVR = {
    'kinetics400': DmvrPrep('Kinetics-400', ('kinetics400/train.csv', 'kinetics400/validate.csv'),
                            'kinetics', 25, 256, (1024, 64)),
    'kinetics600': DmvrPrep('Kinetics-600', ('kinetics600/train.csv', 'kinetics600/validate.csv'),
                            'kinetics', 25, 256, (1024, 64)),
    'charades': DmvrPrep('Charades', ('Charades/Charades_v1_train.csv',
                                      'Charades/Charades_v1_test.csv'),
                         'charades', 12, 256, (128, 32)),
    'avid': DmvrPrep('AViD', ('avid/train.csv', 'avid/test.csv'), 'paths', 12, 256, (512, 64)),
    'dmvr': DmvrPrep('DMVR TFRecords', ('VIDEOS_OR_CSV', 'EVAL_VIDEOS_OR_CSV'), 'paths', None,
                     256, (16, 4)),
}


def _see() -> str:
  return f'see {DOC}'


# --- TFDS -------------------------------------------------------------------------------------


def tfds_command(name: str, data_dir: str) -> str:
  prep = TFDS.get(name, TfdsPrep(name))
  manual = ' --manual_dir=MANUAL_DIR' if prep.manual else ''
  return f'tfds build {prep.builder or name}{manual} --data_dir={data_dir}{prep.build_flags}'


def tfds_not_prepared(name: str, field: str, data_dir: Optional[str], looked_in: str) -> str:
  """The one line for a TFDS dataset with no prepared copy in `data_dir`."""
  root = data_dir or _default_tfds_dir()
  prep = TFDS.get(name, TfdsPrep(name))
  how = (f'download {prep.manual} into MANUAL_DIR, then run `{tfds_command(name, root)}`'
         if prep.manual else f'run `{tfds_command(name, root)}`')
  return (f'TFDS dataset {name!r} ({field}) is not prepared in {root} (looked for '
          f'{looked_in}): {how}; or set --config.dataset.data_dir to a prepared copy (e.g. '
          f'gs://BUCKET/tensorflow_datasets); {_see()}')


def _default_tfds_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'


def _tfds_mocked() -> bool:
  """Under `tfds.testing.mock_data` (tests) nothing is prepared yet every builder reads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  method = tfds.core.DatasetBuilder.download_and_prepare
  return getattr(method, '__module__', '').startswith('tensorflow_datasets.testing')


def tfds_builder(name: str, data_dir: Optional[str], field: str):
  """`tfds.builder(name, data_dir=...)` of a prepared dataset, else a ValueError: the line of
  `tfds_not_prepared`, or (for a name TFDS does not know and no files define) one naming it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    if name in TFDS:  # Known, but neither this TFDS version nor the files define it.
      root = data_dir or _default_tfds_dir()
      raise ValueError(tfds_not_prepared(name, field, data_dir,
                                         os.path.join(root, name))) from e
    raise ValueError(f"{field}={name!r} is neither 'digits', 'image_folder' nor a TFDS "
                     'dataset.') from e
  if not builder.is_prepared() and not _tfds_mocked():
    raise ValueError(tfds_not_prepared(name, field, data_dir or str(builder.data_dir_root),
                                       builder.data_dir))
  return builder


# --- DMVR TFRecords ---------------------------------------------------------------------------


def _split_prefix(pattern: str, name: str, split: str) -> str:
  """The --out prefix whose shards PREFIX-*.tfrecord a glob like DIR/train-*.tfrecord matches."""
  first = pattern.split(',')[0]
  for suffix in ('-*.tfrecord', '-*', '*.tfrecord', '*'):
    if first.endswith(suffix) and '*' not in first[:-len(suffix)]:
      return first[:-len(suffix)]
  return f'/data/{name}/{split}'


def dmvr_command(name: str, split: str, pattern: str) -> str:
  """`python prepare_video_data.py ...` that writes shards `pattern` matches (split 'train' or
  'eval'), with the flags of the dataset's configs."""
  prep = DMVR.get(name, DMVR['dmvr'])
  i = 0 if split == 'train' else 1
  out = _split_prefix(pattern, name, 'train' if i == 0 else 'test')
  flags = [f'--videos={prep.videos[i]}', f'--out={out}']
  if prep.annotations != 'paths':
    flags += [f'--annotations={prep.annotations}', '--video_root=VIDEO_DIR']
  if prep.fps:
    flags.append(f'--fps={prep.fps}')
  flags += [f'--short_side={prep.short_side}', f'--shards={prep.shards[i]}']
  if i:
    flags.append(f'--classes={os.path.join(os.path.dirname(out), "train")}.classes.txt')
  return 'python prepare_video_data.py ' + ' '.join(flags)


def dmvr_missing(name: str, field: str, pattern: str) -> str:
  """The one line for a DMVR file pattern that is unset or matches nothing."""
  split = 'train' if field.endswith('train') else 'eval'
  if pattern:
    what = f'config.dataset.{field}={pattern!r} matches no files'
    target = 'or point the pattern at a prepared copy'
  else:
    pattern = f'/data/{name}/{"train" if split == "train" else "test"}-*.tfrecord'
    what = f'config.dataset.{field} is not set'
    target = f"then pass --config.dataset.{field}='{pattern}'"
  return (f'Video dataset {name!r} (DMVR TFRecords): {what}: write them with '
          f'`{dmvr_command(name, split, pattern)}`, {target}; {_see()}')


# --- image_folder -----------------------------------------------------------------------------


def image_folder_missing(root: str, problem: str, train_split: str, eval_split: str) -> str:
  """The one line for an image_folder root (or split folder) that is not there."""
  exts = '|'.join(e[1:] for e in IMAGE_EXTENSIONS[:3]) + '|...'
  train_dir, eval_dir = (s.split('[')[0] for s in (train_split, eval_split))
  return (f"Dataset 'image_folder': {problem}; it expects ROOT/<split>/<class>/*.{exts} with "
          f'the splits config.dataset.train_split={train_split!r} and eval_split='
          f'{eval_split!r}: e.g. `mkdir -p {root}/{train_dir}/CLASS {root}/{eval_dir}/CLASS` '
          f'and copy the images in; {_see()}')
