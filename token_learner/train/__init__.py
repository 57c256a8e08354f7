"""What `trainer.py` calls: typed config, losses and metrics, optimizer, sharding, checkpoints,
logging. Each module owns one concern; the loop itself is `trainer.py`."""
