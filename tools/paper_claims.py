r"""The paper's claims at small scale, on the offline datasets: one command, several seeds each.

  python -m tools.paper_claims --out=docs/       # every claim, ~55 min on 2 idle CPU cores
  python -m tools.paper_claims --out=docs/ --only=pooling,fuser --seeds=2 --steps=300

(from the repository root: it imports `trainer`, `configs` and `token_learner` from there).

Each claim is a set of runs of one offline config (digits for images, moving_digits for video)
that differ by a few overrides, trained with `trainer.train_and_evaluate` once per seed into
WORKDIR/<claim>/<run>/seed<k> (a finished run is not trained again: re-running the command only
re-writes the report). Then OUT/paper_claims.md gets, per claim, what the paper says, a table of
GFLOPs and accuracy (mean, standard deviation and range over the seeds), a figure
(OUT/paper_claims_<claim>.png, accuracy vs GFLOPs with the seeds' spread) and a verdict computed
from the numbers: whether the small-scale result agrees with the paper. Two means count as
"the same" when they differ by less than the noise `tolerance`: the larger of 0.5 points and
the root of the summed seed variances.

The claims (paper sections in brackets):
- location  TokenLearner location (§3.4, Fig. 4): accuracy and GFLOPs vs the layer it precedes.
- pooling   TokenLearner vs spatial pooling at comparable FLOPs (§3.5.2, Table 6).
- fuser     TokenFuser vs unpooling vs reprojection vs no fuser (§3.5.3, Fig. 7, Table 5).
- tokens    Number of tokens (§3.4, Table 2).
- video     ViViT vs ViViT + TokenLearner at <= 0.6x the GFLOPs (§5, Table 7).

The digits runs use a shorter schedule than the default job (`DIGITS_STEPS`) so that three seeds
of every run fit the time budget; the video runs use the moving_digits configs' own schedule.
"""
import argparse
import copy
import dataclasses
import hashlib
import importlib
import json
import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from token_learner import tree

DIGITS, VIDEO = 'configs.digits_tokenlearner', 'configs.moving_digits_vivit'
DIGITS_STEPS = 600
TL = 'model.tokenlearner.'


def _tl(tokens, loc, **extra):
  return {TL + 'num_tokens': tokens, TL + 'loc': loc, **{TL + k: v for k, v in extra.items()}}


@dataclasses.dataclass(frozen=True)
class Stat:
  """One run's results over its seeds."""
  gflops: float
  accuracies: Tuple[float, ...]
  wall_time_s: float = 0.0  # Summed over the seeds.
  root: str = ''  # The run's directory (shared by equal runs of different claims).

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracies))

  @property
  def std(self) -> float:
    return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0


def tolerance(a: Stat, b: Stat) -> float:
  """Noise level of a difference of means: max(0.5 points, sqrt(var_a + var_b))."""
  return max(0.005, math.sqrt(a.std ** 2 + b.std ** 2))


def compare(a: Stat, b: Stat) -> int:
  """+1 if a is above b by more than the noise, -1 if below, 0 if within it."""
  diff = a.mean - b.mean
  return 0 if abs(diff) <= tolerance(a, b) else (1 if diff > 0 else -1)


def pts(x: float) -> str:
  return f'{100 * x:+.1f}'


# Verdicts: (stats by run name) -> (agrees, one sentence with the numbers).
Verdict = Tuple[bool, str]


def location_verdict(s: Dict[str, Stat]) -> Verdict:
  vit, locs = s['vit'], sorted(k for k in s if k.startswith('loc'))
  cheap = [k for k in locs if s[k].gflops <= 0.75 * vit.gflops]
  best = max(cheap, key=lambda k: s[k].mean) if cheap else None
  matches = best is not None and compare(s[best], vit) >= 0
  rises = compare(s[locs[-1]], s[locs[0]]) >= 0
  gain = s[locs[-1]].mean - s[locs[0]].mean
  text = (f'Accuracy from the earliest to the latest location: {pts(gain)}'
          f' points ({"not below" if rises else "below"}, the paper: later is better). ')
  if best is None:
    return False, text + 'No location costs <= 0.75x the ViT GFLOPs.'
  text += (f'Best location at <= 0.75x the ViT GFLOPs: {best} ({s[best].gflops / vit.gflops:.2f}x'
           f' GFLOPs), {pts(s[best].mean - vit.mean)} points vs ViT, '
           f'{"within or above" if matches else "below"} the noise '
           f'({100 * tolerance(s[best], vit):.1f}).')
  return matches and rises, text


def pooling_verdict(s: Dict[str, Stat]) -> Verdict:
  tl, pool = s['tokenlearner'], s['spatial_pool']
  c = compare(tl, pool)
  word = {1: 'above', 0: 'within the noise of', -1: 'below'}[c]
  return c > 0, (f'TokenLearner {pts(tl.mean - pool.mean)} points vs 2x2 spatial pooling at '
                 f'{tl.gflops / pool.gflops:.2f}x its GFLOPs: {word} it (the paper: above).')


def fuser_verdict(s: Dict[str, Stat]) -> Verdict:
  fuser = s['tokenfuser']
  parts, results = [], []
  for other in ('unpool', 'reprojection', 'no_fuser'):
    c = compare(fuser, s[other])
    results.append(c)
    parts.append(f'{pts(fuser.mean - s[other].mean)} vs {other}'
                 f' ({ {1: "above", 0: "within noise", -1: "below"}[c]})')
  # "Better" needs a win beyond the noise somewhere and no loss: all within noise is not a yes.
  return min(results) >= 0 and max(results) > 0, (
      'TokenFuser ' + ', '.join(parts) + ' (the paper: TokenFuser the best of the fusers, and '
      'better than none).')


def tokens_verdict(s: Dict[str, Stat]) -> Verdict:
  c8_16, c4_8 = compare(s['tokens16'], s['tokens8']), compare(s['tokens8'], s['tokens4'])
  agrees = c8_16 == 0 and c4_8 >= 0
  return agrees, (f'16 vs 8 tokens: {pts(s["tokens16"].mean - s["tokens8"].mean)} points '
                  f'({"within noise" if c8_16 == 0 else "outside noise"}); 8 vs 4 tokens: '
                  f'{pts(s["tokens8"].mean - s["tokens4"].mean)} (the paper: 8 and 16 are close, '
                  f'a few tokens already suffice).')


def video_verdict(s: Dict[str, Stat]) -> Verdict:
  vivit = s['vivit']
  cheap = [k for k in s if k != 'vivit' and s[k].gflops <= 0.6 * vivit.gflops]
  best = max(cheap, key=lambda k: s[k].mean)
  c = compare(s[best], vivit)
  return c >= 0, (f'Best TokenLearner run at <= 0.6x the GFLOPs: {best} '
                  f'({s[best].gflops / vivit.gflops:.2f}x), {pts(s[best].mean - vivit.mean)} '
                  f'points vs ViViT: {({1: "above", 0: "within the noise of", -1: "below"})[c]} '
                  f'it (the paper: matches or beats the full model).')


@dataclasses.dataclass(frozen=True)
class Claim:
  key: str
  title: str
  paper: str
  config: str
  runs: Sequence[Tuple[str, Dict]]
  verdict: Callable[[Dict[str, Stat]], Verdict]
  steps: Optional[int] = DIGITS_STEPS  # None: the config's own schedule.
  seeds: int = 3
  note: str = ''


GAP = {'model.classifier': 'gap'}
CLAIMS = (
    Claim('location', 'TokenLearner location', '§3.4, Fig. 4: accuracy rises the later the '
          'TokenLearner is placed; from about the middle of the network on it matches ViT at a '
          'fraction of the FLOPs.', DIGITS,
          [('vit', _tl(0, 1))] + [(f'loc{i}', _tl(8, i)) for i in range(4)], location_verdict,
          note='8 tokens before layer `loc` of the 4-layer micro ViT (loc0: before the first).'),
    Claim('pooling', 'TokenLearner vs spatial pooling', '§3.5.2, Table 6: at comparable FLOPs, '
          'learned tokens beat a fixed 2x2 spatial pooling of the token grid.', DIGITS,
          [('tokenlearner', {**_tl(4, 1), **GAP}),
           ('spatial_pool', {**_tl(0, 1), **GAP, 'model.spatial_pooling': ((1, 2),)})],
          pooling_verdict,
          note='Both before layer 1, global average pooling head: 16 grid tokens become 4 '
               'learned tokens or a 2x2 grid of 2x2-averaged tokens.'),
    Claim('fuser', 'TokenFuser vs its alternatives', '§3.5.3, Fig. 7 and Table 5: TokenFuser is '
          'better than unpooling with the maps or a reprojection attention layer, and better '
          'than no fuser.', DIGITS,
          [('tokenfuser', _tl(8, 1, fuser=True)),
           ('unpool', _tl(8, 1, fuser=True, fuser_type='unpool')),
           ('reprojection', _tl(8, 1, fuser=True, fuser_type='reprojection')),
           ('no_fuser', _tl(8, 1))], fuser_verdict,
          note='Fig. 3(b) placement from layer 1 on (TokenLearner -> block -> fuser); "no_fuser" '
               'is Fig. 3(a) with the TokenLearner before layer 1.'),
    Claim('tokens', 'Number of tokens', '§3.4, Table 2: 8 and 16 tokens give close accuracy; a '
          'handful of tokens is enough.', DIGITS,
          [(f'tokens{n}', _tl(n, 1)) for n in (4, 8, 16)], tokens_verdict,
          note='TokenLearner before layer 1 of 4; the grid has 16 tokens.'),
    Claim('video', 'Video: ViViT vs ViViT + TokenLearner', '§5, Table 7: TokenLearner matches or '
          'beats the full ViViT at a fraction of its GFLOPs.', VIDEO,
          [('vivit', _tl(0, 1)), ('tl8_loc2', _tl(8, 2))], video_verdict, steps=None, seeds=2,
          note='moving_digits, the ViViT config\'s schedule; the TokenLearner (8 tokens per '
               'temporal slice) before layer 2 of 4, the middle of the network as in the paper\'s '
               'video models. configs/moving_digits_tokenlearner.py places it before layer 1 '
               '(0.39x the GFLOPs).'),
)
CLAIM_KEYS = tuple(c.key for c in CLAIMS)


def run_config(claim: Claim, overrides: Dict, seed: int, steps: Optional[int]):
  """The full config of one run: the claim's base config, its overrides, seed and schedule."""
  config = copy.deepcopy(importlib.import_module(claim.config).get_config())
  flat = {**overrides, 'seed': seed}
  if steps is not None:
    flat.update({'num_train_steps': steps, 'evals.eval.every_steps': 0,
                 'checkpoint_every_steps': 0,
                 'warmup_steps': min(config.warmup_steps, steps // 10)})
  with config.unlocked():
    config.update_from_flattened_dict(flat)
  return config


def run_dir(workdir: str, claim: Claim, run: str, steps: Optional[int]) -> str:
  """WORKDIR/<config>_<hash>: the hash is of the run's differences from its base config, so runs
  with equal configs (e.g. the same TokenLearner in two claims) are trained once and shared."""
  flat = lambda c: dict(tree.flatten(c.to_dict(), sep='.'))
  base = flat(importlib.import_module(claim.config).get_config())
  config = flat(run_config(claim, dict(claim.runs)[run], seed=0, steps=steps))
  diff = {k: config.get(k) for k in set(base) | set(config) if base.get(k) != config.get(k)}
  digest = hashlib.sha1(json.dumps(diff, sort_keys=True, default=str).encode()).hexdigest()[:10]
  return os.path.join(workdir, f'{claim.config.split(".")[-1]}_{digest}')


def summary_path(run_root: str, seed: int) -> str:
  return os.path.join(run_root, f'seed{seed}', 'summary.json')


def claim_steps(claim: Claim, steps_override: Optional[int]) -> Optional[int]:
  return steps_override if steps_override is not None else claim.steps


def claim_seeds(claim: Claim, seeds_override: Optional[int]) -> int:
  return seeds_override if seeds_override is not None else claim.seeds


def train_all(claims, workdir, seeds, steps_override=None, log=print):
  """Trains every (claim, run, seed) that has no summary.json yet; returns the wall time."""
  import trainer  # pylint: disable=g-import-not-at-top  # Only training needs jax.
  start = time.time()
  for claim in claims:
    steps = claim_steps(claim, steps_override)
    for run, overrides in claim.runs:
      root = run_dir(workdir, claim, run, steps)
      for seed in range(claim_seeds(claim, seeds)):
        if os.path.exists(summary_path(root, seed)):
          continue
        log(f'[{time.time() - start:7.0f} s] {claim.key}/{run} seed {seed} -> {root}')
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, 'overrides.json'), 'w') as f:
          json.dump({'config': claim.config, 'steps': steps, 'overrides': overrides}, f)
        trainer.train_and_evaluate(run_config(claim, overrides, seed, steps),
                                   os.path.dirname(summary_path(root, seed)))
  return time.time() - start


def collect(claim: Claim, workdir: str, seeds: int,
            steps_override: Optional[int] = None) -> Dict[str, Stat]:
  """{run: Stat} from the runs' summary.json files (every seed must be there)."""
  stats = {}
  for run, _ in claim.runs:
    summaries = []
    root = run_dir(workdir, claim, run, claim_steps(claim, steps_override))
    for seed in range(claim_seeds(claim, seeds)):
      path = summary_path(root, seed)
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: run {claim.key}/{run} seed {seed} has not finished')
      with open(path) as f:
        summaries.append(json.load(f))
    stats[run] = Stat(gflops=float(summaries[0]['gflops']), accuracies=tuple(
        float(s['final_metrics']['eval_accuracy']) for s in summaries),
                      wall_time_s=sum(float(s['wall_time_s']) for s in summaries), root=root)
  return stats


def claim_figure(path, claim: Claim, stats: Dict[str, Stat]):
  from token_learner import plots  # pylint: disable=g-import-not-at-top
  plots.accuracy_vs_gflops_spread(path, claim.title, {
      run: (s.gflops, [100 * a for a in s.accuracies]) for run, s in stats.items()})


def claim_section(claim: Claim, stats: Dict[str, Stat], seeds: int, steps: Optional[int],
                  figure: str) -> str:
  agrees, sentence = claim.verdict(stats)
  schedule = f', {steps} steps' if steps else ", the config's schedule"
  lines = [f'## {claim.title} (`{claim.key}`)', '',
           f'**Paper.** {claim.paper}', '',
           f'**Here** ({claim.config.split(".")[-1]}, {seeds} seeds'
           f'{schedule}). {claim.note}', '',
           '| run | GFLOPs | accuracy mean (%) | std | min | max |', '|---|---|---|---|---|---|']
  for run, s in stats.items():
    lines.append(f'| {run} | {s.gflops:.4f} | {100 * s.mean:.2f} | {100 * s.std:.2f} | '
                 f'{100 * min(s.accuracies):.2f} | {100 * max(s.accuracies):.2f} |')
  lines += ['', f'**{"Agrees" if agrees else "Does not agree"} with the paper.** {sentence}', '',
            f'![{claim.title}]({figure})', '']
  return '\n'.join(lines)


def write_report(out, claims, workdir, seeds, steps_override=None,
                 note: str = '') -> List[Tuple[str, bool, str]]:
  """OUT/paper_claims.md and one figure per claim; returns (claim, agrees, sentence) rows."""
  os.makedirs(out, exist_ok=True)
  sections, verdicts, walls = [], [], {}
  for claim in claims:
    stats = collect(claim, workdir, seeds, steps_override)
    walls.update({s.root: (s.wall_time_s, len(s.accuracies)) for s in stats.values()})
    figure = f'paper_claims_{claim.key}.png'
    claim_figure(os.path.join(out, figure), claim, stats)
    sections.append(claim_section(claim, stats, claim_seeds(claim, seeds),
                                  claim_steps(claim, steps_override),
                                  figure))
    verdicts.append((claim.key, *claim.verdict(stats)))
  head = ['# The paper\'s claims at small scale', '',
          'Generated by `python -m tools.paper_claims --out=docs/` on the offline datasets '
          '(digits: 8x8 scans at 16x16, 4x4 patches, a 4-layer 64-wide ViT; moving_digits: '
          '8-frame 32x32 videos, a 4-layer ViViT). Accuracy is the test split\'s; GFLOPs are '
          'one forward pass per example (per view for video). Differences below the noise '
          '(max of 0.5 points and the root of the summed seed variances) count as "the same".',
          '']
  head += [f'Wall time of the {sum(n for _, n in walls.values())} training runs (distinct '
           f'configs x seeds, from their summary.json files, compilation included): '
           f'{sum(w for w, _ in walls.values()) / 60:.1f} min.' + (f' {note}' if note else ''), '']
  head += ['| claim | agrees with the paper | evidence |', '|---|---|---|']
  head += [f'| {key} | {"yes" if agrees else "no"} | {sentence} |'
           for key, agrees, sentence in verdicts]
  with open(os.path.join(out, 'paper_claims.md'), 'w') as f:
    f.write('\n'.join(head + [''] + sections))
  return verdicts


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='Directory of paper_claims.md and figures.')
  parser.add_argument('--workdir', default='/tmp/paper_claims', help='Root of the runs.')
  parser.add_argument('--seeds', type=int, default=None,
                      help='Seeds of every run (default: 3 per image run, 2 per video run).')
  parser.add_argument('--only', default='', help=f'Comma-separated subset of {CLAIM_KEYS}.')
  parser.add_argument('--steps', type=int, default=None,
                      help='Train steps of every run (default: each claim\'s schedule).')
  parser.add_argument('--note', default='', help='A sentence for the report\'s header, e.g. '
                      'on what machine and under which load the runs trained.')
  args = parser.parse_args(argv)
  only = [k for k in args.only.split(',') if k]
  unknown = sorted(set(only) - set(CLAIM_KEYS))
  if unknown:
    parser.error(f'--only: {unknown} not among {CLAIM_KEYS}')
  if args.seeds is not None and args.seeds < 1:
    parser.error(f'--seeds={args.seeds}: must be >= 1')
  return args, [c for c in CLAIMS if not only or c.key in only]


def main(argv=None):
  args, claims = parse_args(argv)
  train_all(claims, args.workdir, args.seeds, args.steps)
  for key, agrees, sentence in write_report(args.out, claims, args.workdir, args.seeds,
                                            args.steps, args.note):
    print(f'{key:9s} {"agrees" if agrees else "DOES NOT AGREE"}: {sentence}')


if __name__ == '__main__':
  main()
