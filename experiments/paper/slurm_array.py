"""Sweeps as one SLURM job array: submit, watch, and the array task itself.

`sweeps.py --slurm` hands the unfinished runs (one per point and seed) to
`submit`, which writes ROOT/slurm/<time>/ with

  tasks.json    the runs, one array task each: workdir and command line
  job.sbatch    the batch script: resources, --requeue, the warning signal
  job.json      the array's job id, once sbatch accepted it
  <job>_<task>.out  each task's console output (appended across requeues)

and submits it with `sbatch`; `watch` then reports the array's state
(`squeue`) until no task is left in the queue. Each task runs
`sweeps.py --slurm_task=TASKS:INDEX`, which `exec`s into the batch shell:
SLURM's warning signal (`--signal=B:TERM@SECONDS`, sent to the batch shell
only) reaches the runner, which passes it on to the trainer; the trainer
saves a checkpoint and exits with 75, and the runner puts the task back in
the queue (`scontrol requeue`). Started again, the task resumes from its
checkpoint. A run that finished has its `sweep_done.json` as with the local
runner, so results.py reads the workdirs as always, and submitting again
submits only what is neither done nor still in the queue.
"""

import collections
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable

SUBMISSIONS = 'slurm'  # ROOT/slurm/<time>/
TASKS_FILE = 'tasks.json'
JOB_FILE = 'job.json'


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each task asks SLURM for (sweeps.py's --slurm_* flags)."""
  time: str = '08:00:00'
  cpus_per_task: int = 4
  gres: str = ''  # e.g. gpu:1; '' asks for none.
  partition: str = ''  # '' is the cluster's default partition.
  signal_seconds: int = 300
  max_parallel: int = 0  # Tasks running at once; 0: as many as fit.
  sbatch_args: tuple[str, ...] = ()  # More options, e.g. --account=lab.


def batch_script(directory: str, num_tasks: int, resources: Resources,
                 repo: str, sweeps_script: str) -> str:
  """The job array's batch script; its tasks run from the repository."""
  array = f'0-{num_tasks - 1}'
  if resources.max_parallel:
    array += f'%{resources.max_parallel}'
  options = [
      '--job-name=nin_sweep',
      f'--array={array}',
      f'--output={directory}/%A_%a.out',
      '--open-mode=append',  # A requeued task adds to its log.
      '--requeue',
      # To the batch shell, which is the runner (exec below).
      f'--signal=B:TERM@{resources.signal_seconds}',
      f'--time={resources.time}',
      f'--cpus-per-task={resources.cpus_per_task}',
  ]
  if resources.gres:
    options.append(f'--gres={resources.gres}')
  if resources.partition:
    options.append(f'--partition={resources.partition}')
  options += list(resources.sbatch_args)
  task = (f'{shlex.quote(sys.executable)} {shlex.quote(sweeps_script)} '
          f'--slurm_task={shlex.quote(os.path.join(directory, TASKS_FILE))}'
          ':"$SLURM_ARRAY_TASK_ID"')
  return '\n'.join(
      ['#!/bin/bash'] + [f'#SBATCH {option}' for option in options] +
      ['# One run of a nin_jax sweep per array task (experiments/paper/'
       'sweeps.py --slurm).',
       f'cd {shlex.quote(repo)}',
       '# exec: the runner is the batch shell, which --signal=B: signals.',
       f'exec {task}', ''])


def _slurm(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(args, capture_output=True, text=True, check=False)


def queued(job_id: str) -> dict[int, str] | None:
  """Each array task of job_id still in the queue: its state (and reason).

  {} once the array has left the queue; None if squeue could not answer
  (the controller busy or unreachable: ask again later).
  """
  result = _slurm(['squeue', '--noheader', '--array', f'--jobs={job_id}',
                   '--format=%K %T %r'])
  if result.returncode:
    # A job that finished long ago (MinJobAge) is forgotten.
    return {} if 'Invalid job id' in result.stderr else None
  tasks = {}
  for line in result.stdout.splitlines():
    index, state, reason = (line.split(None, 2) + ['', ''])[:3]
    if index.isdigit():
      tasks[int(index)] = (state if reason in ('', 'None', '(null)')
                           else f'{state} ({reason})')
  return tasks


def final_states(job_id: str) -> dict[int, str]:
  """How each task of a finished array ended, as far as SLURM remembers:
  from sacct, or (without accounting) from scontrol, which forgets a job
  MinJobAge seconds (default 300) after it ended. {} if neither knows."""
  result = _slurm(['sacct', '--noheader', '--parsable2', '--allocations',
                   f'--jobs={job_id}', '--format=JobID,State,ExitCode'])
  states = {}
  if not result.returncode:
    for line in result.stdout.splitlines():
      job, state, exit_code = (line.split('|') + ['', ''])[:3]
      index = job.rpartition('_')[2]
      if index.isdigit():
        states[int(index)] = f'{state} (exit {exit_code})'
    return states
  result = _slurm(['scontrol', '--oneliner', 'show', 'job', job_id])
  for line in result.stdout.splitlines() if not result.returncode else ():
    fields = dict(field.split('=', 1) for field in line.split()
                  if '=' in field)
    if fields.get('ArrayTaskId', '').isdigit():
      states[int(fields['ArrayTaskId'])] = (
          f'{fields.get("JobState")} (exit {fields.get("ExitCode")}, '
          f'requeued {fields.get("Restarts", "0")} times)')
  return states


def submissions(root: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
  """The arrays submitted for ROOT before: (job id, directory, tasks)."""
  found = []
  parent = os.path.join(root, SUBMISSIONS)
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
    directory = os.path.join(parent, name)
    try:
      with open(os.path.join(directory, JOB_FILE), encoding='utf-8') as f:
        job_id = json.load(f)['job_id']
      with open(os.path.join(directory, TASKS_FILE), encoding='utf-8') as f:
        found.append((job_id, directory, json.load(f)))
    except (OSError, ValueError, KeyError):
      continue  # Not submitted (sbatch refused it), or not ours.
  return found


def in_the_queue(root: str) -> dict[str, str]:
  """The workdirs of earlier arrays' tasks that are still queued or running:
  workdir -> '<job>_<task> <state>'. Raises RuntimeError if squeue cannot
  answer, rather than submitting a run twice."""
  busy = {}
  for job_id, _, tasks in submissions(root):
    states = queued(job_id)
    if states is None:
      raise RuntimeError(f'squeue cannot say whether array {job_id} is still '
                         'in the queue; try again later.')
    for index, state in states.items():
      if index < len(tasks):
        busy[tasks[index]['workdir']] = f'{job_id}_{index} {state}'
  return busy


def submit(root: str, tasks: list[dict[str, Any]], resources: Resources,
           repo: str, sweeps_script: str, dry_run: bool = False
           ) -> str | None:
  """Writes ROOT/slurm/<time>/ and submits the array; its job id.

  With dry_run, prints the batch script instead and writes nothing.
  """
  stamp = time.strftime('%Y%m%d-%H%M%S')
  directory = os.path.join(root, SUBMISSIONS, stamp)
  suffix = 1
  while os.path.exists(directory):
    suffix += 1
    directory = os.path.join(root, SUBMISSIONS, f'{stamp}-{suffix}')
  script = batch_script(directory, len(tasks), resources, repo, sweeps_script)
  if dry_run:
    print(script, end='')
    return None
  os.makedirs(directory)
  with open(os.path.join(directory, TASKS_FILE), 'w', encoding='utf-8') as f:
    json.dump(tasks, f, indent=2)
  path = os.path.join(directory, 'job.sbatch')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(script)
  result = _slurm(['sbatch', '--parsable', path])
  if result.returncode:
    raise RuntimeError(f'sbatch refused {path}:\n{result.stderr.strip()}')
  job_id = result.stdout.strip().split(';')[0]  # "id" or "id;cluster"
  with open(os.path.join(directory, JOB_FILE), 'w', encoding='utf-8') as f:
    json.dump({'job_id': job_id, 'submitted': time.time()}, f)
  print(f'submitted array {job_id}: {len(tasks)} tasks; logs in {directory}',
        flush=True)
  return job_id


def watch(job_ids: list[str], poll_seconds: float,
          say: Callable[[str], None] = print) -> None:
  """Reports the arrays' states (a line when they change) until no task of
  them is left in the queue. A requeued task stays in it, pending."""
  last = None
  remaining = list(job_ids)
  while remaining:
    counts = collections.Counter()
    for job_id in list(remaining):
      states = queued(job_id)
      if states is None:
        counts['squeue did not answer'] += 1
      elif not states:
        remaining.remove(job_id)
      else:
        counts.update(states.values())
    line = ', '.join(f'{n} {state}' for state, n in sorted(counts.items()))
    if remaining and line != last:
      say(f'{time.strftime("%H:%M:%S")} array {" ".join(remaining)}: {line}')
      last = line
    if remaining:
      time.sleep(poll_seconds)


def requeue() -> bool:
  """Puts this array task back in the queue (from inside it)."""
  env = os.environ
  if 'SLURM_ARRAY_JOB_ID' in env:
    job = f'{env["SLURM_ARRAY_JOB_ID"]}_{env["SLURM_ARRAY_TASK_ID"]}'
  else:
    job = env.get('SLURM_JOB_ID', '')
  if not job:
    print('not in a SLURM job: nothing to requeue', flush=True)
    return False
  result = _slurm(['scontrol', 'requeue', job])
  if result.returncode:
    print(f'scontrol requeue {job} failed: {result.stderr.strip()} (submit '
          'the sweep again to resume it)', flush=True)
    return False
  print(f'requeued {job}: it resumes from its checkpoint when SLURM starts it '
        'again', flush=True)
  return True
