"""Video data layer: DMVR TFRecords written here, moving_digits, TFDS ucf101 (mock), resume."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from token_learner import data
from token_learner.data import digits, videos

FRAMES_KEY, LABEL_KEY = 'image/encoded', 'clip/label/index'


def _jpeg(value, h=16, w=16):
  frame = np.broadcast_to(np.asarray(value, np.uint8), (h, w)).astype(np.uint8)
  return tf.io.encode_jpeg(np.repeat(frame[..., None], 3, -1), quality=100).numpy()


def _record(frames, labels):
  ex = tf.train.SequenceExample()
  ex.context.feature[LABEL_KEY].int64_list.value.extend(labels)
  feature_list = ex.feature_lists.feature_list[FRAMES_KEY]
  for f in frames:
    feature_list.feature.add().bytes_list.value.append(f)
  return ex.SerializeToString()


def _write(path, records):
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in records:
      w.write(r)
  return str(path)


@pytest.fixture(scope='module')
def dmvr(tmp_path_factory):
  """Two files: video 0 (8 frames, value 10*(f+1)), video 1 (2 frames: short), video 2."""
  d = tmp_path_factory.mktemp('dmvr')
  _write(d / 'a-0.tfrecord', [_record([_jpeg(10 * (f + 1)) for f in range(8)], [1]),
                              _record([_jpeg(100), _jpeg(200)], [2])])
  _write(d / 'a-1.tfrecord', [_record([_jpeg(50)] * 6, [0, 3])])
  return str(d / 'a-*.tfrecord')


def _cfg(pattern, num_classes=4, **dataset):
  fields = dict(name='dmvr', file_pattern_train=pattern, file_pattern_eval=pattern,
                frames_key=FRAMES_KEY, label_key=LABEL_KEY, multi_label=False,
                image_size=16, num_frames=4, stride=1, eval_clips=1, eval_crops=1, augment=False,
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  fields.update(dataset)
  return data.from_dict(fields, num_classes=num_classes)


def _train(cfg, batch_size=3, seed=0, **kwargs):
  return data.train_iterator(cfg, seed=seed, batch_size=batch_size, **kwargs)


def _eval(cfg, batch_size=3, **kwargs):
  return list(data.eval_input(cfg, batch_size=batch_size, **kwargs))


def _frame_means(clip):
  """uint8 `[T, H, W, 3]` -> per-frame mean pixel value in 0..255."""
  assert clip.dtype == np.uint8
  return clip.mean(axis=(1, 2, 3))


def test_dmvr_eval_reads_labels_and_loops_short_video(dmvr):
  batches = _eval(_cfg(dmvr))
  assert len(batches) == 1
  b = batches[0]
  assert set(b) == {'inputs', 'labels', 'mask'}
  assert b['inputs'].shape == (3, 1, 4, 16, 16, 3)
  np.testing.assert_array_equal(b['labels'], [1, 2, 0])  # videos in file order
  np.testing.assert_array_equal(b['mask'], [1, 1, 1])
  np.testing.assert_allclose(_frame_means(b['inputs'][0, 0]), [10, 20, 30, 40], atol=1.5)
  # Video 1 has 2 frames for a 4-frame clip: looped, not dropped.
  np.testing.assert_allclose(_frame_means(b['inputs'][1, 0]), [100, 200, 100, 200], atol=1.5)
  info = data.dataset_info(_cfg(dmvr, eval_clips=2, eval_crops=3))
  assert (info.num_train, info.num_eval, info.num_views) == (3, 3, 6)
  assert info.example_shape == (4, 16, 16, 3) and info.num_classes == 4
  assert not info.multi_label


def test_eval_input_is_built_once_and_iterated_many_times(dmvr, monkeypatch, assert_batches_equal):
  """Two passes of one eval_input are identical; the files are indexed once."""
  calls = []
  index = videos.index_tfrecords
  monkeypatch.setattr(videos, 'index_tfrecords', lambda p: calls.append(p) or index(p))
  evaluation = data.eval_input(_cfg(dmvr, eval_clips=2), batch_size=2, process_index=1,
                               process_count=2)
  assert len(calls) == 1 and len(evaluation) == 2
  first, second = list(evaluation), list(evaluation)
  assert len(calls) == 1
  assert_batches_equal(first, second)
  np.testing.assert_array_equal([b['mask'] for b in first], [[1], [0]])


def test_label_edge_cases_multi_label_empty_and_out_of_range(tmp_path):
  path = _write(tmp_path / 'labels.tfrecord', [_record([_jpeg(10)] * 2, []),
                                               _record([_jpeg(10)] * 2, [1, 1])])
  b = _eval(_cfg(path, multi_label=True), batch_size=2)[0]
  np.testing.assert_array_equal(b['labels'], [[0, 0, 0, 0], [0, 1, 0, 0]])
  assert b['labels'].dtype == np.float32
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'labels\.tfrecord record 1'):
    _eval(_cfg(path, num_classes=1, multi_label=True), batch_size=2)


def test_dmvr_train_clip_is_looped_and_multi_label(dmvr):
  batch = next(_train(_cfg(dmvr, multi_label=True)))
  assert batch['inputs'].shape == (3, 4, 16, 16, 3)
  labels = {tuple(row) for row in batch['labels']}
  assert labels == {(0, 1, 0, 0), (0, 0, 1, 0), (1, 0, 0, 1)}  # one epoch = the 3 videos
  short = [i for i, row in enumerate(batch['labels']) if row[2] == 1][0]
  np.testing.assert_allclose(_frame_means(batch['inputs'][short]), [100, 200, 100, 200], atol=1.5)


def test_eval_clips_are_spread_uniformly(dmvr):
  cfg = _cfg(dmvr, num_frames=2, stride=1, eval_clips=3)
  views = _eval(cfg)[0]['inputs'][0]  # video 0, 8 frames
  assert views.shape == (3, 2, 16, 16, 3)
  # Starts round(linspace(0, 8 - 2, 3)) = 0, 3, 6; frame f has value 10 * (f + 1).
  np.testing.assert_allclose([_frame_means(v) for v in views], [[10, 20], [40, 50], [70, 80]],
                             atol=1.5)


@pytest.mark.parametrize('wide', [True, False])
def test_three_crops_along_the_longer_side(tmp_path, wide):
  ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (16, 1))  # value 8 * x along the long side
  frame = ramp if wide else ramp.T
  jpeg = tf.io.encode_jpeg(np.repeat(frame[..., None], 3, -1), quality=100).numpy()
  path = _write(tmp_path / 'wide.tfrecord', [_record([jpeg] * 3, [0])])
  cfg = _cfg(path, num_frames=2, eval_crops=3, eval_clips=2)
  views = _eval(cfg, batch_size=1)[0]['inputs'][0]
  assert views.shape == (6, 2, 16, 16, 3)  # [clips x crops, T, H, W, 3]
  # Crops start at 0, 8, 16 along the long side: means 8 * 7.5, 8 * 15.5, 8 * 23.5.
  means = [v.mean() for v in views[:3]]
  np.testing.assert_allclose(means, [60, 124, 188], atol=2)
  np.testing.assert_allclose([v.mean() for v in views[3:]], means, atol=1e-3)


def test_eval_gives_whole_videos_to_processes_and_pads(dmvr):
  cfg = _cfg(dmvr, eval_clips=2)
  per_process = [_eval(cfg, 2, process_index=p, process_count=2) for p in range(2)]
  assert [len(b) for b in per_process] == [2, 2]  # same batch count on every process
  # Rows [p*L, (p+1)*L) of each global batch: videos 0 | 1 in batch 0, video 2 | padding in 1.
  labels = [[int(b['labels'][0]) for b in bs] for bs in per_process]
  masks = [[float(b['mask'][0]) for b in bs] for bs in per_process]
  assert labels == [[1, 0], [2, 0]] and masks == [[1, 1], [1, 0]]
  pad = per_process[1][1]
  assert pad['inputs'].shape == (1, 2, 4, 16, 16, 3) and not pad['inputs'].any()
  assert pad['inputs'].dtype == np.uint8  # Zero pixels.
  assert pad['labels'].dtype == np.int32


def test_corrupt_frame_error_names_the_record(tmp_path):
  good = _record([_jpeg(10)] * 4, [0])
  bad = _record([_jpeg(10), b'not a jpeg at all', _jpeg(10)], [1])
  path = _write(tmp_path / 'corrupt.tfrecord', [good, bad])
  cfg = _cfg(path, num_frames=3)
  with pytest.raises(ValueError, match=r'corrupt\.tfrecord record 1: frame 1'):
    _eval(cfg, batch_size=2)
  with pytest.raises(ValueError, match=r'corrupt\.tfrecord record 1: frame 1'):
    next(_train(cfg, batch_size=2))


def _digits_cfg(**dataset):
  fields = dict(name='moving_digits', image_size=32, num_frames=8, stride=2, eval_clips=2,
                eval_crops=1, augment=True, crop_min_area=0.5, random_flip=True)
  fields.update(dataset)
  return data.from_dict(fields)


def test_train_iterator_resumes_exactly_and_splits_rows_over_processes():
  cfg = _digits_cfg()
  it = _train(cfg, batch_size=4, seed=3)
  full = [next(it) for _ in range(4)]
  resumed = _train(cfg, batch_size=4, seed=3, start_step=2)
  for k in (2, 3):
    b = next(resumed)
    np.testing.assert_array_equal(b['inputs'], full[k]['inputs'])
    np.testing.assert_array_equal(b['labels'], full[k]['labels'])
  halves = [next(_train(cfg, batch_size=4, seed=3, start_step=1, process_index=p,
                        process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['inputs'] for h in halves]),
                                full[1]['inputs'])
  np.testing.assert_array_equal(np.concatenate([h['labels'] for h in halves]),
                                full[1]['labels'])
  other_seed = next(_train(cfg, batch_size=4, seed=4))
  assert not np.array_equal(other_seed['inputs'], full[0]['inputs'])


def test_moving_digits_label_needs_motion():
  moving = digits.MovingDigits('test')
  assert len(moving) == 360 * 4 and moving.num_classes == 40
  assert len(digits.MovingDigits('train')) == 1437 * 4
  labels = [moving.label(i) for i in range(4)]  # one scan, 4 directions
  assert len(set(labels)) == 4 and len({l // 4 for l in labels}) == 1
  scan = np.arange(64).reshape(8, 8) % 17
  right = digits.render_moving_digit(scan, digits.DIRECTIONS.index('right'), offset=5)
  left = digits.render_moving_digit(scan, digits.DIRECTIONS.index('left'), offset=5)
  # Same digit, same place: the frames match (a single frame cannot tell the direction)...
  for t in range(1, 16):
    np.testing.assert_array_equal(right[t], left[16 - t])
  # ...but the clips differ, and so do the labels.
  assert not np.array_equal(right, left)
  assert right.shape == (16, 32, 32, 3) and right.dtype == np.uint8


def test_moving_digits_eval_views_and_info():
  cfg = _digits_cfg()
  info = data.dataset_info(cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (40, 5748, 1440)
  assert info.example_shape == (8, 32, 32, 3) and info.num_views == 2
  b = next(iter(data.eval_input(cfg, batch_size=4)))
  assert b['inputs'].shape == (4, 2, 8, 32, 32, 3) and b['inputs'].dtype == np.uint8
  assert cfg.is_video and isinstance(cfg, data.VideoData)
  assert not data.from_dict({'name': 'digits'}).is_video


def test_tfds_ucf101_with_mock_data():
  cfg = data.from_dict(dict(name='ucf101', image_size=16, num_frames=4, stride=2, eval_clips=2,
                            eval_crops=3), num_classes=101)
  assert cfg.tfds_name == 'ucf101' and cfg.random_flip
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    info = data.dataset_info(cfg)
    batch = next(_train(cfg, batch_size=2))
    evaluation = _eval(cfg, batch_size=2)
  assert info.num_classes == 101 and info.num_views == 6
  assert batch['inputs'].shape == (2, 4, 16, 16, 3)
  assert len(evaluation) == 2 and evaluation[0]['inputs'].shape == (2, 6, 4, 16, 16, 3)
  assert batch['inputs'].dtype == evaluation[0]['inputs'].dtype == np.uint8
  assert list(evaluation[1]['mask']) == [1, 0]


def test_unknown_dataset_field_is_an_error():
  with pytest.raises(ValueError, match='config.dataset.eval_clip is not'):
    _digits_cfg(eval_clip=2)
  # Accepted and ignored before; the video train order is a permutation, not a buffer.
  with pytest.raises(ValueError, match='config.dataset.shuffle_buffer is not'):
    _digits_cfg(shuffle_buffer=8)
  with pytest.raises(ValueError, match='config.dataset.num_classes is not'):
    _digits_cfg(num_classes=40)


def test_config_defaults_and_errors(dmvr):
  cfg = data.from_dict({'name': 'moving_digits'})
  assert (cfg.image_size, cfg.crop_min_area, cfg.random_flip) == ((32, 32), 0.3, False)
  assert (cfg.num_frames, cfg.stride, cfg.eval_clips, cfg.eval_crops, cfg.directions) == (
      8, 1, 1, 1, 4)
  assert cfg.source == 'moving_digits' and cfg.example_shape == (8, 32, 32, 3)
  kinetics = data.from_dict({'name': 'kinetics400', 'file_pattern_train': dmvr,
                             'file_pattern_eval': dmvr, 'image_size': [224, 160]},
                            num_classes=400)
  assert kinetics.image_size == (224, 160) and kinetics.random_flip and kinetics.source == 'dmvr'
  assert data.from_dict({'name': 'charades', 'tfds_name': 'x'}).source == 'tfds'
  with pytest.raises(ValueError, match='config.model.num_classes'):
    _cfg(dmvr, num_classes=None)
  with pytest.raises(ValueError, match='config.dataset.file_pattern_eval'):
    data.dataset_info(_cfg(dmvr, file_pattern_eval=''))
  for field, value in [('num_frames', 0), ('stride', 0), ('eval_clips', 0), ('eval_crops', 2),
                       ('crop_min_area', 0.0), ('directions', 3), ('std', (1, 1, -1)),
                       ('eval_short_side', 0), ('multi_label', 1)]:
    with pytest.raises(ValueError, match=f'config.dataset.{field}'):
      _digits_cfg(**{field: value})
  with pytest.raises(ValueError, match='not a video dataset'):
    data.VideoData(name='digits')
  with pytest.raises(ValueError, match='config.batch_size'):
    _train(cfg, batch_size=3, process_count=2)
  with pytest.raises(ValueError, match='config.eval_batch_size'):
    data.eval_input(cfg, batch_size=0)
  assert dataclasses.replace(cfg, num_frames=4).example_shape == (4, 32, 32, 3)
