"""Tests of the image data layer: sizes, determinism, resume, process slicing, eval padding,
sources, config validation."""
import collections
import dataclasses
import io
import itertools
import logging
import os

import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf
import tensorflow_datasets as tfds

from token_learner import data
from token_learner.data import corrupt_images
from token_learner.data import images

MEAN, STD = (0.5, 0.25, 0.1), (0.5, 0.2, 0.4)


def make_cfg(**dataset):
  fields = dict(name='digits', data_dir=None, root=None, train_split='train', eval_split='test',
                image_size=8, crop_min_area=0.08, mean=MEAN, std=STD, augment=True,
                skip_corrupt=False, shuffle_buffer=64)
  fields.update(dataset)
  return data.from_dict(fields)


def take(iterator, n):
  """The first `n` items of `iterator`."""
  return list(itertools.islice(iterator, n))


def train(cfg, batch_size=64, seed=0, start_step=0, process_index=0, process_count=1):
  return data.train_iterator(cfg, seed=seed, batch_size=batch_size, start_step=start_step,
                             process_index=process_index, process_count=process_count)


def evaluate(cfg, batch_size=50, process_index=0, process_count=1):
  return list(data.eval_input(cfg, batch_size=batch_size, process_index=process_index,
                              process_count=process_count))


def concat(batches, key):
  return np.concatenate([b[key] for b in batches])


def to_pixels(unit):
  """[0, 1] floats -> uint8 pixels, rounded (half to even) as the data layer rounds them."""
  return np.round(np.asarray(unit, np.float64) * 255).astype(np.uint8)


# --- digits: the offline default ------------------------------------------------------------


def test_digits_info_and_fixed_stratified_split():
  cfg = make_cfg(augment=False)
  assert isinstance(cfg, data.ImageData) and not cfg.is_video
  assert cfg.image_size == (8, 8) and cfg.example_shape == (8, 8, 3)
  info = data.dataset_info(cfg)
  assert info == data.DatasetInfo(10, 1437, 360, (8, 8, 3))
  assert (info.num_views, info.multi_label) == (1, False)

  eval_batches = evaluate(cfg)
  mask = concat(eval_batches, 'mask').astype(bool)
  test_images = concat(eval_batches, 'inputs')[mask]
  test_labels = concat(eval_batches, 'labels')[mask]

  # One epoch of train (augment=False: exact pixels) plus test is exactly the whole dataset.
  num_batches = -(-1437 // 64)
  batches = take(train(cfg), num_batches)
  train_images = concat(batches, 'inputs')[:1437]
  train_labels = concat(batches, 'labels')[:1437]
  digits = sk_datasets.load_digits()
  # The 8x8 scans (0..16) at image_size 8: pixels round(v / 16 * 255), nothing else.
  expected = to_pixels(np.repeat(digits.images[..., None] / 16.0, 3, -1))
  assert train_images.dtype == test_images.dtype == np.uint8

  def rows(images_, labels):
    flat = np.concatenate([images_.reshape(len(images_), -1).astype(int), labels[:, None]], 1)
    return sorted(map(tuple, flat))
  got = rows(np.concatenate([train_images, test_images]), np.concatenate([train_labels,
                                                                          test_labels]))
  assert got == rows(expected, digits.target)
  # Stratified: each class is split in the same proportion.
  for cls, count in collections.Counter(digits.target).items():
    assert abs(np.sum(test_labels == cls) - count * 360 / 1797) <= 1


def test_train_batches_shapes_and_determinism(assert_batches_equal):
  cfg = make_cfg()
  a = take(train(cfg, batch_size=32), 3)
  b = take(train(cfg, batch_size=32), 3)
  assert a[0]['inputs'].shape == (32, 8, 8, 3) and a[0]['inputs'].dtype == np.uint8
  assert a[0]['labels'].shape == (32,) and a[0]['labels'].dtype == np.int32
  assert_batches_equal(a, b)
  other = take(train(cfg, batch_size=32, seed=1), 1)
  assert not np.array_equal(other[0]['labels'], a[0]['labels'])
  # Augmentation does not change which examples come in which order.
  plain = take(train(make_cfg(augment=False), batch_size=32), 3)
  np.testing.assert_array_equal(concat(plain, 'labels'), concat(a, 'labels'))
  assert not np.array_equal(concat(plain, 'inputs'), concat(a, 'inputs'))


def test_epochs_are_permutations_reshuffled_each_epoch():
  cfg = make_cfg(augment=False)
  batches = take(train(cfg, batch_size=479), 6)  # 3 batches == 1437 == one epoch.
  first, second = concat(batches[:3], 'inputs'), concat(batches[3:], 'inputs')
  key = lambda x: sorted(map(tuple, x.reshape(len(x), -1)))
  assert key(first) == key(second)
  assert not np.array_equal(first, second)


def test_resume_matches_skipping_bit_for_bit(assert_batches_equal):
  cfg = make_cfg()  # 1437 / 64: batch 22 straddles the epoch boundary.
  fresh = take(train(cfg), 25)
  for k in (1, 22, 23):
    assert_batches_equal(take(train(cfg, start_step=k), 2), fresh[k:k + 2])


@pytest.mark.parametrize('start_step', [0, 22])
def test_process_slices_concatenate_to_global_batch(start_step):
  cfg = make_cfg()
  whole = take(train(cfg, start_step=start_step), 2)
  parts = [take(train(cfg, start_step=start_step, process_index=p, process_count=2), 2)
           for p in range(2)]
  for step in range(2):
    assert parts[0][step]['labels'].shape == (32,)
    for key in ('inputs', 'labels'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])


@pytest.mark.parametrize('eval_batch_size,process_count', [(50, 1), (50, 2), (48, 4)])
def test_eval_covers_each_example_once(eval_batch_size, process_count):
  cfg = make_cfg(augment=False)
  reference = evaluate(cfg)
  ref_mask = concat(reference, 'mask').astype(bool)
  ref_labels = concat(reference, 'labels')[ref_mask]

  per_process = [evaluate(cfg, eval_batch_size, p, process_count) for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1  # Same batch count everywhere.
  assert len(per_process[0]) == -(-360 // eval_batch_size)
  labels, total = [], 0.0
  for batches in per_process:
    for b in batches:
      assert set(b) == {'inputs', 'labels', 'mask'}
      assert b['inputs'].shape == (eval_batch_size // process_count, 8, 8, 3)
      assert b['inputs'].dtype == np.uint8 and b['mask'].dtype == np.float32
      total += b['mask'].sum()
      labels.extend(b['labels'][b['mask'] == 1])
      np.testing.assert_array_equal(b['inputs'][b['mask'] == 0], 0.0)
  assert total == 360
  assert collections.Counter(labels) == collections.Counter(ref_labels)


def test_eval_input_is_built_once_and_iterated_many_times(tmp_path, monkeypatch,
                                                          assert_batches_equal):
  """Two passes of one eval_input are identical; the skip_corrupt scan runs once."""
  write_folder(tmp_path, 'train')
  write_folder(tmp_path, 'test', _FILES[:3])
  (tmp_path / 'test' / 'cat' / 'broken.png').write_bytes(b'not an image')
  scans = []
  scan = corrupt_images.scan_files
  monkeypatch.setattr(corrupt_images, 'scan_files', lambda *a: scans.append(1) or scan(*a))
  evaluation = data.eval_input(folder_cfg(tmp_path, skip_corrupt=True), batch_size=4)
  assert len(scans) == 1 and evaluation.num_skipped == 1 and len(evaluation) == 1
  first, second = list(evaluation), list(evaluation)
  assert_batches_equal(first, second)
  assert len(scans) == 1 and concat(first, 'mask').sum() == 3
  # The digits split does not depend on anything but the config.
  assert_batches_equal(evaluate(make_cfg(augment=False)), evaluate(make_cfg(augment=False)))


def test_per_process_split_digits():
  cfg = make_cfg(per_process_split=True, augment=False)
  evals = [evaluate(cfg, 50, p, 2) for p in range(2)]
  assert len(evals[0]) == len(evals[1])
  assert sum(concat(e, 'mask').sum() for e in evals) == 360
  first = [next(train(cfg, process_index=p, process_count=2)) for p in range(2)]
  assert first[0]['inputs'].shape == (32, 8, 8, 3)
  assert not np.array_equal(first[0]['inputs'], first[1]['inputs'])


def test_config_errors():
  with pytest.raises(ValueError, match='config.batch_size'):
    train(make_cfg(), batch_size=63, process_count=2)
  with pytest.raises(ValueError, match='config.eval_batch_size'):
    data.eval_input(make_cfg(), batch_size=5, process_count=2)
  with pytest.raises(ValueError, match='start_step'):
    train(make_cfg(), start_step=-1)
  with pytest.raises(ValueError, match='config.dataset.name'):
    data.dataset_info(make_cfg(name='no_such_dataset_xyz'))
  with pytest.raises(ValueError, match='config.dataset.root'):
    make_cfg(name='image_folder')
  with pytest.raises(ValueError, match="'/nowhere' is not a directory.*mkdir -p /nowhere/train"):
    make_cfg(name='image_folder', root='/nowhere')
  with pytest.raises(ValueError, match='eval_split'):
    data.dataset_info(make_cfg(eval_split='validation'))
  for field, value in [('crop_min_area', 0.0), ('crop_min_area', 1.5), ('image_size', 0),
                       ('image_size', (8, 8, 8)), ('shuffle_buffer', 0), ('mean', (0.5, 0.5)),
                       ('std', (0.5, 0.0, 0.5)), ('augment', 'yes')]:
    with pytest.raises(ValueError, match=f'config.dataset.{field}'):
      make_cfg(**{field: value})
  with pytest.raises(ValueError, match='is a video dataset'):
    data.ImageData(name='moving_digits')


def test_unknown_dataset_field_is_an_error():
  with pytest.raises(ValueError, match='config.dataset.shuffle_bufer is not a field'):
    make_cfg(shuffle_bufer=8)
  # num_classes comes from the model section, never from config.dataset.
  with pytest.raises(ValueError, match='config.dataset.num_classes is not a field'):
    make_cfg(num_classes=10)


def test_defaults_and_normalised_fields():
  cfg = data.from_dict({})
  assert isinstance(cfg, data.ImageData)
  assert (cfg.name, cfg.image_size, cfg.crop_min_area) == ('digits', (8, 8), 0.08)
  assert (cfg.mean, cfg.std, cfg.shuffle_buffer) == ((0.5,) * 3, (0.5,) * 3, 10_000)
  cfg = data.from_dict({'name': 'cifar10', 'image_size': [32, 24], 'mean': [0, 0, 0]},
                       num_classes=10)
  assert cfg.image_size == (32, 24) and cfg.mean == (0.0, 0.0, 0.0)
  assert cfg.example_shape == (32, 24, 3) and cfg.num_classes == 10
  assert data.from_dict({'name': 'cifar10'}).image_size == (224, 224)
  assert dataclasses.replace(cfg, augment=False).image_size == (32, 24)


# --- TFDS -----------------------------------------------------------------------------------


def test_tfds_imagenet_mock(assert_batches_equal):
  with tfds.testing.mock_data(num_examples=20):
    cfg = make_cfg(name='imagenet2012', image_size=16, eval_split='validation', shuffle_buffer=8)
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo(1000, 20, 20, (16, 16, 3))
    fresh = take(train(cfg, batch_size=8), 4)  # 20 / 8: crosses epochs.
    assert fresh[0]['inputs'].shape == (8, 16, 16, 3)
    assert_batches_equal(take(train(cfg, batch_size=8), 4), fresh)
    for k in (2, 3):  # Step 3 starts in the second epoch.
      assert_batches_equal(take(train(cfg, batch_size=8, start_step=k), 4 - k), fresh[k:])
    # One global stream (read_shards=1): every process reads it whole, keeps its rows. (Under
    # mock_data every split serves the same 20 records, so sharded reading cannot run here.)
    whole = dataclasses.replace(cfg, read_shards=1)
    parts = [next(train(whole, batch_size=8, start_step=1, process_index=p, process_count=2))
             for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([parts[0]['inputs'], parts[1]['inputs']]), fresh[1]['inputs'])

    per_process = [evaluate(cfg, 6, p, 2) for p in range(2)]
    assert [len(b) for b in per_process] == [4, 4]
    assert sum(concat(b, 'mask').sum() for b in per_process) == 20
    # Per-process files: each process reads its own part, batches stay equal in number.
    cfg = dataclasses.replace(cfg, per_process_split=True)
    evals = [evaluate(cfg, 6, p, 2) for p in range(2)]
    assert len(evals[0]) == len(evals[1])  # (mock_data serves 20 records for any split)
    batch = next(train(cfg, batch_size=8, process_index=1, process_count=2))
    assert batch['inputs'].shape == (4, 16, 16, 3)


def test_tfds_eval_input_reads_metadata_once(monkeypatch, assert_batches_equal):
  builders = []
  builder = images._tfds_builder  # pylint: disable=protected-access
  monkeypatch.setattr(images, '_tfds_builder',
                      lambda *a: builders.append(1) or builder(*a))
  with tfds.testing.mock_data(num_examples=10):
    evaluation = data.eval_input(make_cfg(name='cifar10', image_size=8), batch_size=4)
    assert len(builders) == 1
    first, second = list(evaluation), list(evaluation)
  assert len(builders) == 1 and len(first) == 3
  assert_batches_equal(first, second)


# --- image_folder ---------------------------------------------------------------------------

# (class, file name, pixel value, height, width); sizes vary to exercise resizing.
_FILES = [('cat', 'a.png', 10, 20, 30), ('cat', 'b.jpg', 200, 24, 24),
          ('dog', 'c.png', 60, 40, 16), ('dog', 'd.jpeg', 120, 16, 16),
          ('dog', 'e.PNG', 250, 12, 20)]


def write_folder(root, split, files=_FILES):
  for cls, name, value, h, w in files:
    os.makedirs(root / split / cls, exist_ok=True)
    image = Image.fromarray(np.full([h, w, 3], value, np.uint8))
    image.save(root / split / cls / name, format='JPEG' if 'j' in name.lower() else 'PNG')


def folder_cfg(root, **overrides):
  return make_cfg(name='image_folder', root=str(root), **{'image_size': 8, **overrides})


def test_image_folder_exact_values(tmp_path):
  write_folder(tmp_path, 'train')
  write_folder(tmp_path, 'test', _FILES[:3])
  cfg = folder_cfg(tmp_path, augment=False)
  assert data.dataset_info(cfg) == data.DatasetInfo(2, 5, 3, (8, 8, 3))

  batches = evaluate(cfg, 4)
  mask = concat(batches, 'mask').astype(bool)
  images_, labels = concat(batches, 'inputs')[mask], concat(batches, 'labels')[mask]
  assert sorted(labels) == [0, 0, 1]
  # Constant PNG images stay constant through resize + centre crop: exactly the pixel v.
  assert images_.dtype == np.uint8
  got = sorted((int(label), tuple(image[0, 0])) for label, image in zip(labels, images_))
  for image in images_:
    np.testing.assert_array_equal(image, np.broadcast_to(image[0, 0], image.shape))
  expected = sorted((0 if cls == 'cat' else 1, (v,) * 3)
                    for cls, name, v, _, _ in _FILES[:3] if name.endswith('png'))
  for e in expected:
    assert e in got

  batches = take(train(folder_cfg(tmp_path), batch_size=4), 3)
  assert batches[0]['inputs'].shape == (4, 8, 8, 3)
  assert sorted(concat(batches, 'labels')[:5]) == [0, 0, 1, 1, 1]  # First epoch: each once.
  # Non-square (H, W): train crops and eval centre crops have that shape.
  cfg = folder_cfg(tmp_path, image_size=(6, 10))
  assert next(train(cfg, batch_size=4))['inputs'].shape == (4, 6, 10, 3)
  assert evaluate(cfg, 4)[0]['inputs'].shape == (4, 6, 10, 3)


def test_image_folder_corrupt_file(tmp_path, caplog):
  write_folder(tmp_path, 'train')
  write_folder(tmp_path, 'test', _FILES[:2])
  (tmp_path / 'train' / 'dog' / 'broken.png').write_bytes(b'definitely not an image')
  (tmp_path / 'test' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated')

  with pytest.raises(ValueError, match='broken.png'):
    take(train(folder_cfg(tmp_path), batch_size=4), 3)
  with pytest.raises(ValueError, match='broken.jpg'):
    evaluate(folder_cfg(tmp_path), 4)

  cfg = folder_cfg(tmp_path, skip_corrupt=True)
  with caplog.at_level(logging.WARNING):
    it = train(cfg, batch_size=4)
  assert it.num_skipped == 1
  assert 'Skipped 1 corrupt' in caplog.text
  batches = take(it, 5)  # 20 rows == 4 epochs of the 5 good images.
  assert collections.Counter(concat(batches, 'labels')) == {0: 8, 1: 12}
  evaluation = data.eval_input(cfg, batch_size=4)
  assert evaluation.num_skipped == 1
  assert sum(b['mask'].sum() for b in evaluation) == 2


def test_image_folder_missing_split(tmp_path):
  write_folder(tmp_path, 'train')
  (tmp_path / 'empty' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match=f"eval_split='test' has no folder {tmp_path}/test "
                     r'\(found: empty, train\)'):
    data.eval_input(folder_cfg(tmp_path), batch_size=4)
  with pytest.raises(ValueError, match=r'no images \(.png/.jpg/.jpeg/.*\) under'):
    data.eval_input(folder_cfg(tmp_path, eval_split='empty'), batch_size=4)


def _encoded_png(value):
  out = io.BytesIO()
  Image.fromarray(np.full([12, 10, 3], value, np.uint8)).save(out, format='PNG')
  return out.getvalue()


def test_tfds_corrupt_record_named_or_skipped(caplog):
  encoded = [_encoded_png(v) for v in range(0, 120, 10)]
  encoded[5] = b'not an image'

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    return tf.data.Dataset.from_tensor_slices({
        'image': encoded, 'label': np.arange(12) % 10,
        'tfds_id': [f'{split}-record-{i}' for i in range(12)]})

  with tfds.testing.mock_data(num_examples=12, as_dataset_fn=as_dataset):
    cfg = make_cfg(name='cifar10', image_size=8, shuffle_buffer=4)
    with pytest.raises(ValueError, match=r'test-record-5 \(record 5\)'):
      evaluate(cfg, 4)
    with pytest.raises(ValueError, match='record 5'):
      take(train(cfg, batch_size=4), 3)

    cfg = dataclasses.replace(cfg, skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
      evaluation = data.eval_input(cfg, batch_size=4)
    assert evaluation.num_skipped == 1 and 'Skipped 1 corrupt' in caplog.text
    assert sum(b['mask'].sum() for b in evaluation) == 11
    labels = concat(take(train(cfg, batch_size=4), 11), 'labels')  # 4 epochs of 11 records.
    assert collections.Counter(labels)[5] == 0 and len(set(labels)) == 9


def test_tfds_imagenet_real_eval_carries_real_labels():
  """config.dataset.eval_name='imagenet2012_real': eval batches carry the ReaL sets as multi-hot
  'real_labels' (padding rows all zero), and the ReaL accuracy of given scores matches a count
  over the raw TFDS records (images with an empty set skipped)."""
  from token_learner.train import metrics  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=10):
    cfg = make_cfg(name='imagenet2012', eval_name='imagenet2012_real', image_size=16,
                   eval_split='validation', shuffle_buffer=8)
    batches = evaluate(cfg, batch_size=4)
    records = list(tfds.as_numpy(tfds.builder('imagenet2012_real').as_dataset(split='validation')))
  real, labels, mask = (concat(batches, k) for k in ('real_labels', 'labels', 'mask'))
  assert real.shape == (12, 1000) and mask.sum() == 10 and not real[10:].any()
  want_sets = [set(r['real_label'].tolist()) for r in records]
  assert [set(np.flatnonzero(r).tolist()) for r in real[:10]] == want_sets
  np.testing.assert_array_equal(labels[:10], [r['original_label'] for r in records])
  logits = np.random.default_rng(0).normal(size=(12, 1000)).astype(np.float32)
  logits[np.arange(0, 10, 2), labels[:10:2]] += 100.0  # some predictions on the original label
  m = metrics.ClassificationMetrics.single_from_model_output(
      logits=logits, targets=np.eye(1000, dtype=np.float32)[labels], loss=np.zeros(12),
      mask=mask, real_labels=real)
  top = logits.argmax(-1)[:10]
  valid = [i for i in range(10) if want_sets[i]]
  assert valid  # mock_data gives most images a non-empty ReaL set: the metric is defined.
  want = np.mean([top[i] in want_sets[i] for i in valid])
  assert metrics.eval_results(m)['real_accuracy'] == pytest.approx(want)


def test_image_folder_counts_ignored_files(tmp_path):
  """Hidden entries and files of other extensions are left out of the splits and counted once
  per folder (train and eval slices of one folder share it) in DatasetInfo."""
  write_folder(tmp_path, 'train')
  for path in ('cat/.a.png', 'dog/._c.png', '.DS_Store', 'cat/notes.txt', 'dog/f.doc',
               'README'):
    (tmp_path / 'train' / path).write_bytes(b'x')
  (tmp_path / 'train' / '.ipynb_checkpoints').mkdir()
  cfg = folder_cfg(tmp_path, train_split='train[:60%]', eval_split='train[60%:]')
  info = data.dataset_info(cfg)
  assert (info.num_train, info.num_eval, info.num_classes) == (3, 2, 2)
  assert (info.ignored_hidden, info.ignored_other) == (4, 3)
  from token_learner.train import logger  # pylint: disable=g-import-not-at-top
  assert logger.ignored_files(info) == '; 7 files ignored (4 hidden, 3 without an image extension)'
  assert logger.ignored_files(data.dataset_info(make_cfg())) == ''
