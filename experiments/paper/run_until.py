"""Runs a training command and stops it, with a checkpoint, after a step.

  python experiments/paper/run_until.py --step=2500 -- \
      python -m nin_jax.main --workdir=W [--config...]

The learning-rate schedule stays the one of the whole run (a 200-epoch
cosine, say), which --config.num_train_steps would change: this answers
"what does the real recipe do in its first N steps". Once W/metrics.jsonl
has a training row at or past --step, the trainer gets SIGTERM, finishes
the steps of its current dispatch, saves a checkpoint and exits with 75;
rerunning the plain command resumes the run.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def last_train_step(metrics_path: str) -> int:
  """The largest step of a complete training row in metrics.jsonl, or 0."""
  if not os.path.exists(metrics_path):
    return 0
  step = 0
  with open(metrics_path, encoding='utf-8') as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # A row being written.
      if row.get('split') == 'train':
        step = max(step, row['step'])
  return step


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--step', type=int, required=True,
                      help='Stop once a training row at or past this step '
                      'is logged.')
  parser.add_argument('--poll_seconds', type=float, default=5.0)
  parser.add_argument('command', nargs=argparse.REMAINDER,
                      help='-- then the training command.')
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  workdirs = [a.split('=', 1)[1] for a in command
              if a.startswith('--workdir=')]
  if not workdirs:
    parser.error('the command needs --workdir=DIR')
  metrics = os.path.join(workdirs[0], 'metrics.jsonl')
  process = subprocess.Popen(command)
  while process.poll() is None:
    if last_train_step(metrics) >= args.step:
      process.send_signal(signal.SIGTERM)
      break
    time.sleep(args.poll_seconds)
  status = process.wait()
  print(f'run_until: stopped after step {last_train_step(metrics)} '
        f'(exit status {status})', file=sys.stderr)
  return status


if __name__ == '__main__':
  sys.exit(main())
