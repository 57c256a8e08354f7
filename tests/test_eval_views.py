"""The multi-view merge of eval predictions, end to end through `evals.classification`: the run's
compiled eval step and `evaluate` over padded batches, against numpy float64.

What the code does (and this file pins): a video's V views (clips x crops) go through the model
as separate examples; their predictions are merged per video before any metric:
`config.eval_average='logits'` ranks classes by the mean of the V logits, 'probs' by the mean
of the V softmax probabilities (sigmoid for multi-label losses). The eval loss is the
cross-entropy of the mean logits either way (no label smoothing). Padding rows (mask 0) count in
no metric and not in num_examples.

The model is a stand-in whose logits are its inputs, so the logits of every view are chosen
here: cases where the mean of the views, one view, a vote or the mean probabilities rank
differently make a wrong merge visible.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from token_learner.evals import classification
from token_learner.train import sharding
from token_learner.train.config import TrainConfig

N, V, K = 16, 3, 5  # videos (2 batches of 8, the last 3 rows padding), views, classes
NUM_REAL = 13


class _LogitsAreInputs:
  """A 'model' whose logits are its (float, hence un-normalised) inputs times params['scale']."""

  def apply(self, variables, x, train):
    assert not train
    return x * variables['params']['scale'], {}


def _np_log_softmax(z):
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


@pytest.fixture(scope='module')
def case():
  """Per-view logits [N, V, K] and labels with mean-of-logits, first-view, majority-vote and
  mean-of-probabilities predictions that disagree on some videos."""
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((N, V, K)) * np.array([1.0, 1.0, 6.0])[None, :, None]
  # Video 0: one very confident view outvotes two mild ones under 'logits' but not 'probs'.
  logits[0] = [[2.0, 0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0, 0.0], [-3.0, 5.0, 0.0, 0.0, 0.0]]
  mean_pred = logits.mean(1).argmax(-1)
  labels = mean_pred.copy()
  labels[::3] = rng.integers(0, K, size=len(labels[::3]))  # some wrong, some right by chance
  labels[0] = 0
  mask = (np.arange(N) < NUM_REAL).astype(np.float32)
  # Padding rows: zero labels, and logits that would be right (class 0) if they were counted.
  logits[NUM_REAL:] = 0.0
  logits[NUM_REAL:, :, 0] = 10.0
  labels[NUM_REAL:] = 0
  return logits.astype(np.float32), labels.astype(np.int32), mask


def _evaluate(case, **cfg_kw):
  logits, labels, mask = case
  mesh = sharding.create_mesh(jax.devices()[:8])
  cfg = TrainConfig(num_train_steps=1, num_classes=K, **cfg_kw)
  params = {'scale': jnp.ones((), jnp.float32)}
  step = classification.compile_eval_step(
      _LogitsAreInputs(), cfg, mesh, {'scale': sharding.replicated(mesh)}, multi_view=True,
      mean=(0.5,) * 3, std=(0.5,) * 3)
  batches = [{'inputs': logits[i:i + 8], 'labels': labels[i:i + 8], 'mask': mask[i:i + 8]}
             for i in (0, 8)]
  return classification.evaluate(step, jax.device_put(params, sharding.replicated(mesh)),
                                 batches, mesh)


def _np_metrics(case, how):
  logits, labels, mask = (np.asarray(a, np.float64) for a in case)
  labels, keep = labels.astype(int)[mask > 0], mask > 0
  logits = logits[keep]
  mean_logits = logits.mean(1)
  if how == 'logits':
    scores = mean_logits
  else:
    scores = np.exp(_np_log_softmax(logits)).mean(1)
  accuracy = np.mean(scores.argmax(-1) == labels)
  loss = -np.mean(_np_log_softmax(mean_logits)[np.arange(len(labels)), labels])
  top5 = np.mean([l in np.argsort(-s)[:5] for s, l in zip(scores, labels)])
  return accuracy, loss, top5


def test_views_are_averaged_before_the_metric(case):
  logits, labels, mask = case
  keep = mask > 0
  result = _evaluate(case, eval_average='logits')
  accuracy, loss, top5 = _np_metrics(case, 'logits')
  assert result['num_examples'] == NUM_REAL  # padding not counted
  assert result['accuracy'] == pytest.approx(accuracy, abs=1e-6)
  assert result['loss'] == pytest.approx(loss, rel=1e-5)
  assert result['top5_accuracy'] == pytest.approx(top5, abs=1e-6)
  # The case tells the merges apart: one view, a vote over views, the mean over all views
  # (padding included) or every view as its own example would each give another accuracy.
  y = labels[keep]
  first_view = np.mean(logits[keep, 0].argmax(-1) == y)
  votes = [np.bincount(v.argmax(-1), minlength=K).argmax() for v in logits[keep]]
  per_view = np.mean(logits[keep].argmax(-1) == y[:, None])
  with_padding = np.mean(logits.mean(1).argmax(-1) == labels)
  for wrong in (first_view, np.mean(np.array(votes) == y), per_view, with_padding):
    assert abs(wrong - accuracy) > 1 / NUM_REAL / 2


def test_probs_average_ranks_by_mean_probabilities(case):
  result = _evaluate(case, eval_average='probs')
  accuracy, loss, _ = _np_metrics(case, 'probs')
  logit_accuracy, _, _ = _np_metrics(case, 'logits')
  assert accuracy != logit_accuracy  # video 0 flips between the two merges
  assert result['accuracy'] == pytest.approx(accuracy, abs=1e-6)
  assert result['loss'] == pytest.approx(loss, rel=1e-5)  # the loss: mean logits either way
  assert result['num_examples'] == NUM_REAL
