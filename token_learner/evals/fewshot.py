"""Few-shot linear evaluation (the ViT protocol the paper uses in §3.3 / Fig. 4, Appendix C).

Frozen pre-logit features (`aux['pre_logits']`) of `shots` examples per class of a train split
are regressed, in closed form, onto {-1, 1}^K targets with an L2 penalty:

    W = argmin ||[X 1] W - Y||^2 + l2_reg ||W||^2 = ([X 1]^T [X 1] + l2_reg I)^-1 [X 1]^T Y

(the bias is penalised too, as in the ViT code's closed-form solve); a test example's class is the
argmax of [x 1] W. Accuracy on the eval split is averaged over `seeds` draws of the shots. The
features of both splits are computed once per evaluation; the solves run on the host (numpy).
An evaluator of kind 'fewshot' in `config.evals` runs it during training and in `evaluate.py`
(token_learner.evals.config.FewShotEval). The shots and the test examples come from two splits of
the evaluator's (image) dataset, through the same data layer and eval preprocessing.
"""
from typing import Dict, Sequence, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np

from token_learner import data
from token_learner import fields
from token_learner.data.normalize import normalize
from token_learner.train import sharding


def solve(features: np.ndarray, labels: np.ndarray, num_classes: int, l2_reg: float):
  """Closed-form ridge regression onto {-1, 1}^K targets; returns W `[D + 1, K]` (bias last)."""
  x = np.concatenate([features, np.ones((len(features), 1))], axis=1).astype(np.float64)
  y = 2.0 * np.eye(num_classes)[labels] - 1.0
  return np.linalg.solve(x.T @ x + l2_reg * np.eye(x.shape[1]), x.T @ y)


def predict(w: np.ndarray, features: np.ndarray) -> np.ndarray:
  x = np.concatenate([features, np.ones((len(features), 1))], axis=1)
  return np.argmax(x @ w, axis=1)


def sample_shots(labels: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
  """Indices of `shots` examples of every class present (fewer if a class has fewer)."""
  picks = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
  return np.concatenate(picks)


def few_shot_accuracy(train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                      num_classes: int, shots: Sequence[int], seeds: int,
                      l2_reg: float) -> Dict[str, float]:
  """{'<k>shot': mean test accuracy over `seeds` draws of k shots per class} for k in `shots`."""
  (x_train, y_train), (x_test, y_test) = train, test
  out = {}
  for k in shots:
    accuracies = []
    for seed in range(seeds):
      idx = sample_shots(y_train, k, np.random.default_rng([seed, k]))
      w = solve(x_train[idx], y_train[idx], num_classes, l2_reg)
      accuracies.append(float(np.mean(predict(w, x_test) == y_test)))
    out[f'{k}shot'] = float(np.mean(accuracies))
  return out


def compile_features(model, params_shardings, batch_sharding, *, mean, std):
  """`(params, inputs [B, ...]) -> pre-logit features [B, D]`, jitted with the run's shardings;
  uint8 inputs are normalised first with `mean` / `std` (token_learner.data.normalize)."""
  mean, std = tuple(mean), tuple(std)
  features = lambda p, x: model.apply({'params': p}, normalize(x, mean, std),
                                      train=False)[1]['pre_logits']
  return jax.jit(features,
                 in_shardings=(params_shardings, batch_sharding), out_shardings=batch_sharding)


class FewShotEvaluator:
  """`config.evals.<name>` of kind 'fewshot' on a run: the features of two splits of a dataset
  from the data layer (inputs built once), then `few_shot_accuracy`.

  `__call__(params)` extracts the features of both splits with the run's model (jitted with its
  parameter shardings, inputs sharded over the mesh) and returns ({'<k>shot': accuracy}, {}).
  """

  def __init__(self, name: str, cfg, run, data_cfg, info):
    if data_cfg.is_video:
      raise ValueError(f'config.evals.{name} (kind fewshot) works on image datasets (digits, '
                       f'image_folder, TFDS); its dataset {data_cfg.name!r} is a video dataset')
    self.name, self.every_steps = name, cfg.every_steps
    split_cfg = lambda split: data.from_dict(
        {**fields.section_dict(data_cfg), 'eval_split': split}, num_classes=data_cfg.num_classes)
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    self._cfg, self._num_classes = cfg, info.num_classes
    self._sharding = sharding.batch_sharding(run.mesh)
    self._features_fn = compile_features(run.model, run.state_shardings.params, self._sharding,
                                         mean=data_cfg.mean, std=data_cfg.std)
    self._inputs = [data.eval_input(split_cfg(split), batch_size=cfg.batch_size, **process)
                    for split in (cfg.train_split or data_cfg.train_split, data_cfg.eval_split)]

  def _features(self, params, eval_input):
    feats, labels = [], []
    batches = data.Prefetcher(iter(eval_input), self._sharding)
    try:
      for batch in batches:
        f = self._features_fn(params, batch['inputs'])
        f, y, mask = multihost_utils.process_allgather(
            (f, batch['labels'], batch['mask']), tiled=True)
        keep = np.asarray(mask) > 0
        feats.append(np.asarray(f, np.float64)[keep])
        labels.append(np.asarray(y)[keep])
    finally:
      batches.close()
    return np.concatenate(feats), np.concatenate(labels)

  def __call__(self, params):
    train, test = (self._features(params, i) for i in self._inputs)
    return few_shot_accuracy(train, test, self._num_classes, self._cfg.shots, self._cfg.seeds,
                             self._cfg.l2_reg), {}
