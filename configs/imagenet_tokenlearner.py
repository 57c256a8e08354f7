r"""ImageNet fine-tuning of ViT + TokenLearner (§3.1, §3.4; Tables 1, 2, 4, 5).

Default: B/16 with 8 TokenLearner tokens before layer 6 (Fig. 3(a)), fine-tuned at 384x384 with the
ViT paper's settings (SGD momentum 0.9, batch 512, cosine decay, 500 warmup steps, gradient
clipping at global norm 1, no weight decay, 20k steps). Every model of the paper's image tables is
one override away (tools/paper_table.py lists them), e.g. Table 2's "L/16 24+11, 16-TL at 12":

  python main.py --config=configs/imagenet_tokenlearner.py --workdir=/tmp/tl_in1k \
    --config.model.variant=L/16 --config.model.num_layers=35 \
    --config.model.tokenlearner.num_tokens=16 --config.model.tokenlearner.loc=12 \
    --config.dataset.image_size=512

  python -m token_learner.flops --config=configs/imagenet_tokenlearner.py   # GFLOPs, params

Fine-tuning at 384 (default) or 512 (`--config.dataset.image_size=512`) starts from
(a) this project's ImageNet-21k pretraining (configs/imagenet21k_tokenlearner.py, same model):

  python main.py --config=configs/imagenet_tokenlearner.py --workdir=/tmp/tl_ft_own \
    --config.init_from.path=/tmp/tl_i21k --config.init_from.kind=checkpoint

(b) a public ViT `.npz` (vit_jax layout, e.g. gs://vit_models/imagenet21k/ViT-B_16.npz or
ViT-L_16.npz, or the AugReg files such as gs://vit_models/augreg/
B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz; a big_vision `.npz` export of a
'tok' or 'gap' ViT reads the same way). These have a CLS token: with classifier=token it is
carried through the blocks before the TokenLearner, so they start exactly as in the source; the
TokenLearner and the head start fresh, the position embedding is resampled to the new grid as
vit_jax / big_vision do:

  python main.py --config=configs/imagenet_tokenlearner.py --workdir=/tmp/tl_ft_vit \
    --config.init_from.path=/data/vit_models/ViT-B_16.npz --config.init_from.kind=vit_npz \
    --config.model.classifier=token --config.dataset.image_size=384

ImageNet (`imagenet2012`) must be prepared in the TFDS data_dir beforehand (manual download).
With `--config.dataset.eval_name=imagenet2012_real` (TFDS, its 'validation' split) the eval also
reports ReaL accuracy (`eval_real_accuracy`, §3.2); or add it as a second evaluator beside the
plain validation one: `config.evals.real = common.eval_config(every_steps=1000,
dataset={'eval_name': 'imagenet2012_real'})` (`real_accuracy`, `real_real_accuracy`).

Eval resize: the data layer's ImageNet eval view (token_learner/data/images.py) resizes the short
side to 384 / 0.875 and centre-crops 384; vit_jax resizes the whole image to 384x384 (no crop, the
aspect ratio not kept), which the data layer does not offer, so accuracies can differ slightly.
"""
from configs import common


def get_config():
  return common.experiment_config(
      batch_size=512, eval_batch_size=512, num_train_steps=20_000, learning_rate=0.01,
      optimizer='momentum', warmup_steps=500, grad_clip_norm=1.0, log_every_steps=100,
      evals={'eval': common.eval_config(every_steps=1000)}, checkpoint_every_steps=1000,
      # Mixed precision (the precision policy, token_learner/model_config.py): bfloat16 activations,
      # float32 parameters, optimizer state, logits and losses. The paper does not state its
      # precision; bfloat16 is how ViT / ViViT models are trained on TPUs (and GPUs).
      model=common.model_config(name='vit', variant='B/16', num_classes=1000, num_tokens=8,
                                loc=6, version='v1', fuser=False, dtype='bfloat16'),
      dataset=common.dataset_config(
          'imagenet2012', train_split='train[:99%]', eval_split='validation', image_size=384,
          crop_min_area=0.05, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), augment=True,
          shuffle_buffer=250_000, skip_corrupt=False))
