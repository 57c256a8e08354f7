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


def training_config(**overrides):
  """Trainer fields shared by every config (trainer.py reads them); `overrides` replace defaults."""
  fields = dict(
      seed=0,
      batch_size=512,  # global, over all processes
      eval_batch_size=512,
      num_train_steps=config_dict.placeholder(int),  # None: from num_epochs and the dataset size
      num_epochs=config_dict.placeholder(float),
      optimizer='momentum',  # 'adamw' | 'adam' | 'momentum' | 'sgd'
      momentum=0.9,
      learning_rate=0.01,
      lr_schedule='cosine',  # 'cosine' | 'linear' decay after linear warmup
      warmup_steps=500,
      weight_decay=0.0,
      grad_clip_norm=1.0,
      label_smoothing=0.0,
      mixup_alpha=0.0,
      grad_accum_steps=1,
      loss='softmax_xent',
      log_every_steps=100,
      eval_every_steps=1000,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
  )
  fields.update(overrides)
  return fields
