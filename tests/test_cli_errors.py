"""Command-line errors: one line naming the flag / field, exit status 2, before any compilation."""
import os
import sys

from absl import flags
from ml_collections import config_flags
import pytest

import processes
from configs import digits_tokenlearner
from token_learner import experiment
from token_learner import fields
from token_learner import flag_parsing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '--config=configs/digits_tokenlearner.py'


def _parse(argv):
  """parse_flags on a fresh FlagValues holding a locked config flag, as main.py defines it."""
  values = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'w', flag_values=values)
  config_flags.DEFINE_config_file('config', None, 'c', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    flag_parsing.parse_flags(argv, values)
  finally:
    os.chdir(cwd)
  return values


@pytest.mark.parametrize('arg, named', [
    ('--config.modle.num_layers=2', "--config.modle.num_layers: 'modle' is not a config field"),
    ('--config.sed=3', "--config.sed: 'sed' is not a config field (Did you mean \"seed\""),
    ('--config.model.tokenlearner.num_tokns=3',
     "--config.model.tokenlearner.num_tokns: 'num_tokns' is not a config field"),
    ('--config.seed=abc', 'flag --config.seed=abc: invalid literal'),
    ('--config.seed=2**63', 'flag --config.seed=2**63'),
    ('--worcdir=/tmp', "Unknown command line flag 'worcdir'"),
])
def test_bad_flag_is_one_line_and_exit_2(arg, named, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _parse(['main.py', CONFIG, '--workdir=/tmp/x', arg])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('main.py: flag error: '), err
  assert named in err, err


def test_good_flags_parse():
  values = _parse(['main.py', CONFIG, '--workdir=/tmp/x', '--config.seed=7',
                   '--config.model.tokenlearner.num_tokens=4'])
  assert values.config.seed == 7 and values.config.model.tokenlearner.num_tokens == 4


def test_main_py_misspelt_key_exits_2_without_traceback(tmp_path, subprocess_env):
  workdir = tmp_path / 'run'
  out = processes.run([sys.executable, 'main.py', CONFIG, f'--workdir={workdir}',
                       '--config.modle.num_layers=2'], REPO, subprocess_env(), timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("main.py: flag error: --config.modle.num_layers: 'modle'"), lines
  assert 'Traceback' not in out.stderr
  assert not workdir.exists()  # Nothing ran.


@pytest.mark.parametrize('key, value, message', [
    ('seed', 2**63, 'config.seed=9223372036854775808 must be an integer in [0, 4294967295]'),
    ('seed', 2**32, 'config.seed=4294967296 must be an integer in [0, 4294967295]'),
    ('num_train_steps', 2**63,
     'config.num_train_steps=9223372036854775808 must be an integer in [1, 9223372036854775807]'),
])
def test_integer_fields_beyond_their_range_name_the_field(key, value, message):
  config = digits_tokenlearner.get_config()
  config[key] = value
  with pytest.raises(ValueError) as error:
    experiment.from_config(config)
  assert str(error.value) == message


def test_integers_within_int64_pass():
  assert fields.check_int('x', 2**63 - 1) == 2**63 - 1
  assert fields.check_int('x', -2**63, minimum=-2**70) == -2**63
  with pytest.raises(ValueError, match=r'x=-9223372036854775809 must be an integer in'):
    fields.check_int('x', -2**63 - 1, minimum=-2**70, maximum=0)
  config = digits_tokenlearner.get_config()
  config.seed = 2**32 - 1
  assert experiment.from_config(config).train.seed == 2**32 - 1
