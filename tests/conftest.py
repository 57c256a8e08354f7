"""Test setup: JAX on CPU with 8 simulated devices (set before jax is imported)."""
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  flags = (flags + " --xla_force_host_platform_device_count=8").strip()
# Compile fast: XLA's backend optimisations cost most of the suite's time and change no result
# beyond float rounding, which the value tests' tolerances cover.
if "xla_backend_optimization_level" not in flags:
  flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests import the repository's top-level modules (trainer, configs) from its root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Trainer tests compile the same few programs again and again: cache them for the session.
jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='jax_cache_'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
