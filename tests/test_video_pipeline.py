"""video_pipeline: DMVR TFRecords written here, moving_digits, TFDS ucf101 (mock), resume."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import video_pipeline as vp

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


def _config(pattern, batch_size=3, eval_batch_size=3, **dataset):
  fields = dict(name='dmvr', file_pattern_train=pattern, file_pattern_eval=pattern,
                frames_key=FRAMES_KEY, label_key=LABEL_KEY, num_classes=4, multi_label=False,
                image_size=16, num_frames=4, stride=1, eval_clips=1, eval_crops=1, augment=False,
                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  fields.update(dataset)
  return ml_collections.ConfigDict(dict(seed=0, batch_size=batch_size,
                                        eval_batch_size=eval_batch_size, dataset=fields))


def _frame_means(clip):
  """`[T, H, W, 3]` in [0, 1] -> per-frame mean pixel value in 0..255."""
  return clip.mean(axis=(1, 2, 3)) * 255


def test_dmvr_eval_reads_labels_and_loops_short_video(dmvr):
  batches = list(vp.create_eval_iterator(_config(dmvr)))
  assert len(batches) == 1
  b = batches[0]
  assert b['inputs'].shape == (3, 1, 4, 16, 16, 3)
  np.testing.assert_array_equal(b['video_id'], [0, 1, 2])
  np.testing.assert_array_equal(b['labels'], [1, 2, 0])
  np.testing.assert_array_equal(b['mask'], [1, 1, 1])
  np.testing.assert_allclose(_frame_means(b['inputs'][0, 0]), [10, 20, 30, 40], atol=1.5)
  # Video 1 has 2 frames for a 4-frame clip: looped, not dropped.
  np.testing.assert_allclose(_frame_means(b['inputs'][1, 0]), [100, 200, 100, 200], atol=1.5)
  info = vp.get_dataset_info(_config(dmvr, eval_clips=2, eval_crops=3))
  assert (info.num_train, info.num_eval, info.num_views) == (3, 3, 6)
  assert info.image_shape == (4, 16, 16, 3)


def test_label_edge_cases_multi_label_empty_and_out_of_range(tmp_path):
  path = _write(tmp_path / 'labels.tfrecord', [_record([_jpeg(10)] * 2, []),
                                               _record([_jpeg(10)] * 2, [1, 1])])
  b = next(vp.create_eval_iterator(_config(path, multi_label=True, eval_batch_size=2)))
  np.testing.assert_array_equal(b['labels'], [[0, 0, 0, 0], [0, 1, 0, 0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'labels\.tfrecord record 1'):
    list(vp.create_eval_iterator(_config(path, num_classes=1, multi_label=True,
                                         eval_batch_size=2)))


def test_dmvr_train_clip_is_looped_and_multi_label(dmvr):
  config = _config(dmvr, multi_label=True)
  batch = next(vp.create_train_iterator(config))
  assert batch['inputs'].shape == (3, 4, 16, 16, 3)
  labels = {tuple(row) for row in batch['labels']}
  assert labels == {(0, 1, 0, 0), (0, 0, 1, 0), (1, 0, 0, 1)}  # one epoch = the 3 videos
  short = [i for i, row in enumerate(batch['labels']) if row[2] == 1][0]
  np.testing.assert_allclose(_frame_means(batch['inputs'][short]), [100, 200, 100, 200], atol=1.5)


def test_eval_clips_are_spread_uniformly(dmvr):
  config = _config(dmvr, num_frames=2, stride=1, eval_clips=3, eval_batch_size=3)
  views = next(vp.create_eval_iterator(config))['inputs'][0]  # video 0, 8 frames
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
  config = _config(path, num_frames=2, eval_crops=3, eval_clips=2, eval_batch_size=1)
  views = next(vp.create_eval_iterator(config))['inputs'][0]
  assert views.shape == (6, 2, 16, 16, 3)  # [clips x crops, T, H, W, 3]
  # Crops start at 0, 8, 16 along the long side: means 8 * 7.5, 8 * 15.5, 8 * 23.5.
  means = [v.mean() * 255 for v in views[:3]]
  np.testing.assert_allclose(means, [60, 124, 188], atol=2)
  np.testing.assert_allclose([v.mean() * 255 for v in views[3:]], means, atol=1e-3)


def test_eval_gives_whole_videos_to_processes_and_pads(dmvr):
  config = _config(dmvr, eval_clips=2, eval_batch_size=2)
  per_process = [list(vp.create_eval_iterator(config, p, 2)) for p in range(2)]
  assert [len(b) for b in per_process] == [2, 2]  # same batch count on every process
  ids = np.concatenate([b['video_id'] for bs in per_process for b in bs])
  masks = np.concatenate([b['mask'] for bs in per_process for b in bs])
  assert sorted(ids[masks == 1]) == [0, 1, 2]
  assert list(ids[masks == 0]) == [-1]
  pad = [b for bs in per_process for b in bs if b['mask'][0] == 0][0]
  assert pad['inputs'].shape == (1, 2, 4, 16, 16, 3) and not pad['inputs'].any()


def test_corrupt_frame_error_names_the_record(tmp_path):
  good = _record([_jpeg(10)] * 4, [0])
  bad = _record([_jpeg(10), b'not a jpeg at all', _jpeg(10)], [1])
  path = _write(tmp_path / 'corrupt.tfrecord', [good, bad])
  config = _config(path, eval_batch_size=2, batch_size=2, num_frames=3)
  with pytest.raises(ValueError, match=r'corrupt\.tfrecord record 1: frame 1'):
    list(vp.create_eval_iterator(config))
  with pytest.raises(ValueError, match=r'corrupt\.tfrecord record 1: frame 1'):
    next(vp.create_train_iterator(config))


def _digits_config(**dataset):
  fields = dict(name='moving_digits', image_size=32, num_frames=8, stride=2, eval_clips=2,
                eval_crops=1, augment=True, crop_min_area=0.5, random_flip=True)
  fields.update(dataset)
  return ml_collections.ConfigDict(dict(seed=3, batch_size=4, eval_batch_size=4,
                                        dataset=fields))


def test_train_iterator_resumes_exactly_and_splits_rows_over_processes():
  config = _digits_config()
  it = vp.create_train_iterator(config)
  full = [next(it) for _ in range(4)]
  resumed = vp.create_train_iterator(config, start_step=2)
  for k in (2, 3):
    b = next(resumed)
    np.testing.assert_array_equal(b['inputs'], full[k]['inputs'])
    np.testing.assert_array_equal(b['labels'], full[k]['labels'])
  halves = [next(vp.create_train_iterator(config, start_step=1, process_index=p,
                                          process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['inputs'] for h in halves]),
                                full[1]['inputs'])
  other_seed = next(vp.create_train_iterator(_seed(config, 4)))
  assert not np.array_equal(other_seed['inputs'], full[0]['inputs'])


def _seed(config, seed):
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  return config


def test_moving_digits_label_needs_motion():
  data = vp.MovingDigits('test')
  assert len(data) == 360 * 4 and data.num_classes == 40
  assert len(vp.MovingDigits('train')) == 1437 * 4
  labels = [data.label(i) for i in range(4)]  # one scan, 4 directions
  assert len(set(labels)) == 4 and len({l // 4 for l in labels}) == 1
  scan = np.arange(64).reshape(8, 8) % 17
  right = vp.render_moving_digit(scan, vp.DIRECTIONS.index('right'), offset=5)
  left = vp.render_moving_digit(scan, vp.DIRECTIONS.index('left'), offset=5)
  # Same digit, same place: the frames match (a single frame cannot tell the direction)...
  for t in range(1, 16):
    np.testing.assert_array_equal(right[t], left[16 - t])
  # ...but the clips differ, and so do the labels.
  assert not np.array_equal(right, left)
  assert right.shape == (16, 32, 32, 3) and right.dtype == np.uint8


def test_moving_digits_eval_views_and_info():
  config = _digits_config()
  info = vp.get_dataset_info(config)
  assert (info.num_classes, info.num_train, info.num_eval) == (40, 5748, 1440)
  b = next(vp.create_eval_iterator(config))
  assert b['inputs'].shape == (4, 2, 8, 32, 32, 3)
  assert vp.is_video_dataset(config) and not vp.is_video_dataset(
      ml_collections.ConfigDict(dict(dataset=dict(name='digits'))))


def test_tfds_ucf101_with_mock_data():
  config = ml_collections.ConfigDict(dict(
      seed=0, batch_size=2, eval_batch_size=2, model=dict(num_classes=101),
      dataset=dict(name='ucf101', image_size=16, num_frames=4, stride=2, eval_clips=2,
                   eval_crops=3)))
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    info = vp.get_dataset_info(config)
    train = next(vp.create_train_iterator(config))
    evaluation = list(vp.create_eval_iterator(config))
  assert info.num_classes == 101 and info.num_views == 6
  assert train['inputs'].shape == (2, 4, 16, 16, 3)
  assert len(evaluation) == 2 and evaluation[0]['inputs'].shape == (2, 6, 4, 16, 16, 3)
  assert list(evaluation[1]['mask']) == [1, 0]


@pytest.mark.parametrize('name', ['moving_digits_vivit', 'moving_digits_tokenlearner',
                                  'charades_tokenlearner', 'avid_tokenlearner'])
def test_video_configs_validate(name):
  import importlib  # pylint: disable=g-import-not-at-top
  from token_learner import ModelConfig  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'configs.{name}').get_config()
  model_cfg = ModelConfig.from_config(config)
  assert model_cfg.is_video and vp.is_video_dataset(config)
  opts = vp._options(config)
  assert model_cfg.input_shape == (opts.num_frames, *opts.image_size, 3)
  assert config.eval_average in ('logits', 'probs') and 'path' in config.init_from


def test_unknown_dataset_field_is_an_error():
  config = _digits_config(eval_clip=2)
  with pytest.raises(ValueError, match='config.dataset.eval_clip is not'):
    vp.get_dataset_info(config)
