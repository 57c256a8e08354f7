"""Pieces shared by the config files: the model section every config carries.

`model_config(...)` returns the `config.model` ConfigDict; its field names are the project's public
interface (command-line overrides, sweeps). Fields whose default comes from elsewhere (the variant's
depth) are typed placeholders, so `--config.model.num_layers=21` works from the command line.
"""
import ml_collections
from ml_collections import config_dict


def model_config(name='vit', variant='B/16', num_classes=1000, num_tokens=8, loc=6,
                 version='v1', fuser=False, classifier='gap', tubelet_size=2):
  """Returns a `config.model` section.

  Args:
    name: 'vit' (images, [B, H, W, 3]) or 'vivit' (video, [B, T, H, W, 3]).
    variant: ViT size/patch, e.g. 'B/16' (token_learner.model_config.VARIANTS).
    num_classes: size of the classification head.
    num_tokens: S, tokens per frame learned by the TokenLearner; 0 = no TokenLearner.
    loc: the TokenLearner runs before encoder layer `loc` ("16-TL at 12" -> loc=12).
    version: 'v1' (conv alpha, sigmoid; §2.1, §3.1) or 'v1.1' (MLP alpha, softmax over space).
    fuser: False = Fig. 3(a); True = Fig. 3(b), TokenLearner -> block -> TokenFuser per layer.
    classifier: 'gap' or 'token' (CLS; plain ViT / ViViT only).
    tubelet_size: temporal extent t of a ViViT tubelet (t x p x p, p from the variant).
  """
  return ml_collections.ConfigDict(dict(
      name=name,
      variant=variant,
      num_layers=config_dict.placeholder(int),  # None: the variant's depth.
      num_classes=num_classes,
      classifier=classifier,
      representation_size=config_dict.placeholder(int),  # pre-logits width; None: no pre-logits.
      head_bias_init=0.0,
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
      stochastic_depth=0.0,  # drop-path rate of the last layer, linear in depth from 0.
      tubelet_size=tubelet_size,
      dtype='float32',  # compute dtype ('bfloat16' for mixed precision); params stay float32.
      # Baseline of §3.5.2 / Table 6: k x k average pooling of the token grid before given layers,
      # as (layer, k) pairs, e.g. ((9, 2), (18, 2)). Not combinable with a TokenLearner.
      spatial_pooling=(),
      tokenlearner=ml_collections.ConfigDict(dict(
          num_tokens=num_tokens,
          loc=loc,
          version=version,
          fuser=fuser,
          # What maps tokens back to the grid when fuser=True (§3.5.3, Fig. 7):
          # 'tokenfuser' (Eq. 2), 'unpool' (the TokenLearner's own maps), 'reprojection'.
          fuser_type='tokenfuser',
          fuser_mixing='global',  # token mixing R^{ST}->R^{ST}; 'per_frame': S x S per frame.
          fuser_mlp_dim=64,  # hidden width of the fuser's beta MLP (Eq. 2).
          pooling='sum',  # rho of Eq. 1 for the tokens: 'sum' or 'mean' over positions.
          bottleneck_dim=64,  # v1.1 alpha MLP hidden width.
          dropout_rate=0.0,  # v1.1 alpha MLP and fuser dropout.
      )),
  ))


# Trainer fields a config may leave out, with their defaults: the one table of them (trainer.py
# fills omitted fields from it; `training_config` starts from it).
TRAINER_DEFAULTS = dict(
    num_train_steps=None,  # None: from num_epochs and the dataset size
    num_epochs=None,
    optimizer='adamw',  # 'adamw' | 'adam' | 'momentum' | 'sgd'
    momentum=0.9,
    learning_rate=1e-3,
    lr_schedule='cosine',  # 'cosine' | 'linear' decay after linear warmup
    warmup_steps=0,
    weight_decay=0.0,
    grad_clip_norm=0.0,  # 0: no clipping
    label_smoothing=0.0,
    mixup_alpha=0.0,  # 0: no mixup
    grad_accum_steps=1,
    loss='softmax_xent',  # 'softmax_xent' | 'sigmoid_xent' (multi-label, mAP)
    eval_average='logits',  # multi-view video evaluation: average 'logits' or 'probs'
    log_every_steps=50,
    eval_every_steps=0,  # 0: only at the end
    checkpoint_every_steps=0,  # 0: only at the end
    keep_checkpoints=3,
    profile_steps=0,
    sharding_rules=(),  # (regex on the parameter path, PartitionSpec as a tuple) pairs
)


def training_config(**overrides):
  """The trainer's fields for a config file: TRAINER_DEFAULTS with `overrides` applied."""
  fields = dict(seed=0, batch_size=512, eval_batch_size=512, **TRAINER_DEFAULTS)
  fields.update(overrides)
  # Typed placeholders, so `--config.num_train_steps=...` works from the command line.
  for name, kind in (('num_train_steps', int), ('num_epochs', float)):
    if fields[name] is None:
      fields[name] = config_dict.placeholder(kind)
  return fields
