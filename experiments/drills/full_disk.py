"""A real full disk at every point of a run, then the same command resumed.

  sudo python experiments/drills/full_disk.py [--sizes=6,10,14,...] [--steps=12]

For each size (KiB) the tiny test config trains in a workdir on a tmpfs of
that size, so the disk fills at a different write each time (config.json,
dataset.json, preprocessing.npz, metrics.jsonl, TensorBoard, a checkpoint).
Each must end with exit status 2 and exactly one `error:` line, without a
traceback or a temporary file left behind; then the tmpfs grows, the same
command runs again and must finish with the same test accuracy as a run
that never ran out of space. Needs root (mount); Linux only.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINAL = re.compile(r'test at step (\d+): accuracy ([0-9.]+)%')


def _train(workdir: str, steps: int) -> tuple[int, str]:
  command = [sys.executable, '-m', 'nin_jax.main', f'--workdir={workdir}',
             '--config=nin_jax/configs/test.py',
             f'--config.num_train_steps={steps}']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                        check=False)
  return done.returncode, done.stdout + done.stderr


def _final(log: str) -> str | None:
  found = FINAL.findall(log)
  return found[-1][1] if found else None


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', default='6,10,14,18,22,26,32,40,80,160,240')
  parser.add_argument('--steps', type=int, default=12)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as scratch:
    code, log = _train(os.path.join(scratch, 'reference'), args.steps)
    expected = _final(log)
    print(f'reference: exit {code}, final test accuracy {expected}%')
    mount = os.path.join(scratch, 'disk')
    os.makedirs(mount)
    failures = 0
    for size in [int(s) for s in args.sizes.split(',')]:
      subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}k', 'tmpfs',
                      mount], check=True)
      try:
        workdir = os.path.join(mount, 'run')
        code, log = _train(workdir, args.steps)
        errors = [line for line in log.splitlines()
                  if line.startswith('error: ')]
        leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(mount)
                     for n in dirs + files if 'tmp' in n]
        subprocess.run(['mount', '-o', 'remount,size=64m', mount], check=True)
        resumed_code, resumed_log = _train(workdir, args.steps)
        final = _final(resumed_log)
        ok = (code == 2 and len(errors) == 1 and 'Traceback' not in log
              and not leftovers and resumed_code == 0 and final == expected)
        failures += not ok
        print(f'{size:4d} KiB: exit {code}, {len(errors)} error line(s), '
              f'{len(leftovers)} temporary file(s); resumed: exit '
              f'{resumed_code}, final {final}%  {"ok" if ok else "FAILED"}')
        if errors:
          print(f'          {errors[0][:150]}')
      finally:
        subprocess.run(['umount', mount], check=True)
  print(f'{failures} failure(s)')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
