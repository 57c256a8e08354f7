"""Helpers of the tests that start real processes: free loopback ports, multi-process runs."""
import socket
import subprocess
from typing import List, Sequence, Tuple

import pytest


def free_port() -> int:
  """A TCP port free on the loopback interface now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(command: Sequence[str], cwd, env, num_processes: int = 2,
                  timeout: float = 300) -> Tuple[List[int], List[str]]:
  """Runs `command` as processes 0..N-1 of one jax.distributed run on localhost; their return
  codes and outputs (all processes killed and the test failed after `timeout` seconds)."""
  command = list(command) + [f'--coordinator_address=localhost:{free_port()}',
                             f'--num_processes={num_processes}']
  processes = [subprocess.Popen(command + [f'--process_id={i}'], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(num_processes)]
  outputs = []
  for p in processes:
    try:
      outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      pytest.fail(f'{num_processes}-process run timed out after {timeout} s')
  return [p.returncode for p in processes], outputs
