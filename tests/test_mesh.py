"""The device mesh laid out on the interconnect: TPU torus neighbours, slices over DCN.

Fake TPU v4 devices (coordinates on a 4 x 2 x 1 torus per slice, `slice_index` for multi-slice)
are listed in a scrambled order, so that taking them in list order (the layout before mesh_utils)
puts non-neighbours in a 'model' group; the checks read the device order, not only the shape.
"""
import dataclasses
import re

import jax
import numpy as np
import pytest

import trainer
from token_learner import experiment as experiment_lib
from token_learner import fields
from token_learner.train import sharding


@dataclasses.dataclass(frozen=True)
class FakeTpu:
  id: int
  coords: tuple
  slice_index: int = 0
  process_index: int = 0
  core_on_chip: int = 0
  platform: str = 'tpu'
  device_kind: str = 'TPU v4'


def _slice(slice_index, order):
  """The 8 chips (x in 0..3, y in 0..1) of one slice, listed in `order` (a permutation)."""
  chips = [(x, y, 0) for y in range(2) for x in range(4)]
  return [FakeTpu(id=8 * slice_index + i, coords=chips[i], slice_index=slice_index,
                  process_index=2 * slice_index + chips[i][1]) for i in order]


SCRAMBLED = (0, 5, 2, 7, 4, 1, 6, 3)  # x = 0, 1, 2, 3 then 0, 1, 2, 3, alternating y.


def _neighbours(a, b):
  return sum(abs(p - q) for p, q in zip(a.coords, b.coords)) == 1


def _rows_are_rings(grid):
  """Every consecutive pair along 'model' (the axis that talks the most) is one hop apart."""
  return all(_neighbours(row[i], row[i + 1]) for row in grid for i in range(len(row) - 1))


def test_one_slice_puts_model_groups_on_neighbouring_chips():
  devices = _slice(0, SCRAMBLED)
  # In list order, a (2, 4) mesh's 'model' rows would jump between the torus rows.
  assert not _rows_are_rings(np.asarray(devices, dtype=object).reshape(2, 4))
  grid = sharding.device_grid(devices, (2, 4))
  assert grid.shape == (2, 4) and sorted(d.id for d in grid.flat) == list(range(8))
  assert _rows_are_rings(grid)
  # The 'data' pairs (columns) are neighbours too: one hop in y.
  assert all(_neighbours(a, b) for a, b in zip(grid[0], grid[1]))
  assert (sharding.device_grid(devices, (-1, 4)) == grid).all()  # -1 resolves the same way.


def test_slices_split_along_the_dcn_axis_only():
  devices = _slice(1, SCRAMBLED) + _slice(0, SCRAMBLED)  # Slices listed out of order too.
  grid = sharding.device_grid(devices, (4, 4))  # Default dcn (-1, 1): 'data' across slices.
  slice_of = np.vectorize(lambda d: d.slice_index)(grid)
  np.testing.assert_array_equal(slice_of, [[0] * 4] * 2 + [[1] * 4] * 2)
  assert _rows_are_rings(grid)  # Every 'model' group inside one slice, on neighbours.
  # 'model' across slices when asked: columns [0, 4) on slice 0, [4, 8) on slice 1.
  grid = sharding.device_grid(devices, (2, 8), (1, 2))
  np.testing.assert_array_equal(np.vectorize(lambda d: d.slice_index)(grid),
                                [[0] * 4 + [1] * 4] * 2)
  assert _rows_are_rings(grid[:, :4]) and _rows_are_rings(grid[:, 4:])


@pytest.mark.parametrize('mesh_shape, dcn_mesh_shape, message', [
    ((4, 4), (3, -1), 'config.dcn_mesh_shape=(3, -1) (data, model) does not fit the 2 slices'),
    ((1, 16), (2, 1), 'config.dcn_mesh_shape=(2, 1) (data, model) must divide '
     'config.mesh_shape=(1, 16)'),
    ((4, 3), (-1, 1), 'config.mesh_shape=(4, 3) (data, model) does not fit the 16 devices'),
])
def test_bad_shapes_across_slices_name_the_field(mesh_shape, dcn_mesh_shape, message):
  devices = _slice(0, SCRAMBLED) + _slice(1, SCRAMBLED)
  with pytest.raises(ValueError, match=re.escape(message)):
    sharding.device_grid(devices, mesh_shape, dcn_mesh_shape)


def test_cpu_devices_keep_their_order_and_one_slice_refuses_a_dcn_split(tmp_path, tiny_config):
  mesh = sharding.create_mesh(jax.devices()[:8], (2, 4))
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()[:8]]
  config = tiny_config(dcn_mesh_shape=(2, 1))
  with pytest.raises(fields.ConfigError, match=r'config.dcn_mesh_shape=\(2, 1\) .* does not fit '
                     'the 1 slices'):
    trainer.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:8],
                               build=lambda *a, **k: pytest.fail('built'))
  with pytest.raises(ValueError, match=r'config.dcn_mesh_shape=\(0, 1\) must be \(data, model\)'):
    experiment_lib.from_config(tiny_config(dcn_mesh_shape=(0, 1)))
