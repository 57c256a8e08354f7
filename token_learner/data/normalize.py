"""Pixels -> model inputs, on the device: `normalize(inputs, mean, std)` at the start of a step.

The data layer hands over pixels as uint8 (0..255): a quarter of the bytes of float32 from the
host to the device, and no float math on the host CPUs that feed the chips. Every consumer of
batches (the train step, the eval step, the few-shot features, the attention maps) calls
`normalize` first, inside its jitted function, with `config.dataset.mean` / `std`:

    model input = (pixels / 255 - mean) / std

Float inputs are taken as model inputs already (normalised) and are only cast to `dtype`.
Imports jax.numpy only: no TensorFlow.
"""
from typing import Sequence

import jax.numpy as jnp
import numpy as np

PIXEL_DTYPE = np.uint8
PIXEL_MAX = 255.0


def normalize(inputs, mean: Sequence[float], std: Sequence[float], dtype=jnp.float32):
  """uint8 pixels [..., 3] -> `dtype` `(pixels / 255 - mean) / std`; float inputs: cast only.

  Computed in float32 (one multiply-add per value: pixels * a + b with a = 1 / (255 std),
  b = -mean / std), then cast to `dtype`.
  """
  if not jnp.issubdtype(inputs.dtype, jnp.integer):
    return inputs.astype(dtype)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  # numpy constants: part of the compiled program, nothing moved to the device per call.
  scale = (1.0 / (PIXEL_MAX * std)).astype(np.float32)
  shift = (-mean / std).astype(np.float32)
  return (inputs.astype(jnp.float32) * scale + shift).astype(dtype)


def normalize_np(inputs, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """`normalize` on the host in numpy float64 (tests, figures): the same formula."""
  x = np.asarray(inputs)
  if not np.issubdtype(x.dtype, np.integer):
    return x.astype(np.float64)
  return (x / PIXEL_MAX - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)


def to_unit(inputs, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """A batch's inputs as displayable [0, 1] floats: uint8 pixels / 255, or normalised floats
  mapped back with mean / std (figures)."""
  x = np.asarray(inputs)
  if np.issubdtype(x.dtype, np.integer):
    return x.astype(np.float32) / PIXEL_MAX
  return np.clip(x * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
