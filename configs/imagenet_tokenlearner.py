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

ImageNet (`imagenet2012`) must be prepared in the TFDS data_dir beforehand (manual download).
"""
from configs import common


def get_config():
  return common.experiment_config(
      batch_size=512, eval_batch_size=512, num_train_steps=20_000, learning_rate=0.01,
      optimizer='momentum', warmup_steps=500, grad_clip_norm=1.0, log_every_steps=100,
      eval_every_steps=1000, checkpoint_every_steps=1000,
      model=common.model_config(name='vit', variant='B/16', num_classes=1000, num_tokens=8,
                                loc=6, version='v1', fuser=False),
      dataset=common.dataset_config(
          'imagenet2012', train_split='train[:99%]', eval_split='validation', image_size=384,
          crop_min_area=0.05, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), augment=True,
          shuffle_buffer=250_000, skip_corrupt=False))
