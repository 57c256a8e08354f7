"""prepare_video_data: tiny videos encoded here -> TFRecords -> the training input layer."""
import json
import os
import re
import subprocess
import sys
import threading

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
      'train-00000-of-00002.tfrecord', 'train-00001-of-00002.tfrecord', 'train.classes.txt',
      'train.manifest.json']


def test_command_line_bad_flag_is_one_line_exit_2(tmp_path, videos, subprocess_env):
  """The flags' check is check_settings (each case in the test below)."""
  out = subprocess.run(
      [sys.executable, 'prepare_video_data.py', f'--videos={videos}', f'--out={tmp_path}/o',
       '--fps=-1'], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert lines[-1] == ('prepare_video_data.py: flag error: --fps=-1.0 must be a number > 0 (or '
                       'unset: as stored)')
  assert 'Traceback' not in out.stderr
  assert not [n for n in os.listdir(tmp_path) if n.startswith('o')]  # Nothing written.


@pytest.mark.parametrize('kwargs, message', [
    (dict(fps=0), '--fps=0 must be a number > 0'),
    (dict(fps=float('nan')), '--fps=nan must be'),
    (dict(short_side=0), '--short_side=0 must be an integer > 0'),
    (dict(num_shards=0), '--shards=0 must be an integer >= 1'),
    (dict(quality=101), '--quality=101 must be an integer in [1, 100]'),
    (dict(decode_timeout=0), '--decode_timeout=0 must be a number of seconds > 0'),
])
def test_settings_are_checked_before_anything_is_written(tmp_path, videos, kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    prepare.write_shards(prepare.list_examples(str(videos)), str(tmp_path / 'o'),
                         progress=False, **kwargs)
  assert not [n for n in os.listdir(tmp_path) if n.startswith('o')]


def _peak_rss_growth(fn):
  """Peak resident memory (bytes) while `fn()` runs, above the resident memory before it."""
  status = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key))
                           .split()[1]) * 1024
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # Linux: reset the peak (VmHWM) to the current resident set.
  before = status('VmRSS')
  fn()
  return status('VmHWM') - before


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='Linux peak-RSS reset')
def test_memory_does_not_grow_with_the_video_duration(tmp_path):
  """A 4x longer 640x360 clip: frames are resized and encoded as they are decoded, so peak
  memory stays put (holding the full-size frames would add ~0.9 MB per frame: ~65 MB)."""
  short, long = tmp_path / 'short.mp4', tmp_path / 'long.mp4'
  _write_video(short, [100] * 24, size=(360, 640), fps=24)
  _write_video(long, [100] * 96, size=(360, 640), fps=24)
  write = lambda clip, name: lambda: prepare.write_shards(
      [prepare.Example(str(clip), ('a',))], str(tmp_path / name), short_side=16,
      progress=False)
  write(short, 'warmup')()  # TensorFlow's import and first allocations
  growth_short = _peak_rss_growth(write(short, 'short'))
  growth_long = _peak_rss_growth(write(long, 'long'))
  print(f'peak RSS growth: 24 frames {growth_short / 2**20:.1f} MiB, '
        f'96 frames {growth_long / 2**20:.1f} MiB')
  assert growth_long - growth_short < 16 * 2**20, (growth_short, growth_long)
  manifest = json.load(open(tmp_path / 'long.manifest.json'))
  assert manifest['shards_complete']['long-00000-of-00001.tfrecord']['frames'] == 96


def _in_thread(fn, timeout=60):
  """fn()'s result or exception; fails if it does not return within `timeout` s."""
  out = {}
  def run():
    try:
      out['result'] = fn()
    except Exception as e:  # pylint: disable=broad-except
      out['error'] = e
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(timeout)
  assert not thread.is_alive(), 'blocked'
  return out


def test_fifo_or_device_named_like_a_video_is_refused_without_opening_it(tmp_path, videos):
  os.mkfifo(videos / 'cat' / 'pipe.mp4')
  os.symlink('/dev/zero', videos / 'cat' / 'zero.mp4')
  examples = prepare.list_examples(str(videos))
  out = _in_thread(lambda: prepare.write_shards(examples, str(tmp_path / 'o'), progress=False))
  assert isinstance(out.get('error'), ValueError)
  assert 'pipe.mp4' in str(out['error']) and 'not a regular file' in str(out['error'])
  out = _in_thread(lambda: prepare.write_shards(examples, str(tmp_path / 'o'),
                                                skip_unreadable=True, progress=False))
  assert out['result']['skipped'] == 2 and out['result']['written'] == 3


def test_decode_deadline_names_the_video(tmp_path):
  _write_video(tmp_path / 'v.mp4', [50] * 10)
  with pytest.raises(ValueError, match=r"v\.mp4.*longer than 1e-09 s \(--decode_timeout\)"):
    prepare.read_frames(str(tmp_path / 'v.mp4'), decode_timeout=1e-9)
  assert len(prepare.read_frames(str(tmp_path / 'v.mp4'), decode_timeout=60)) == 10


def test_csv_paths_stay_inside_its_folder_and_labels_are_names(tmp_path):
  root = tmp_path / 'data'
  root.mkdir()
  _write_video(root / 'v.mp4', [50] * 2)
  _write_video(tmp_path / 'outside.mp4', [50] * 2)
  (root / 'folder.mp4').mkdir()
  (root / 'no_frames').mkdir()
  def listed(text, **kwargs):
    (root / 'list.csv').write_text(text)
    return prepare.list_examples(str(root / 'list.csv'), **kwargs)
  assert listed('v.mp4,a\n')[0].path == str(root / 'v.mp4')
  for row, message in [
      ('../outside.mp4,a', "list.csv:2: path '../outside.mp4' is outside"),
      (f'{tmp_path}/outside.mp4,a', 'is outside'),
      ('sub/../../outside.mp4,a', 'is outside'),
      ('folder.mp4,a', "list.csv:2: 'folder.mp4' is a folder, not a video file"),
      ('no_frames,a', "list.csv:2: 'no_frames' is a folder"),
      ('v.mp4,"a\nb"', "list.csv:2 (v.mp4): label 'a\\nb' must be a non-empty name"),
      ('v.mp4,a\tb', "label 'a\\tb' must be"),
      ('v.mp4,,a', "list.csv:2 (v.mp4): label '' must be"),
  ]:
    with pytest.raises(ValueError, match=re.escape(message)):
      listed('v.mp4,a\n' + row + '\n')
  examples = listed('../outside.mp4,a\n', allow_outside_root=True)
  assert examples[0].path == str(root / '..' / 'outside.mp4')


def test_manifest_and_a_rerun_with_other_settings_is_refused(tmp_path, videos):
  examples = prepare.list_examples(str(videos))
  prefix = str(tmp_path / 'out' / 'train')
  prepare.write_shards(examples, prefix, num_shards=2, short_side=16, progress=False)
  manifest = json.load(open(prefix + '.manifest.json'))
  assert {k: manifest['settings'][k] for k in ('classes', 'fps', 'short_side', 'shards',
                                               'quality', 'videos')} == dict(
      classes=['cat', 'dog'], fps=None, short_side=16, shards=2, quality=90, videos=3)
  # Shard 0: a.mp4 (6 frames) and c_frames (3); shard 1: b.mp4 (4).
  assert manifest['shards_complete'] == {
      'train-00000-of-00002.tfrecord': dict(videos=2, frames=9, skipped=0),
      'train-00001-of-00002.tfrecord': dict(videos=1, frames=4, skipped=0)}
  shards = sorted(os.listdir(tmp_path / 'out'))
  contents = {n: open(tmp_path / 'out' / n, 'rb').read() for n in shards}
  for kwargs, named in [(dict(num_shards=3, short_side=16), 'shards 2 -> 3'),
                        (dict(num_shards=2, short_side=32), 'short_side 16 -> 32'),
                        (dict(num_shards=2, short_side=16, classes=['cat', 'dog', 'eel']),
                         'classes 2 classes -> 3 classes'),
                        (dict(num_shards=2, short_side=16, fps=5.0), 'fps None -> 5.0')]:
    with pytest.raises(ValueError, match=re.escape(named)):
      prepare.write_shards(examples, prefix, progress=False, **kwargs)
  with pytest.raises(ValueError, match='videos 3 -> 2'):
    prepare.write_shards(examples[:2], prefix, num_shards=2, short_side=16, progress=False)
  # Nothing was touched by the refused reruns: no shard of another count beside the old ones.
  assert {n: open(tmp_path / 'out' / n, 'rb').read() for n in os.listdir(tmp_path / 'out')} == (
      contents)
  again = prepare.write_shards(examples, prefix, num_shards=2, short_side=16, progress=False)
  assert (again['shards_done'], again['written']) == (2, 0)
  os.remove(prefix + '.manifest.json')  # Shards of unknown settings are never mixed either.
  with pytest.raises(ValueError, match='2 shards exist without a manifest'):
    prepare.write_shards(examples, prefix, num_shards=2, short_side=16, progress=False)


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
