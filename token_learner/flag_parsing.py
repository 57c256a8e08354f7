"""Command-line parsing of the entry points: a bad flag is one line and exit status 2.

absl's parser exits 1 with a two-line message for a bad flag, and a misspelt config override
(`--config.modle.num_layers=2` on a locked config) escapes it as a KeyError / AttributeError
traceback raised inside ml_collections. `parse_flags` is the `flags_parser` of `app.run` in
main.py and sweep.py: every such error becomes `PROG: flag error: ...` naming the flag (and the
unknown config key), exit status 2, before anything is imported or compiled for the run.
"""
import os
import sys
from typing import List, Optional, Sequence

from absl import flags

USAGE_EXIT_CODE = 2


def unknown_key_message(error: BaseException, argv: Sequence[str]) -> Optional[str]:
  """`--config.a.b: 'b' is not a config field (Did you mean ...)` from a locked ConfigDict's
  KeyError (or the AttributeError wrapping it); None when no `--config.` flag names that key
  (then the error is not a misspelt override)."""
  inner = error.args[0] if isinstance(error, AttributeError) and error.args else error
  if not isinstance(inner, KeyError) or not inner.args:
    return None
  key, *hint = str(inner.args[0]).split('\n')
  key = key.strip('\'"')
  flag = next((a.split('=', 1)[0] for a in argv
               if a.startswith('--config.') and key in a.split('=', 1)[0].split('.')[1:]), None)
  if flag is None:
    return None
  hint = ' '.join(h.strip() for h in hint if h.strip())
  return f'{flag}: {key!r} is not a config field' + (f' ({hint})' if hint else '')


def parse_flags(argv: List[str], flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """`flag_values(argv)`; a bad flag or config override prints one line and exits 2."""
  prog = os.path.basename(argv[0]) if argv else 'main.py'
  try:
    return flag_values(argv)
  except flags.Error as e:
    message = str(e)
    prefix, _, rest = message.partition(': ')
    if prefix.startswith('flag --') and rest.startswith('--'):
      message = rest  # A validator's message that names the flag itself.
  except (KeyError, AttributeError) as e:  # ml_collections: a key a locked config lacks.
    message = unknown_key_message(e, argv)
    if message is None:
      raise
  sys.stderr.write(f'{prog}: flag error: {" ".join(message.split())}\n')
  sys.exit(USAGE_EXIT_CODE)
