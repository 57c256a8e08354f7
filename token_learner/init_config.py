"""`config.init_from`: where a run's initial weights come from, as a light dataclass.

The loader is `token_learner.pretrained.init_from` (which re-exports `InitConfig`); this module
imports nothing beyond `token_learner.fields`, so configs and `token_learner.experiment` can name
the section without loading the checkpoint code.
"""
import dataclasses

from token_learner import fields

KINDS = ('vit_npz', 'checkpoint', 'hf_vit', 'timm_vit')  # hf_vit / timm_vit: .safetensors
INFLATIONS = ('central_frame', 'average')


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """`config.init_from`: where the initial weights come from ('' = a fresh initialisation)."""
  # a .npz (vit_jax / big_vision / save_npz), a workdir / checkpoint folder, or (hf_vit,
  # timm_vit) a .safetensors file or a folder with model.safetensors
  path: str = ''
  kind: str = fields.field('vit_npz', choices=KINDS)
  inflation: str = fields.field('central_frame', choices=INFLATIONS)  # image -> video kernel
  load_head: bool = False  # False: the head is re-created for the new task

  def __post_init__(self):
    fields.validate(self, 'config.init_from')
