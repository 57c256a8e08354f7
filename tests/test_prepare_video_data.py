"""prepare_video_data: tiny videos encoded here -> TFRecords -> the training input layer."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from token_learner import data
from token_learner.data import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_video(path, values, size=(24, 32), fps=10):
  """An mpeg4 video whose frame t is uniformly grey `values[t]`."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('mpeg4', rate=fps)
    stream.height, stream.width = size
    stream.pix_fmt = 'yuv420p'
    for v in values:
      frame = av.VideoFrame.from_ndarray(np.full((*size, 3), v, np.uint8), format='rgb24')
      container.mux(stream.encode(frame))
    container.mux(stream.encode())


def _write_frames(folder, values, size=(20, 20)):
  os.makedirs(folder)
  for t, v in enumerate(values):
    Image.fromarray(np.full((*size, 3), v, np.uint8)).save(os.path.join(folder, f'{t:03d}.png'))


@pytest.fixture
def videos(tmp_path):
  root = tmp_path / 'videos'
  (root / 'cat').mkdir(parents=True)
  (root / 'dog').mkdir()
  _write_video(root / 'cat' / 'a.mp4', [40] * 6)
  _write_video(root / 'dog' / 'b.mp4', [200] * 4)
  _write_frames(str(root / 'dog' / 'c_frames'), [120, 120, 120])
  return root


def test_folder_of_classes_round_trips_through_the_reader(tmp_path, videos):
  examples = prepare.list_examples(str(videos))
  assert [(os.path.basename(e.path), e.labels) for e in examples] == [
      ('a.mp4', ('cat',)), ('b.mp4', ('dog',)), ('c_frames', ('dog',))]
  prefix = str(tmp_path / 'out' / 'train')
  stats = prepare.write_shards(examples, prefix, num_shards=2, short_side=16, progress=False)
  assert stats == dict(written=3, skipped=0, shards_done=0, classes=2)
  assert open(prefix + '.classes.txt').read() == 'cat\ndog\n'

  cfg = data.from_dict(dict(name='dmvr', file_pattern_train=prefix + '-*',
                            file_pattern_eval=prefix + '-*', image_size=16, num_frames=4,
                            augment=False, mean=(0, 0, 0), std=(1, 1, 1)), num_classes=2)
  info = data.dataset_info(cfg)
  assert (info.num_train, info.num_eval) == (3, 3)
  batch = next(iter(data.eval_input(cfg, batch_size=3)))
  # Shards hold examples 0, 2 (shard 0) and 1 (shard 1): a.mp4, c_frames, b.mp4.
  np.testing.assert_array_equal(batch['labels'], [0, 1, 1])
  assert batch['inputs'].dtype == np.uint8  # Pixels; normalised inside the jitted steps.
  means = batch['inputs'][:, 0].mean(axis=(1, 2, 3, 4))
  np.testing.assert_allclose(means, [40, 120, 200], atol=6)  # JPEG / YUV rounding.


def test_fps_resampling_and_csv_multi_label(tmp_path):
  _write_video(tmp_path / 'v.mp4', list(range(0, 200, 10)), fps=20)  # 20 frames, 1 s
  assert len(prepare.read_frames(str(tmp_path / 'v.mp4'))) == 20
  assert len(prepare.read_frames(str(tmp_path / 'v.mp4'), fps=5)) == 5
  (tmp_path / 'list.csv').write_text('v.mp4,run,jump\nv.mp4\n')
  examples = prepare.list_examples(str(tmp_path / 'list.csv'))
  assert [e.labels for e in examples] == [('run', 'jump'), ()]
  prefix = str(tmp_path / 'ml')
  prepare.write_shards(examples, prefix, fps=5, progress=False)
  cfg = data.from_dict(dict(name='dmvr', file_pattern_train=prefix + '-*',
                            file_pattern_eval=prefix + '-*', image_size=16, num_frames=2,
                            multi_label=True, augment=False), num_classes=2)
  batch = next(iter(data.eval_input(cfg, batch_size=2)))
  np.testing.assert_array_equal(batch['labels'], [[1, 1], [0, 0]])  # classes: jump, run


def test_unreadable_video_is_named_or_counted_and_rerun_resumes(tmp_path, videos):
  (videos / 'cat' / 'broken.mp4').write_bytes(b'not a video')
  examples = prepare.list_examples(str(videos))
  prefix = str(tmp_path / 'out')
  with pytest.raises(ValueError, match='broken.mp4'):
    prepare.write_shards(examples, prefix, progress=False)
  assert not any(p.endswith('.tfrecord') for p in os.listdir(tmp_path))  # nothing half-written
  stats = prepare.write_shards(examples, prefix, num_shards=2, skip_unreadable=True,
                               progress=False)
  assert (stats['written'], stats['skipped']) == (3, 1)
  again = prepare.write_shards(examples, prefix, num_shards=2, progress=False)
  assert again['shards_done'] == 2 and again['written'] == 0


def test_errors_name_the_input(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    prepare.list_examples(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match='cat'):
    prepare.list_examples(str(tmp_path / 'empty'))


def test_command_line(tmp_path, videos, subprocess_env):
  out = subprocess.run(
      [sys.executable, 'prepare_video_data.py', f'--videos={videos}',
       f'--out={tmp_path}/tfr/train', '--shards=2', '--short_side=16'],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert '3 videos written' in out.stdout
  assert sorted(os.listdir(tmp_path / 'tfr')) == [
      'train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord', 'train.classes.txt']


def test_public_annotation_csvs(tmp_path):
  """Kinetics and Charades lists -> examples: the clip file names the downloaders write, the
  labels, Charades' fixed 157 classes (its ids do not depend on which classes a split holds)."""
  root = tmp_path / 'videos'
  (root / 'abseiling').mkdir(parents=True)
  (root / 'abseiling' / 'abc_000010_000020.mp4').write_bytes(b'')
  (root / 'xyz_000001_000011.mp4').write_bytes(b'')
  k = tmp_path / 'train.csv'
  k.write_text('label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n'
               'air drumming,xyz,1,11,train\n')
  examples, classes = prepare.list_annotated(str(k), 'kinetics', str(root))
  assert classes is None and examples == [
      prepare.Example(str(root / 'abseiling' / 'abc_000010_000020.mp4'), ('abseiling',)),
      prepare.Example(str(root / 'xyz_000001_000011.mp4'), ('air drumming',))]
  c = tmp_path / 'Charades_v1_train.csv'
  c.write_text('id,subject,scene,quality,relevance,verified,script,objects,descriptions,'
               'actions,length\n46GP8,HR43,Kitchen,6,7,Yes,s,o,d,c092 11.90 21.20;c147 0.00 12.60,'
               '24.83\nN11GT,0KZ7,Stairs,6,7,Yes,s,o,d,,18.33\n')
  examples, classes = prepare.list_annotated(str(c), 'charades', str(root))
  assert examples == [prepare.Example(str(root / '46GP8.mp4'), ('c092', 'c147')),
                      prepare.Example(str(root / 'N11GT.mp4'), ())]
  assert len(classes) == 157 and classes[92] == 'c092'
  with pytest.raises(ValueError, match='--video_root'):
    prepare.list_annotated(str(c), 'charades', str(tmp_path / 'nowhere'))
