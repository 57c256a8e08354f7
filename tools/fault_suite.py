r"""The fault suite: main.py as a user runs it, with faults injected on purpose.

    python -m tools.fault_suite            # ~10 min on 2 CPU cores; not part of CI
    python -m tools.fault_suite --only=sigterm,corrupt

(from the repository root: the injected runs import `main` and `trainer` from there).

Every probe runs `python main.py` (the tiny digits job) in subprocesses and checks what a user
relies on: SIGKILLs at random moments (one during a checkpoint write) resume to bit-identical
parameters with every logged step once per tag; SIGTERM saves and exits 75, and the resume is
exact; truncated / deleted / garbled checkpoint files fall back to the previous good checkpoint;
all bad is a clear error; EIO on every checkpoint read stops the run with the checkpoints kept
and it resumes once the fault clears; a checkpoint without metadata is refused as unverifiable;
evaluate.py refuses a garbled checkpoint; a changed config is refused naming the fields; 30
malformed configs exit != 0 with one line naming the field before anything is compiled;
corrupt / empty / unreadable data is named or counted; a NaN stops the run naming the step and
the resume verifies the last good checkpoint; an unwritable workdir / checkpoint folder / full
disk (a small tmpfs, needs root) is a prompt clear error; a killed peer of a 2-process run makes
the other exit within 60 s. Prints a table probe | expectation | result; exits 1 on any failure.
"""
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tools.fault_harness import (ENV, REPO, RESULTS, STEPS, array_files, garble_silently,
                                 truncate, command, events, identical, last_line, params,
                                 quote, record, run, start, steps_in)

def probe_sigkill(root, reference):
  """Three SIGKILLs: when a checkpoint write is under way, and at two random moments."""
  workdir = os.path.join(root, 'killed')
  rng = random.Random(int(time.time()))
  kills = []
  for moment in ('checkpoint write', 'random', 'random'):
    p = start(workdir)
    deadline, target = time.time() + 300, (max(steps_in(workdir) or [0]) + 10)
    while p.poll() is None and time.time() < deadline:
      listing = os.listdir(os.path.join(workdir, 'checkpoints')) if os.path.isdir(
          os.path.join(workdir, 'checkpoints')) else []
      if moment == 'checkpoint write' and any('tmp' in d for d in listing):
        break
      if moment == 'random' and any(s.isdigit() and int(s) >= target for s in listing):
        time.sleep(rng.uniform(0.0, 0.5))
        break
      time.sleep(0.005)
    alive = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    kills.append(f'{moment}, newest complete ckpt {max(steps_in(workdir) or [0])}' if alive
                 else f'{moment}: had finished')
  code, output, _ = run(workdir)
  ok_run = code == 0 and 'Resuming at step' in output
  same = ok_run and identical(params(workdir, STEPS), params(reference, STEPS))
  counts = events(workdir)
  twice = sorted(k for k, v in counts.items() if v > 1)
  logged = sorted(s for (tag, s) in counts if tag == 'train_loss')
  summary = json.load(open(os.path.join(workdir, 'summary.json'))) if ok_run else {}
  record('SIGKILL x3', 'bit-identical params to an uninterrupted run', same,
         'killed at: ' + '; '.join(kills))
  record('SIGKILL x3: metrics', 'each logged step exactly once per tag, none missing',
         ok_run and not twice and logged == list(range(1, STEPS + 1)),
         f'{sum(counts.values())} scalars, duplicates: {twice[:3]}, train_loss steps '
         f'{len(logged)}/{STEPS}')
  record('SIGKILL x3: summary.json', 'train metrics present, wall time of all processes',
         'train_loss' in summary.get('final_metrics', {}) and summary.get('wall_time_s', 0) > 0,
         f"wall_time_s={summary.get('wall_time_s', 0):.1f}")


def probe_sigterm(root, reference):
  workdir = os.path.join(root, 'sigterm')
  p = start(workdir)
  while p.poll() is None and 20 not in steps_in(workdir):
    time.sleep(0.01)
  time.sleep(random.uniform(0.1, 0.6))
  sent = time.time()
  p.send_signal(signal.SIGTERM)
  code = p.wait(timeout=120)
  seconds, saved = time.time() - sent, max(steps_in(workdir) or [0])
  code2, output, _ = run(workdir)
  same = code2 == 0 and identical(params(workdir, STEPS), params(reference, STEPS))
  record('SIGTERM', 'checkpoint of the current step, exit 75, exact resume',
         code == 75 and same and f'Resuming at step {saved}' in output,
         f'exit {code} after {seconds:.1f}s, saved step {saved}, resume bit-identical: {same}')


def probe_corrupt(root, reference):
  faults = {
      'truncated': lambda w: truncate(array_files(w, STEPS)[-1]),
      'deleted': lambda w: os.remove(array_files(w, STEPS)[-1]),
      'garbled (same size, restores silently)': lambda w: garble_silently(w, STEPS),
  }
  for name, fault in faults.items():
    workdir = shutil.copytree(reference, os.path.join(root, 'corrupt-' + name.split()[0]))
    fault(workdir)
    code, output, _ = run(workdir)
    same = code == 0 and identical(params(workdir, STEPS), params(reference, STEPS))
    warned = f'Checkpoint at step {STEPS} is unreadable or corrupt' in output
    record(f'checkpoint file {name}', 'previous good checkpoint, with a warning',
           same and warned, f'exit {code}, warning: {warned}, final params identical: {same}')

  workdir = shutil.copytree(reference, os.path.join(root, 'corrupt-all'))
  for step in steps_in(workdir):
    truncate(array_files(workdir, step)[-1])
  code, output, seconds = run(workdir)
  line = last_line(output, 'None of the checkpoints')
  record('all checkpoints bad', 'clear error, nothing overwritten', code != 0 and bool(line),
         f'exit {code} in {seconds:.0f}s: {quote(line, "None of the checkpoints", 80)}')


def _checkpoint_listing(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def _without_last_step(reference, root, name):
  """A copy of the reference run whose newest checkpoint is gone (a resume trains the last
  checkpoint interval again, to the reference's final parameters)."""
  workdir = shutil.copytree(reference, os.path.join(root, name))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(STEPS)))
  os.remove(os.path.join(workdir, 'summary.json'))
  return workdir


def probe_restore_eio(root, reference):
  """Every checkpoint read fails with EIO (a failing disk): the run stops saying the checkpoint
  is intact and moves nothing; once the fault clears the same command resumes exactly."""
  workdir = _without_last_step(reference, root, 'restore-eio')
  before = _checkpoint_listing(workdir)
  code, output, seconds = run(workdir, inject='eio_restore')
  line = last_line(output, 'CheckpointUnavailableError')
  kept = _checkpoint_listing(workdir) == before
  code2, output2, _ = run(workdir)
  resumed = f'Resuming at step {STEPS - 10}' in output2
  same = code2 == 0 and identical(params(workdir, STEPS), params(reference, STEPS))
  record('EIO on every checkpoint read', 'error saying intact, nothing moved; resumes exactly '
         'once the fault clears', code != 0 and 'intact' in line and kept and resumed and same,
         f'exit {code} in {seconds:.0f}s, checkpoints kept: {kept}, '
         f'{quote(line, "Checkpoint at", 70)}; then resumed: {resumed}, identical: {same}')


def probe_no_metadata(root, reference):
  """The newest checkpoint's _CHECKPOINT_METADATA deleted: unverifiable, so moved aside and the
  previous one is used."""
  workdir = shutil.copytree(reference, os.path.join(root, 'no-metadata'))
  os.remove(os.path.join(workdir, 'checkpoints', str(STEPS), '_CHECKPOINT_METADATA'))
  os.remove(os.path.join(workdir, 'summary.json'))
  code, output, _ = run(workdir)
  warned = f'Checkpoint at step {STEPS} is unverifiable' in output
  aside = any(d.startswith(f'{STEPS}.unverified.') for d in _checkpoint_listing(workdir))
  same = code == 0 and identical(params(workdir, STEPS), params(reference, STEPS))
  record('newest checkpoint without metadata', 'refused as unverifiable, moved aside, previous '
         'one used', warned and aside and same,
         f'exit {code}, warning: {warned}, moved aside: {aside}, final identical: {same}')


def probe_evaluate_garbled(root, reference):
  """evaluate.py on a silently garbled checkpoint: refused, nothing written or moved."""
  workdir = shutil.copytree(reference, os.path.join(root, 'evaluate-garbled'))
  garble_silently(workdir, STEPS)
  before = _checkpoint_listing(workdir)
  start_time = time.time()
  p = subprocess.run([sys.executable, os.path.join(REPO, 'evaluate.py'), f'--workdir={workdir}'],
                     cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  line = last_line(p.stdout + p.stderr, 'CorruptCheckpointError')
  written = [f for f in os.listdir(workdir) if f.startswith('eval_')]
  record('evaluate.py on a garbled checkpoint', 'refused naming the digest, nothing written',
         p.returncode != 0 and 'digest' in line and not written and
         _checkpoint_listing(workdir) == before,
         f'exit {p.returncode} in {time.time() - start_time:.0f}s: '
         f'{quote(line, "differ", 70)}; eval files: {written}')


def probe_config_changed(root, reference):
  workdir = shutil.copytree(reference, os.path.join(root, 'changed'))
  code, output, _ = run(workdir, {'model.tokenlearner.pooling': 'mean', 'weight_decay': 0.5})
  line = last_line(output, 'config error')
  record('config changed on resume', 'exit 2, error naming the fields',
         code == 2 and 'config.model.tokenlearner.pooling' in line and
         'config.weight_decay' in line, f'exit {code}: {quote(line, "with: ", 110)}')


MALFORMED = [
    ('learning_rate', 'inf'), ('learning_rate', 'nan'), ('learning_rate', '-0.1'),
    ('weight_decay', 'inf'), ('momentum', '1.5'), ('label_smoothing', '-1'),
    ('mixup_alpha', 'nan'), ('grad_clip_norm', '-inf'), ('batch_size', '0'),
    ('batch_size', '15'), ('eval_batch_size', '-2'), ('num_train_steps', '0'),
    ('warmup_steps', '-1'), ('warmup_steps', '1000'), ('optimizer', 'adamx'),
    ('lr_schedule', 'step'), ('loss', 'hinge'), ('log_every_steps', '0'),
    ('keep_checkpoints', '0'), ('grad_accum_steps', '3'), ('model.variant', 'X/3'),
    ('model.num_layers', '0'), ('model.dropout_rate', '1.0'), ('model.tokenlearner.loc', '7'),
    ('model.tokenlearner.num_tokens', '100'), ('model.tokenlearner.pooling', 'max'),
    ('dataset.crop_min_area', '1.5'), ('dataset.image_size', '15'),
    ('model.num_classes', '7'), ('init_from.kind', 'torch'),
]


def probe_malformed(root):
  """Each config through main.main, with jax.jit made to fail so the error must come first: all
  in one process (`_inject malformed`, to spare 30 start-ups), and the first 2 also as separate
  `python main.py` runs for the exit status."""
  from concurrent import futures  # pylint: disable=g-import-not-at-top

  def one(i_field_value):
    i, (field, value) = i_field_value
    code, output, _ = run(os.path.join(root, f'malformed{i}'), {field: value}, inject='nojit')
    return code == 2 and last_line(output, 'config error') and 'Traceback' not in output

  with futures.ThreadPoolExecutor(2) as pool:
    separate = list(pool.map(one, enumerate(MALFORMED[:2])))
  args = [command(os.path.join(root, 'malformed'), {f: v})[2:] for f, v in MALFORMED]
  p = subprocess.run([sys.executable, '-m', 'tools.fault_harness', '_inject', 'malformed',
                      json.dumps(args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=600)
  results = [json.loads(l[len('RESULT '):]) for l in p.stdout.splitlines()
             if l.startswith('RESULT ')]
  bad = []
  for (field, value), (code, lines) in zip(MALFORMED, results):
    if not (code == 2 and len(lines) == 1 and f'config.{field}' in lines[0]):
      bad.append(f'{field}={value}: exit {code}: {lines}')
  if len(results) != len(MALFORMED):
    bad.append(p.stderr[-300:])
  example = f'e.g. {MALFORMED[0][0]}={MALFORMED[0][1]}: {results[0][1][0][:80]}' if results else ''
  record(f'{len(MALFORMED)} malformed configs', 'exit 2, one line naming the field, no compile',
         not bad and all(separate), f'{len(results) - len(bad)}/{len(MALFORMED)} ok, '
         f'{sum(separate)}/2 as separate processes; ' + ('; '.join(bad[:2]) or example))


def _image_folder(root, corrupt=None):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for split, n in (('train', 6), ('test', 3)):
    for c, cls in enumerate(('cat', 'dog')):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      for i in range(n):
        Image.fromarray(np.full([16, 16, 3], 40 * c + 10 * i, np.uint8)).save(
            os.path.join(root, split, cls, f'{i}.png'))
  return {'dataset.name': 'image_folder', 'dataset.root': root, 'model.num_classes': 2,
          'num_train_steps': 4, 'eval_batch_size': 4, 'checkpoint_every_steps': 2}


def probe_data(root):
  cases = []
  folder = os.path.join(root, 'data-corrupt')
  cfg = _image_folder(folder)
  bad = os.path.join(folder, 'test', 'dog', '1.png')
  open(bad, 'r+b').truncate(40)
  cases.append(('truncated eval image', cfg, bad, 'before training'))
  folder = os.path.join(root, 'data-empty')
  cfg = _image_folder(folder)
  os.makedirs(os.path.join(folder, 'train', 'emu'))
  cases.append(('empty class folder', cfg, os.path.join(folder, 'train', 'emu'), ''))
  folder = os.path.join(root, 'data-unreadable')
  cfg = _image_folder(folder)
  os.symlink('/nonexistent/x.png', os.path.join(folder, 'test', 'cat', 'x.png'))
  cases.append(('unreadable eval file', cfg, os.path.join(folder, 'test', 'cat', 'x.png'), ''))
  for name, cfg, path, _ in cases:
    code, output, seconds = run(os.path.join(root, 'w-' + name.split()[0]), cfg)
    line = last_line(output, path)
    trained = 'Resuming' in output or os.path.isdir(
        os.path.join(root, 'w-' + name.split()[0], 'checkpoints', '2'))
    record(f'data: {name}', 'error naming the file, before training',
           code != 0 and bool(line) and not trained, f'exit {code} in {seconds:.0f}s: '
           f'{quote(line, os.path.basename(path), 90)}')
  folder = os.path.join(root, 'data-skip')
  cfg = _image_folder(folder)
  for split in ('train', 'test'):
    open(os.path.join(folder, split, 'cat', '0.png'), 'wb').write(b'not a png')
  code, output, _ = run(os.path.join(root, 'w-skip'), dict(cfg, **{'dataset.skip_corrupt': True}))
  record('data: skip_corrupt', 'corrupt images counted and skipped, run completes',
         code == 0 and output.count('Skipped 1 corrupt') >= 2,
         f'exit {code}: {quote(last_line(output, "Skipped"), "Skipped", 60)}')


def probe_nan(root, reference):
  workdir = os.path.join(root, 'nan')
  code, output, _ = run(workdir, inject='nan_from_step_13')
  line = last_line(output, 'FloatingPointError')
  kept = steps_in(workdir)
  code2, output2, _ = run(workdir)
  verified = 'Restored checkpoint at step 10 (verified against its digest)' in output2
  same = code2 == 0 and identical(params(workdir, STEPS), params(reference, STEPS))
  record('NaN at step 13', 'stops naming the step; last good checkpoint verified intact',
         code != 0 and 'at step 13' in line and kept == [10] and verified and same,
         f'exit {code}, checkpoints {kept}, resume verified step 10: {verified}, '
         f'final identical: {same}')


def _mount_tmpfs(path, options):
  os.makedirs(path, exist_ok=True)
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', path],
                        capture_output=True).returncode == 0


def probe_unwritable(root):
  cases = []
  readonly = os.path.join(root, 'ro')
  if _mount_tmpfs(readonly, 'ro,size=1m'):
    cases.append(('read-only workdir', os.path.join(readonly, 'w')))
  blocked = os.path.join(root, 'blocked')
  os.makedirs(blocked)
  open(os.path.join(blocked, 'checkpoints'), 'w').write('a file')
  cases.append(('checkpoints is a file', blocked))
  for name, workdir in cases:
    code, output, seconds = run(workdir, timeout=300)
    line = last_line(output, 'Cannot write')  # The workdir's lock, or its checkpoints folder.
    record(f'{name}', 'prompt clear error before compiling', code != 0 and bool(line)
           and seconds < 60, f'exit {code} in {seconds:.0f}s: {quote(line, "Cannot", 110)}')
  if not cases[0][0].startswith('read-only'):
    record('read-only workdir', 'prompt clear error', False, 'mount failed (needs root)')
  full = os.path.join(root, 'full')
  if not _mount_tmpfs(full, 'size=2400k'):
    record('full disk (tmpfs)', 'prompt clear error', False, 'mount failed (needs root)')
    return
  try:
    code, output, seconds = run(full, {'keep_checkpoints': 10, 'checkpoint_every_steps': 2},
                                timeout=400)
    # The first write to fail names itself: a checkpoint save, or the TensorBoard event file.
    line = last_line(output, 'OSError: Saving') or last_line(output, 'OSError: Writing')
    if not line:  # Which write failed first, for the report (orbax's per-array noise left out).
      errors = [l for l in output.splitlines() if 'rror' in l
                and 'RESOURCE_EXHAUSTED' not in l and 'never retrieved' not in l]
      print('\n'.join(errors[-20:]), flush=True)
    record('full disk (2.4 MB tmpfs)', 'error at the first step after the failed write, '
           'prompt exit', code != 0 and bool(line) and seconds < 120,
           f'exit {code} in {seconds:.0f}s total, saved {steps_in(full)}: '
           f'{quote(line, "OSError", 70)}')
  finally:
    for path in (full, readonly):
      subprocess.run(['umount', '-l', path], capture_output=True)


def _start_peers(root, name, checkpoint_every_steps):
  """Two processes of one long run (1 CPU device each), returned once the first checkpoint
  (step `checkpoint_every_steps`) exists: (workdir, processes)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  workdir = os.path.join(root, name)
  env = dict(ENV, XLA_FLAGS='--xla_force_host_platform_device_count=1 '
                            '--xla_backend_optimization_level=0')
  extra = [f'--coordinator_address=localhost:{port}', '--num_processes=2']
  overrides = {'num_train_steps': 100000, 'checkpoint_every_steps': checkpoint_every_steps}
  logs = [open(os.path.join(root, f'{name}{i}.log'), 'w') for i in range(2)]
  ps = [start(workdir, overrides, logs[i], env, extra + [f'--process_id={i}']) for i in range(2)]
  deadline = time.time() + 300
  while (checkpoint_every_steps not in steps_in(workdir) and time.time() < deadline
         and ps[0].poll() is None):
    time.sleep(0.05)
  return workdir, ps


def probe_dead_peer(root):
  workdir, ps = _start_peers(root, 'peers', 5)
  trained = 5 in steps_in(workdir)  # Both were training (a checkpoint) when one was killed.
  ps[1].send_signal(signal.SIGKILL)
  killed = time.time()
  try:
    code = ps[0].wait(timeout=90)
  except subprocess.TimeoutExpired:
    ps[0].kill()
    code = 'still running'
  seconds = time.time() - killed
  record('2 processes, one SIGKILLed', 'the other exits (non-zero) within 60 s',
         trained and code not in (0, 'still running') and seconds <= 60,
         f'checkpoint before the kill: {trained}; exit {code} after {seconds:.1f}s')


def probe_peer_sigterm(root):
  """SIGTERM to one process of two: both stop at the same step (orbax's preemption sync
  point), save it and exit 75."""
  workdir, ps = _start_peers(root, 'peers-sigterm', 50)
  time.sleep(0.5)
  ps[1].send_signal(signal.SIGTERM)
  codes = []
  for p in ps:
    try:
      codes.append(p.wait(timeout=120))
    except subprocess.TimeoutExpired:
      p.kill()
      codes.append('hung')
  saved = steps_in(workdir)
  record('2 processes, SIGTERM to one', 'both save the same step, exit 75',
         codes == [75, 75] and saved and saved[-1] % 50 != 0,
         f'exits {codes}, checkpoints {saved}')


def main():
  os.environ.update(ENV)
  only = next((a.split('=', 1)[1].split(',') for a in sys.argv[1:] if a.startswith('--only=')),
              None)
  begin = time.time()
  root = tempfile.mkdtemp(prefix='fault_suite_')
  print(f'workdirs under {root}', flush=True)

  def reference():
    """The uninterrupted run (once)."""
    workdir = os.path.join(root, 'reference')
    if not os.path.exists(os.path.join(workdir, 'summary.json')):
      code, output, seconds = run(workdir)
      if code:
        print(output[-3000:])
        sys.exit('the uninterrupted reference run failed')
      print(f'  (reference run: {seconds:.0f}s)', flush=True)
    return workdir

  probes = collections.OrderedDict([
      ('sigkill', lambda: probe_sigkill(root, reference())),
      ('sigterm', lambda: probe_sigterm(root, reference())),
      ('corrupt', lambda: probe_corrupt(root, reference())),
      ('restore_eio', lambda: probe_restore_eio(root, reference())),
      ('no_metadata', lambda: probe_no_metadata(root, reference())),
      ('evaluate_garbled', lambda: probe_evaluate_garbled(root, reference())),
      ('config', lambda: probe_config_changed(root, reference())),
      ('malformed', lambda: probe_malformed(root)),
      ('data', lambda: probe_data(root)),
      ('nan', lambda: probe_nan(root, reference())),
      ('unwritable', lambda: probe_unwritable(root)),
      ('peers', lambda: probe_dead_peer(root)),
      ('peers_sigterm', lambda: probe_peer_sigterm(root)),
  ])
  for name, probe in probes.items():
    if only and name not in only:
      continue
    t = time.time()
    try:
      probe()
    except Exception as e:  # pylint: disable=broad-except
      record(name, 'probe ran', False, f'{type(e).__name__}: {e}'[:200])
    print(f'  ({name}: {time.time() - t:.0f}s)', flush=True)
  print('\n| probe | expectation | result |\n|---|---|---|')
  for probe, expectation, result, detail in RESULTS:
    print(f'| {probe} | {expectation} | {result}: {detail} |')
  failed = sum(r[2] == 'FAIL' for r in RESULTS)
  print(f'\n{len(RESULTS) - failed}/{len(RESULTS)} passed in {time.time() - begin:.0f}s')
  if not failed:
    shutil.rmtree(root, ignore_errors=True)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
