"""Default XLA flags for GPU training, set before JAX initialises its backend.

    from token_learner.train import xla_flags
    xla_flags.apply_defaults(os.environ)  # before the first device query (main.py does this)

XLA reads `XLA_FLAGS` once, when the backend initialises (the first `jax.devices()`, array or
compilation), not when jax is imported, so setting it after `import jax` and before any of those
takes effect (tests/test_xla_flags.py checks this in a fresh interpreter).

The flags (`GPU_FLAGS`) are those the GPU anchors for data-parallel ViT training set:

- `--xla_gpu_enable_latency_hiding_scheduler=true`: schedule collectives (the data-parallel
  gradient all-reduce, FSDP's all-gathers / reduce-scatters) to overlap with compute. NVIDIA
  bakes it into its JAX containers ("Environment Variables", docs.nvidia.com/jax-toolbox) and the
  JAX docs' "GPU performance tips" recommend it.
- `--xla_gpu_all_reduce_combine_threshold_bytes=136314880` (130 MiB): combine the per-parameter
  gradient all-reduces into a few large ones; the value of NVIDIA JAX-Toolbox's ViT recipe
  (rosetta/rosetta/projects/vit/scripts/singleprocess_pretrain.sh and multiprocess_pretrain.sh).

Not taken: `--xla_gpu_enable_triton_gemm=false` (JAX-Toolbox sets it for its T5X / PAXML LLM
scripts, not for ViT) and the pipelined / double-buffered collective flags (FSDP over many nodes,
MaxText's multi-node recipes); they stay the user's choice.

Policy: a user-set `XLA_FLAGS` wins entirely, even an empty one (`XLA_FLAGS= python main.py`
runs with XLA's own defaults); the defaults are added only when `XLA_FLAGS` is unset and the
platform will be a GPU.

Whether the platform will be a GPU is decided without initialising a backend:
`JAX_PLATFORMS` (or the older `JAX_PLATFORM_NAME`) when set: a GPU when its first platform is
'cuda' or 'gpu'. Unset: a GPU when a CUDA plugin of jax is installed (`jax_cuda12_plugin`,
`jax_cuda13_plugin` or their PJRT packages `jax_plugins.xla_cuda12` / `xla_cuda13`) and no TPU
runtime (`libtpu`, which JAX would prefer). An installed plugin on a machine without a usable GPU
makes JAX fall back to CPU, which ignores these flags.
"""
import importlib.util
from typing import Callable, MutableMapping, Optional, Tuple

GPU_FLAGS: Tuple[str, ...] = (
    '--xla_gpu_enable_latency_hiding_scheduler=true',
    '--xla_gpu_all_reduce_combine_threshold_bytes=136314880',
)
CUDA_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_plugins.xla_cuda12',
                'jax_plugins.xla_cuda13')
TPU_RUNTIMES = ('libtpu',)
_GPU_PLATFORMS = ('cuda', 'gpu')


def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):  # A parent package that is missing or not a package.
    return False


def will_use_gpu(environ: MutableMapping[str, str],
                 installed: Callable[[str], bool] = _installed) -> bool:
  """Whether JAX will pick a GPU backend in an environment `environ` (see the module docstring);
  `installed(module_name)` says whether a module can be imported (a test simulates it)."""
  platforms = environ.get('JAX_PLATFORMS') or environ.get('JAX_PLATFORM_NAME')
  if platforms:
    return platforms.split(',')[0].strip().lower() in _GPU_PLATFORMS
  if any(installed(name) for name in TPU_RUNTIMES):
    return False
  return any(installed(name) for name in CUDA_PLUGINS)


def gpu_flags() -> str:
  """The default GPU flags as one XLA_FLAGS string."""
  return ' '.join(GPU_FLAGS)


def apply_defaults(environ: MutableMapping[str, str],
                   installed: Callable[[str], bool] = _installed) -> Optional[str]:
  """Sets `environ['XLA_FLAGS']` to `gpu_flags()` when it is unset and the platform will be a
  GPU; returns what it set (None: nothing changed). Call it before JAX initialises a backend."""
  if 'XLA_FLAGS' in environ or not will_use_gpu(environ, installed):
    return None
  environ['XLA_FLAGS'] = gpu_flags()
  return environ['XLA_FLAGS']
