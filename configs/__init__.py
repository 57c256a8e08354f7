"""Experiment configurations: one `get_config()` file per model family / dataset."""
