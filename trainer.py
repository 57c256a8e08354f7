"""Training and evaluation of the image / video classifiers: `train_and_evaluate(config, workdir)`.

The loop lives in the library (`token_learner.train.loop`), the train step in
`token_learner.train.step`, the run builder in `token_learner.train.setup` and the evaluators in
`token_learner.evals`; this module keeps the names a script or notebook imports from here.
"""
from token_learner.evals.classification import eval_step, evaluate
from token_learner.train.loop import train_and_evaluate
from token_learner.train.step import TrainState, train_step

__all__ = ['TrainState', 'eval_step', 'evaluate', 'train_and_evaluate', 'train_step']
