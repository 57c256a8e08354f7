"""A TFDS train split read in shards (config.dataset.read_shards): each of P processes reads only
its 1/P of the records, batches are a pure function of (seed, step, read_shards), resume is
exact. Runs on a 37-image TFDS dataset written by the test (mock_data serves every split whole)."""
import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from token_learner import data
from token_learner.data import images, stream

N = 37  # Train records; record i is a 4x4 image of value i with label i % 3.


class PodTestImages(tfds.core.GeneratorBasedBuilder):
  """Train: 37 constant images (value = record index); test: 5."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(4, 4, 3)),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(N), 'test': self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((4, 4, 3), i, np.uint8), 'label': i % 3}


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  PodTestImages(data_dir=data_dir).download_and_prepare()
  return data.from_dict(dict(name='pod_test_images', data_dir=data_dir, image_size=4,
                             mean=(0., 0., 0.), std=(1., 1., 1.), augment=False,
                             shuffle_buffer=8))


def _batches(cfg, n, batch_size=8, start_step=0, process_index=0, process_count=1):
  it = data.train_iterator(cfg, seed=3, batch_size=batch_size, start_step=start_step,
                           process_index=process_index, process_count=process_count)
  return list(itertools.islice(it, n))


def _records(batch):
  """The record index of each row (the image's value, a uint8 pixel)."""
  assert batch['inputs'].dtype == np.uint8
  return batch['inputs'][:, 0, 0, 0].astype(int)


def test_each_process_reads_only_its_half(cfg, monkeypatch):
  read = {}  # process -> tfds ids the reader produced
  current = [None]
  tfds_read = images._tfds_read  # pylint: disable=protected-access

  def counting_read(builder, split):
    log = read.setdefault(current[0], [])

    def note(tfds_id):
      log.append(tfds_id.numpy().decode())
      return tfds_id
    ds = tfds_read(builder, split)
    return ds.map(lambda ex: {**ex, 'tfds_id': tf.ensure_shape(
        tf.py_function(note, [ex['tfds_id']], tf.string), [])})
  monkeypatch.setattr(images, '_tfds_read', counting_read)

  steps = 9  # 72 positions: about 2 epochs of the 37 records.
  for mode, shards in (('sharded', None), ('whole', 1)):
    for p in range(2):
      current[0] = (mode, p)
      _batches(dataclasses.replace(cfg, read_shards=shards), steps, process_index=p,
               process_count=2)
  counts = {key: len(ids) for key, ids in read.items()}
  print('records read per process in 9 steps of batch 8 (2 processes):', counts)
  halves = [set(read['sharded', p]) for p in range(2)]
  assert halves[0].isdisjoint(halves[1]) and len(halves[0] | halves[1]) == N
  assert sorted(len(h) for h in halves) == [18, 19]
  # Each process reads each of its records about twice (2 epochs, plus the shuffle buffer's
  # look-ahead); reading the whole stream, every record about twice on every process.
  for p in range(2):
    assert counts['sharded', p] <= 2 * 19 + 8 + 8
    assert counts['whole', p] >= 2 * N - 8
    assert counts['sharded', p] < 0.65 * counts['whole', p]


def test_batches_depend_on_read_shards_not_on_processes(cfg):
  sharded = dataclasses.replace(cfg, read_shards=2)
  one = _batches(sharded, 6)  # One process reading both shards.
  parts = [_batches(sharded, 6, process_index=p, process_count=2) for p in range(2)]
  default = [_batches(cfg, 6, process_index=p, process_count=2) for p in range(2)]
  for k, batch in enumerate(one):
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key])
      np.testing.assert_array_equal(  # read_shards defaults to the process count.
          np.concatenate([default[0][k][key], default[1][k][key]]), batch[key])
  rows = np.stack([_records(b) for b in one])  # [step, row]
  np.testing.assert_array_equal(rows % 3, np.stack([b['labels'] for b in one]))
  # Shards are contiguous in the stored order (TFDS shuffles records when it writes them):
  # shard 0 = stored records [0, 19), shard 1 = [19, 37). Rows 0-3 come from shard 0, rows 4-7
  # from shard 1; each shard's first epoch is a permutation of its records.
  builder = tfds.builder('pod_test_images', data_dir=cfg.data_dir)
  stored = [int(ex['image'][0, 0, 0]) for ex in builder.as_dataset(split='train')]
  shard0, shard1 = rows[:, :4].ravel(), rows[:, 4:].ravel()
  assert sorted(shard0[:19]) == sorted(stored[:19])
  assert sorted(shard1[:18]) == sorted(stored[19:])
  assert list(shard0[:19]) != stored[:19]  # Shuffled.
  # Shard 1's second epoch (its positions 18..23): its records again, in another order.
  second = list(shard1[18:])
  assert len(set(second)) == 6 and set(second) <= set(stored[19:])
  assert second != list(shard1[:6])
  # Augmentation is seeded by the global position too: the same across process counts.
  augmented = dataclasses.replace(sharded, augment=True)
  whole = _batches(augmented, 2)[1]['inputs']
  halves = [_batches(augmented, 1, start_step=1, process_index=p, process_count=2)[0]['inputs']
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), whole)


@pytest.mark.parametrize('start_step', [5])  # Past the first epoch of both shards.
def test_resume_is_exact_per_process(cfg, start_step):
  for p in range(2):
    fresh = _batches(cfg, 7, process_index=p, process_count=2)
    resumed = _batches(cfg, 7 - start_step, start_step=start_step, process_index=p,
                       process_count=2)
    for a, b in zip(fresh[start_step:], resumed):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_read_shards_must_fit_processes_and_batch(cfg):
  with pytest.raises(ValueError,
                     match=r'config.dataset.read_shards=3 must be 1 .* multiple of the process'):
    data.check_run(dataclasses.replace(cfg, read_shards=3), batch_size=8, process_count=2)
  with pytest.raises(ValueError, match=r'read_shards=16 .* divides config.batch_size=8'):
    data.check_run(dataclasses.replace(cfg, read_shards=16), batch_size=8, process_count=2)
  with pytest.raises(ValueError, match='config.dataset.read_shards'):
    data.from_dict(dict(name='digits', read_shards=0))
  data.check_run(dataclasses.replace(cfg, read_shards=4), batch_size=8, process_count=2)


def test_pipeline_functions_are_traced_as_written():
  """stream.as_written skips AutoGraph (most of a pipeline's build time): a function branching
  in Python on a tensor, which AutoGraph would turn into a tf.cond, raises when traced; the
  pipeline's own functions (every data test above) need no rewrite."""
  def sign(x):
    if x > 1:  # A tensor as a Python bool: only AutoGraph's rewrite makes this a graph.
      return x
    return -x
  ds = tf.data.Dataset.range(3)
  assert list(ds.map(sign).as_numpy_iterator()) == [0, -1, 2]
  with pytest.raises(TypeError):
    ds.map(stream.as_written(sign))
