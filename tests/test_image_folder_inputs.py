"""image_folder inputs as users have them: corrupt files found before training (and the scan
cached), EXIF orientation, formats read from the content, non-UTF-8 file names."""
import io
import json
import logging
import os

import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from token_learner import data
from token_learner.data import corrupt_images
from token_learner.data import images


def folder_cfg(root, **overrides):
  fields = dict(name='image_folder', root=str(root), image_size=8, augment=False)
  return data.from_dict({**fields, **overrides})


def pixels(h, w, seed):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, array, fmt='PNG', **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt, **kwargs)


def jpeg_bytes(array):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='JPEG', quality=95)
  return out.getvalue()


def two_classes(root, split, n=2):
  for k, cls in enumerate(('cat', 'dog')):
    for i in range(n):
      save(os.path.join(root, split, cls, f'{i}.png'), np.full((10, 12, 3), 40 * k + i, np.uint8))


def source_of(cfg, field='eval_split'):
  return images._source(cfg, field)  # pylint: disable=protected-access


def test_truncated_jpeg_fails_before_training_and_is_skipped(tmp_path):
  """A JPEG cut in half has valid headers, and a crop of its top decodes: only a full decode
  finds it. Both iterators fail when they are built (before any step), naming the file."""
  two_classes(tmp_path, 'train')
  two_classes(tmp_path, 'test')
  whole = jpeg_bytes(pixels(64, 48, 0))
  (tmp_path / 'test' / 'cat' / 'cut.jpg').write_bytes(whole[:len(whole) // 2])
  (tmp_path / 'train' / 'dog' / 'cut.jpg').write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match=r"test/cat/cut.jpg \(record \d+\): .*JPEG"):
    data.eval_input(folder_cfg(tmp_path), batch_size=4)
  with pytest.raises(ValueError, match='train/dog/cut.jpg'):
    data.train_iterator(folder_cfg(tmp_path), seed=0, batch_size=4)
  cfg = folder_cfg(tmp_path, skip_corrupt=True)
  evaluation = data.eval_input(cfg, batch_size=4)
  assert evaluation.num_skipped == 1 and sum(b['mask'].sum() for b in evaluation) == 4


def test_scan_is_cached_by_path_size_and_mtime(tmp_path, caplog):
  two_classes(tmp_path, 'train')
  two_classes(tmp_path, 'test')
  cfg = folder_cfg(tmp_path)
  with caplog.at_level(logging.INFO):
    data.eval_input(cfg, batch_size=4)
  assert 'Decoding 4 image(s)' in caplog.text
  cache = json.loads((tmp_path / corrupt_images.SCAN_CACHE).read_text())['files']
  assert sorted(cache) == ['test/cat/0.png', 'test/cat/1.png', 'test/dog/0.png', 'test/dog/1.png']
  caplog.clear()
  with caplog.at_level(logging.INFO):
    data.eval_input(cfg, batch_size=4)  # A restart: nothing decoded again.
  assert 'Decoding' not in caplog.text
  assert data.dataset_info(cfg).ignored_hidden == 0  # The cache (at the root) is no split file.
  # A file replaced by a corrupt one (new size and mtime) is decoded again, and only it.
  broken = tmp_path / 'test' / 'dog' / '1.png'
  broken.write_bytes(broken.read_bytes()[:40])
  caplog.clear()
  with caplog.at_level(logging.INFO), pytest.raises(ValueError, match='test/dog/1.png'):
    data.eval_input(cfg, batch_size=4)
  assert 'Decoding 1 image(s)' in caplog.text and '(3 cached)' in caplog.text


def test_cache_of_a_read_only_root_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
  two_classes(tmp_path, 'train')
  two_classes(tmp_path, 'test')

  def refuse(path, text):
    raise OSError(30, 'Read-only file system', path)
  monkeypatch.setattr(corrupt_images.paths, 'write_text_atomic', refuse)
  with caplog.at_level(logging.WARNING):
    evaluation = data.eval_input(folder_cfg(tmp_path), batch_size=4)
  assert sum(b['mask'].sum() for b in evaluation) == 4
  assert 'Cannot write the image scan cache' in caplog.text


def test_exif_rotation_reaches_the_batches(tmp_path):
  """Stored left half red, right half blue, tag 6 (rotate 90 clockwise): displayed, the top
  half is red, the bottom blue, in eval batches and in train batches (augment=False: the eval
  view, through the same decode)."""
  stored = np.zeros((32, 48, 3), np.uint8)
  stored[:, :24, 0] = 255
  stored[:, 24:, 2] = 255
  exif = Image.Exif()
  exif[0x0112] = 6
  for split in ('train', 'test'):
    save(str(tmp_path / split / 'cat' / 'turned.png'), stored, exif=exif.tobytes())
  cfg = folder_cfg(tmp_path, image_size=16)
  for batch in (next(iter(data.eval_input(cfg, batch_size=1))),
                next(data.train_iterator(cfg, seed=0, batch_size=1))):
    image = batch['inputs'][0].astype(int)
    assert (image[:6, :, 0] > 200).all() and (image[:6, :, 2] < 50).all()
    assert (image[10:, :, 2] > 200).all() and (image[10:, :, 0] < 50).all()


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_exif_orientation_is_applied_in_train_and_eval(tmp_path, fmt):
  """Each orientation tag 1..8 gives the image as PIL's ImageOps.exif_transpose displays it,
  from `decode` (eval) and from `decode_crop` (train) alike."""
  stored = pixels(6, 10, 1)
  ext = 'png' if fmt == 'PNG' else 'jpg'
  tags = range(1, 9) if fmt == 'PNG' else (1, 6)
  for tag in tags:
    exif = Image.Exif()
    exif[0x0112] = tag
    save(str(tmp_path / 'test' / 'cat' / f'{tag}.{ext}'), stored, fmt, exif=exif.tobytes(),
         **({'quality': 95} if fmt == 'JPEG' else {}))
  two_classes(tmp_path, 'train')
  source = source_of(folder_cfg(tmp_path))
  images.check_image_folder(source, skip_corrupt=False)
  whole = lambda shape: (tf.zeros([3], tf.int32), shape)
  for path in source.files:
    with Image.open(path) as image:
      want = np.asarray(ImageOps.exif_transpose(image).convert('RGB')).astype(int)
    raw = tf.constant(os.fsencode(path))
    for got in (source.decode(raw), source.decode_crop(raw, whole)):
      got = got.numpy().astype(int)
      assert got.shape == want.shape, path
      tol = 0 if fmt == 'PNG' else 8  # Two JPEG decoders (libjpeg-turbo in both, but IDCTs vary).
      assert np.abs(got - want).max() <= tol, path
  # Tag 6 (rotate 90 clockwise): the stored 6 x 10 image comes out 10 x 6.
  turned = [f for f in source.files if os.path.basename(f).startswith('6.')]
  assert source.decode(tf.constant(os.fsencode(turned[0]))).shape == (10, 6, 3)


def test_formats_by_content_agree_in_train_and_eval(tmp_path):
  """WebP, BMP and GIF are read (a WebP named .jpg too); the values are the stored pixels; a
  TIFF, which TensorFlow cannot decode, is an error naming it in train and eval alike."""
  array = np.zeros((8, 8, 3), np.uint8)
  # (name, format, colour): solid colours survive resizing and a GIF's palette exactly.
  written = [('a.webp', 'WEBP', (250, 10, 10)), ('b.bmp', 'BMP', (10, 250, 10)),
             ('c.gif', 'GIF', (10, 10, 250)), ('webp_named.jpg', 'WEBP', (200, 200, 0))]
  for split in ('train', 'test'):
    for name, fmt, colour in written:
      save(str(tmp_path / split / 'cat' / name), np.full((8, 10, 3), colour, np.uint8), fmt,
           **({'lossless': True} if fmt == 'WEBP' else {}))
    save(str(tmp_path / split / 'dog' / 'd.png'), np.full((8, 8, 3), 90, np.uint8))
  cfg = folder_cfg(tmp_path)
  assert data.dataset_info(cfg).num_eval == 5
  batches = list(data.eval_input(cfg, batch_size=5))
  mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
  got = np.concatenate([b['inputs'] for b in batches])[mask]
  labels = np.concatenate([b['labels'] for b in batches])[mask]
  for image in got:
    np.testing.assert_array_equal(image, np.broadcast_to(image[0, 0], image.shape))
  want = sorted([(0, c) for _, _, c in written] + [(1, (90, 90, 90))])
  assert sorted((int(l), tuple(int(v) for v in im[0, 0])) for l, im in zip(labels, got)) == want
  train = data.train_iterator(cfg, seed=0, batch_size=5)
  assert sorted(next(train)['labels']) == [0, 0, 0, 0, 1]

  save(str(tmp_path / 'test' / 'dog' / 'scan.tif'), array, 'TIFF')
  save(str(tmp_path / 'train' / 'dog' / 'scan.tif'), array, 'TIFF')
  with pytest.raises(ValueError, match=r'test/dog/scan.tif .*Unknown image file format'):
    data.eval_input(cfg, batch_size=5)
  with pytest.raises(ValueError, match='train/dog/scan.tif'):
    data.train_iterator(cfg, seed=0, batch_size=5)


def test_non_utf8_file_names_are_read_and_named(tmp_path):
  root = os.fsencode(str(tmp_path))
  two_classes(tmp_path, 'train')
  two_classes(tmp_path, 'test')
  good = os.path.join(root, b'test', b'cat', b'caf\xe9.png')  # Latin-1, not UTF-8.
  Image.fromarray(np.full((9, 9, 3), 77, np.uint8)).save(open(good, 'wb'), format='PNG')
  cfg = folder_cfg(tmp_path)
  batches = list(data.eval_input(cfg, batch_size=5))
  mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
  assert mask.sum() == 5
  assert any((image == 77).all() for image in np.concatenate([b['inputs'] for b in batches]))
  with open(os.path.join(root, b'test', b'dog', b'bad\xff.png'), 'wb') as f:
    f.write(b'not an image')
  with pytest.raises(ValueError, match=r"test/dog/bad\\xff.png \(record"):
    data.eval_input(cfg, batch_size=5)


def test_unlistable_folder_is_one_line_naming_it(tmp_path, monkeypatch):
  two_classes(tmp_path, 'train')
  two_classes(tmp_path, 'test')
  listdir = images.paths.listdir

  def failing(folder):
    if folder.endswith('dog'):
      raise PermissionError(13, 'Permission denied', folder)
    return listdir(folder)
  monkeypatch.setattr(images.paths, 'listdir', failing)
  with pytest.raises(ValueError, match=r"cannot list the class folder '.*train/dog': "
                     'Permission denied'):
    data.dataset_info(folder_cfg(tmp_path))


def test_url_root_is_read_through_the_path_layer(tmp_path, monkeypatch):
  """A root such as gs://bucket/photos: every listing, stat, read and the scan cache go through
  token_learner.paths and TensorFlow's file system (here a fake bucket mapped onto a local
  folder; a local os.* call on the URL would find nothing)."""
  from token_learner import paths  # pylint: disable=g-import-not-at-top
  local, url = str(tmp_path / 'bucket'), 'gs://bucket'
  two_classes(local, 'train')
  two_classes(local, 'test')
  to_local = lambda p: local + p[len(url):] if str(p).startswith(url) else p
  for name in ('listdir', 'isdir', 'exists', 'read_text', 'open_file', 'write_text_atomic'):
    original = getattr(paths, name)
    monkeypatch.setattr(paths, name, lambda p, *a, f=original: f(to_local(p), *a))
  read_file, stat = tf.io.read_file, tf.io.gfile.stat
  monkeypatch.setattr(tf.io, 'read_file',
                      lambda p: read_file(tf.strings.regex_replace(p, f'^{url}', local)))
  monkeypatch.setattr(tf.io.gfile, 'stat', lambda p: stat(to_local(p)))
  cfg = folder_cfg(url)
  assert data.dataset_info(cfg).num_eval == 4
  batches = list(data.eval_input(cfg, batch_size=4))
  assert sorted(batches[0]['inputs'][:, 0, 0, 0]) == [0, 1, 40, 41]
  cache = json.loads(open(os.path.join(local, corrupt_images.SCAN_CACHE)).read())['files']
  assert sorted(cache) == [f'test/{c}/{i}.png' for c in ('cat', 'dog') for i in (0, 1)]
