"""The README stays true: its "Use the modules in your own model" program runs as written."""
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = '## Use the modules in your own model'


def _section(text, heading):
  start = text.index(heading + '\n')
  end = text.find('\n## ', start + len(heading))
  return text[start:end if end >= 0 else len(text)]


def _blocks(section):
  """(language, code) of each fenced block."""
  return re.findall(r'^```(\w*)\n(.*?)^```$', section, flags=re.S | re.M)


def _run(tmp_path, code, env, name):
  script = tmp_path / name
  script.write_text(code)
  proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_readme_program_runs(tmp_path, subprocess_env):
  """The section's programs: the linen one, then the Flax NNX one (its own subsection); each
  prints what the README shows after it."""
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    blocks = _blocks(_section(f.read(), HEADING))
  programs = [code for language, code in blocks if language == 'python']
  assert len(programs) == 2, f'expected two python blocks under {HEADING!r}, got {len(programs)}'
  env = dict(subprocess_env(), PYTHONPATH=REPO)  # the repository's package, run from elsewhere
  for i, (program, marker) in enumerate(zip(programs, ('TokenLearner:', 'NNX TokenLearner:'))):
    out = _run(tmp_path, program, env, f'readme_example_{i}.py')
    # The output the README shows is the output the program prints.
    shown = [code for language, code in blocks if language == '' and code.startswith(marker)]
    assert shown and out == shown[0], (out, shown)
