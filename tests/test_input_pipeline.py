"""Tests of input_pipeline: sizes, determinism, resume, process slicing, eval padding, sources."""
import collections
import itertools
import logging
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline

MEAN, STD = (0.5, 0.25, 0.1), (0.5, 0.2, 0.4)


def make_config(batch_size=64, eval_batch_size=50, seed=0, **dataset):
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  config.dataset = ml_collections.ConfigDict(dict(
      name='digits', data_dir=None, root=None, train_split='train', eval_split='test',
      image_size=8, crop_min_area=0.08, mean=MEAN, std=STD, augment=True,
      skip_corrupt=False, shuffle_buffer=64))
  config.dataset.update(dataset)
  return config


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def concat(batches, key):
  return np.concatenate([b[key] for b in batches])


def normalise(pixels):
  return (pixels - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)


# --- digits: the offline default ------------------------------------------------------------


def test_digits_info_and_fixed_stratified_split():
  config = make_config(augment=False)
  info = input_pipeline.get_dataset_info(config)
  assert info == input_pipeline.DatasetInfo(10, 1437, 360, (8, 8, 3))

  eval_batches = list(input_pipeline.create_eval_iterator(config))
  again = list(input_pipeline.create_eval_iterator(make_config(augment=False, seed=7)))
  assert_batches_equal(eval_batches, again)  # The split does not depend on config.seed.
  mask = concat(eval_batches, 'mask').astype(bool)
  test_images = concat(eval_batches, 'inputs')[mask]
  test_labels = concat(eval_batches, 'labels')[mask]

  # One epoch of train (augment=False: exact pixels) plus test is exactly the whole dataset.
  num_batches = -(-1437 // 64)
  train = take(input_pipeline.create_train_iterator(config), num_batches)
  train_images = concat(train, 'inputs')[:1437]
  train_labels = concat(train, 'labels')[:1437]
  digits = sk_datasets.load_digits()
  expected = normalise(np.repeat(digits.images[..., None] / 16.0, 3, -1).astype(np.float32))

  def rows(images, labels):
    flat = np.concatenate([images.reshape(len(images), -1).round(4), labels[:, None]], 1)
    return sorted(map(tuple, flat))
  got = rows(np.concatenate([train_images, test_images]), np.concatenate([train_labels,
                                                                          test_labels]))
  assert got == rows(expected, digits.target)
  # Stratified: each class is split in the same proportion.
  for cls, count in collections.Counter(digits.target).items():
    assert abs(np.sum(test_labels == cls) - count * 360 / 1797) <= 1


def test_train_batches_shapes_and_determinism():
  config = make_config(batch_size=32)
  a = take(input_pipeline.create_train_iterator(config), 3)
  b = take(input_pipeline.create_train_iterator(config), 3)
  assert a[0]['inputs'].shape == (32, 8, 8, 3) and a[0]['inputs'].dtype == np.float32
  assert a[0]['labels'].shape == (32,) and a[0]['labels'].dtype == np.int32
  assert_batches_equal(a, b)
  other = take(input_pipeline.create_train_iterator(make_config(batch_size=32, seed=1)), 1)
  assert not np.array_equal(other[0]['labels'], a[0]['labels'])
  # Augmentation does not change which examples come in which order.
  plain = take(input_pipeline.create_train_iterator(make_config(batch_size=32, augment=False)), 3)
  np.testing.assert_array_equal(concat(plain, 'labels'), concat(a, 'labels'))
  assert not np.array_equal(concat(plain, 'inputs'), concat(a, 'inputs'))


def test_epochs_are_permutations_reshuffled_each_epoch():
  config = make_config(batch_size=479, augment=False)  # 3 batches == 1437 == one epoch.
  batches = take(input_pipeline.create_train_iterator(config), 6)
  first, second = concat(batches[:3], 'inputs'), concat(batches[3:], 'inputs')
  key = lambda x: sorted(map(tuple, x.reshape(len(x), -1).round(4)))
  assert key(first) == key(second)
  assert not np.array_equal(first, second)


def test_resume_matches_skipping_bit_for_bit():
  config = make_config(batch_size=64)  # 1437 / 64: batch 22 straddles the epoch boundary.
  fresh = take(input_pipeline.create_train_iterator(config), 25)
  for k in (1, 22, 23):
    resumed = take(input_pipeline.create_train_iterator(config, start_step=k), 2)
    assert_batches_equal(resumed, fresh[k:k + 2])


@pytest.mark.parametrize('start_step', [0, 22])
def test_process_slices_concatenate_to_global_batch(start_step):
  config = make_config(batch_size=64)
  whole = take(input_pipeline.create_train_iterator(config, start_step), 2)
  parts = [take(input_pipeline.create_train_iterator(config, start_step, p, 2), 2)
           for p in range(2)]
  for step in range(2):
    assert parts[0][step]['labels'].shape == (32,)
    for key in ('inputs', 'labels'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), whole[step][key])


@pytest.mark.parametrize('eval_batch_size,process_count', [(50, 1), (50, 2), (48, 4)])
def test_eval_covers_each_example_once(eval_batch_size, process_count):
  config = make_config(eval_batch_size=eval_batch_size, augment=False)
  reference = list(input_pipeline.create_eval_iterator(make_config(augment=False)))
  ref_mask = concat(reference, 'mask').astype(bool)
  ref_labels = concat(reference, 'labels')[ref_mask]

  per_process = [list(input_pipeline.create_eval_iterator(config, p, process_count))
                 for p in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1  # Same batch count everywhere.
  assert len(per_process[0]) == -(-360 // eval_batch_size)
  labels, total = [], 0.0
  for batches in per_process:
    for b in batches:
      assert b['inputs'].shape == (eval_batch_size // process_count, 8, 8, 3)
      assert b['mask'].dtype == np.float32
      total += b['mask'].sum()
      labels.extend(b['labels'][b['mask'] == 1])
      np.testing.assert_array_equal(b['inputs'][b['mask'] == 0], 0.0)
  assert total == 360
  assert collections.Counter(labels) == collections.Counter(ref_labels)


def test_per_process_split_digits():
  config = make_config(batch_size=64, per_process_split=True, augment=False)
  evals = [list(input_pipeline.create_eval_iterator(config, p, 2)) for p in range(2)]
  assert len(evals[0]) == len(evals[1])
  assert sum(concat(e, 'mask').sum() for e in evals) == 360
  train = [take(input_pipeline.create_train_iterator(config, 0, p, 2), 1)[0] for p in range(2)]
  assert train[0]['inputs'].shape == (32, 8, 8, 3)
  assert not np.array_equal(train[0]['inputs'], train[1]['inputs'])


def test_config_errors():
  with pytest.raises(ValueError, match='batch_size'):
    input_pipeline.create_train_iterator(make_config(batch_size=63), process_count=2)
  with pytest.raises(ValueError, match='eval_batch_size'):
    input_pipeline.create_eval_iterator(make_config(eval_batch_size=5), process_count=2)
  with pytest.raises(ValueError, match='config.dataset.name'):
    input_pipeline.get_dataset_info(make_config(name='no_such_dataset_xyz'))
  with pytest.raises(ValueError, match='config.dataset.root'):
    input_pipeline.get_dataset_info(make_config(name='image_folder'))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    input_pipeline.get_dataset_info(make_config(name='image_folder', root='/nowhere'))
  with pytest.raises(ValueError, match='eval_split'):
    input_pipeline.get_dataset_info(make_config(eval_split='validation'))


# --- TFDS -----------------------------------------------------------------------------------


def test_tfds_imagenet_mock():
  with tfds.testing.mock_data(num_examples=20):
    config = make_config(batch_size=8, eval_batch_size=6, name='imagenet2012', image_size=16,
                         eval_split='validation', shuffle_buffer=8)
    info = input_pipeline.get_dataset_info(config)
    assert info == input_pipeline.DatasetInfo(1000, 20, 20, (16, 16, 3))
    fresh = take(input_pipeline.create_train_iterator(config), 4)  # 20 / 8: crosses epochs.
    assert fresh[0]['inputs'].shape == (8, 16, 16, 3)
    assert_batches_equal(take(input_pipeline.create_train_iterator(config), 4), fresh)
    for k in (2, 3):  # Step 3 starts in the second epoch.
      assert_batches_equal(take(input_pipeline.create_train_iterator(config, k), 4 - k), fresh[k:])
    parts = [take(input_pipeline.create_train_iterator(config, 1, p, 2), 1)[0] for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([parts[0]['inputs'], parts[1]['inputs']]), fresh[1]['inputs'])

    per_process = [list(input_pipeline.create_eval_iterator(config, p, 2)) for p in range(2)]
    assert [len(b) for b in per_process] == [4, 4]
    assert sum(concat(b, 'mask').sum() for b in per_process) == 20
    # Per-process files: each process reads its own part, batches stay equal in number.
    config.dataset.per_process_split = True
    evals = [list(input_pipeline.create_eval_iterator(config, p, 2)) for p in range(2)]
    assert len(evals[0]) == len(evals[1])
    batch = next(input_pipeline.create_train_iterator(config, 0, 1, 2))
    assert batch['inputs'].shape == (4, 16, 16, 3)


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


def folder_config(root, **overrides):
  return make_config(batch_size=4, eval_batch_size=4, name='image_folder', root=str(root),
                     image_size=8, **overrides)


def test_image_folder_exact_values(tmp_path):
  write_folder(tmp_path, 'train')
  write_folder(tmp_path, 'test', _FILES[:3])
  config = folder_config(tmp_path, augment=False)
  info = input_pipeline.get_dataset_info(config)
  assert info == input_pipeline.DatasetInfo(2, 5, 3, (8, 8, 3))

  batches = list(input_pipeline.create_eval_iterator(config))
  mask = concat(batches, 'mask').astype(bool)
  images, labels = concat(batches, 'inputs')[mask], concat(batches, 'labels')[mask]
  assert sorted(labels) == [0, 0, 1]
  # Constant PNG images stay constant through resize + centre crop: exactly (v/255 - m) / s.
  got = sorted((int(label), tuple(image[0, 0])) for label, image in zip(labels, images))
  for image in images:
    np.testing.assert_allclose(image, np.broadcast_to(image[0, 0], image.shape), atol=1e-6)
  expected = sorted((0 if cls == 'cat' else 1, tuple(normalise(np.full(3, v / 255, np.float32))))
                    for cls, name, v, _, _ in _FILES[:3] if name.endswith('png'))
  for e in expected:
    assert any(g[0] == e[0] and np.allclose(g[1], e[1], atol=1e-5) for g in got)

  train = take(input_pipeline.create_train_iterator(folder_config(tmp_path)), 3)
  assert train[0]['inputs'].shape == (4, 8, 8, 3)
  assert sorted(concat(train, 'labels')[:5]) == [0, 0, 1, 1, 1]  # First epoch: each once.


def test_image_folder_corrupt_file(tmp_path, caplog):
  write_folder(tmp_path, 'train')
  write_folder(tmp_path, 'test', _FILES[:2])
  (tmp_path / 'train' / 'dog' / 'broken.png').write_bytes(b'definitely not an image')
  (tmp_path / 'test' / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8 truncated')

  with pytest.raises(ValueError, match='broken.png'):
    take(input_pipeline.create_train_iterator(folder_config(tmp_path)), 3)
  with pytest.raises(ValueError, match='broken.jpg'):
    list(input_pipeline.create_eval_iterator(folder_config(tmp_path)))

  config = folder_config(tmp_path, skip_corrupt=True)
  with caplog.at_level(logging.WARNING):
    it = input_pipeline.create_train_iterator(config)
  assert it.num_skipped == 1
  assert 'Skipped 1 corrupt' in caplog.text
  batches = take(it, 5)  # 20 rows == 4 epochs of the 5 good images.
  assert collections.Counter(concat(batches, 'labels')) == {0: 8, 1: 12}
  evaluation = input_pipeline.create_eval_iterator(config)
  assert evaluation.num_skipped == 1
  assert sum(b['mask'].sum() for b in evaluation) == 2


def test_image_folder_missing_split(tmp_path):
  write_folder(tmp_path, 'train')
  (tmp_path / 'empty' / 'cat').mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='test'):
    input_pipeline.create_eval_iterator(folder_config(tmp_path))
  with pytest.raises(ValueError, match='no .* images'):
    input_pipeline.create_eval_iterator(folder_config(tmp_path, eval_split='empty'))


def _encoded_png(value):
  import io  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(np.full([12, 10, 3], value, np.uint8)).save(out, format='PNG')
  return out.getvalue()


def test_tfds_corrupt_record_named_or_skipped(caplog):
  images = [_encoded_png(v) for v in range(0, 120, 10)]
  images[5] = b'not an image'

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    return tf.data.Dataset.from_tensor_slices({
        'image': images, 'label': np.arange(12) % 10,
        'tfds_id': [f'{split}-record-{i}' for i in range(12)]})

  with tfds.testing.mock_data(num_examples=12, as_dataset_fn=as_dataset):
    config = make_config(batch_size=4, eval_batch_size=4, name='cifar10', image_size=8,
                         shuffle_buffer=4)
    with pytest.raises(ValueError, match=r'test-record-5 \(record 5\)'):
      list(input_pipeline.create_eval_iterator(config))
    with pytest.raises(ValueError, match='record 5'):
      take(input_pipeline.create_train_iterator(config), 3)

    config.dataset.skip_corrupt = True
    with caplog.at_level(logging.WARNING):
      evaluation = input_pipeline.create_eval_iterator(config)
    assert evaluation.num_skipped == 1 and 'Skipped 1 corrupt' in caplog.text
    assert sum(b['mask'].sum() for b in evaluation) == 11
    train = input_pipeline.create_train_iterator(config)
    labels = concat(take(train, 11), 'labels')  # 44 rows: 4 epochs of the 11 good records.
    assert collections.Counter(labels)[5] == 0 and len(set(labels)) == 9
