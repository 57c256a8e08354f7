r"""ImageNet-21k as a TFDS dataset ('image', 'label', 'file_name'; one 'train' split).

TFDS ships no ImageNet-21k builder; this one reads the image-net.org release from the manual
directory and is built with

  tfds build token_learner/data/imagenet21k --manual_dir=MANUAL_DIR --data_dir=DATA_DIR

after which `tfds.builder('imagenet21k', data_dir=DATA_DIR)` (config.dataset.name='imagenet21k')
reads it from its files. MANUAL_DIR holds `fall11_whole.tar` (21,843 classes, the head of
configs/imagenet21k_tokenlearner.py) or `winter21_whole.tar.gz` (19,167 classes: set
--config.model.num_classes=19167): an archive of one `<synset>.tar` of JPEGs per class. Class
ids are the sorted synset ids of the archive, or of `MANUAL_DIR/synsets.txt` (one id a line)
when present, which saves a first pass over the archive to list them.
"""
import os
import tarfile

import tensorflow_datasets as tfds

ARCHIVES = ('fall11_whole.tar', 'winter21_whole.tar.gz')


def _synset(member_name: str) -> str:
  return os.path.basename(member_name)[:-len('.tar')]


class Imagenet21k(tfds.core.GeneratorBasedBuilder):
  """ImageNet-21k (image-net.org release; manual download)."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put one of {" or ".join(ARCHIVES)} (image-net.org, after registering) in manual_dir.')

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(),
        'file_name': tfds.features.Text(),
    }), supervised_keys=('image', 'label'))

  def _archive(self, manual_dir) -> str:
    for name in ARCHIVES:
      if os.path.exists(os.path.join(manual_dir, name)):
        return os.path.join(manual_dir, name)
    raise FileNotFoundError(f'{manual_dir} holds none of {list(ARCHIVES)}')

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    archive = self._archive(manual_dir)
    listed = os.path.join(manual_dir, 'synsets.txt')
    if os.path.exists(listed):
      with open(listed) as f:
        synsets = sorted(line.strip() for line in f if line.strip())
    else:
      with tarfile.open(archive, 'r|*') as outer:
        synsets = sorted(_synset(m.name) for m in outer if m.name.endswith('.tar'))
    self.info.features['label'].names = synsets
    return {'train': self._generate_examples(archive)}

  def _generate_examples(self, archive):
    with tarfile.open(archive, 'r|*') as outer:
      for member in outer:
        if not member.name.endswith('.tar'):
          continue
        label = _synset(member.name)
        with tarfile.open(fileobj=outer.extractfile(member), mode='r|*') as inner:
          for image in inner:
            if image.isfile():
              name = os.path.basename(image.name)
              yield name, {'image': inner.extractfile(image).read(), 'label': label,
                           'file_name': name}
