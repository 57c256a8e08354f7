"""TFDS builder of ImageNet-21k (TFDS has none): `tfds build token_learner/data/imagenet21k`."""
