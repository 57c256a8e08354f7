"""Training, one concern a module, in layers:

- `config` (TrainConfig), `losses`, `optim`, `sharding`, `step` (the jitted train step) and
  `setup` (the run builder): jax, flax and optax only.
- `metrics` (clu eval metrics), `checkpoints` (orbax), `logger` (clu writers), `throughput`,
  `preemption` and `loop` (`train_and_evaluate`), which also needs the input layer.
"""
