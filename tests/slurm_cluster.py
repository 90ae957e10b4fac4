"""A real one-node SLURM cluster for the tests: munged, slurmctld, slurmd.

Debian's `slurm-wlm` and `munge` (installed by .ci/run when missing), run as
root in a container: ProctrackType=proctrack/linuxproc and TaskPlugin=
task/none need neither cgroups nor systemd. Everything lives in one
temporary directory: munge's key, socket and log, SLURM's config, state,
spool and logs, on ports of its own, so it disturbs no other cluster or
test session on the machine. Commands reach it through `cluster.env`
(SLURM_CONF names its slurm.conf).

  cluster = SlurmCluster.start(directory)   # SlurmUnavailable: why not
  subprocess.run(['sinfo'], env=cluster.env)
  cluster.stop()
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import time

DAEMONS = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'sbatch', 'srun',
           'squeue', 'scontrol', 'scancel', 'sinfo')


class SlurmUnavailable(Exception):
  """Why no cluster could be started here (a reason to skip)."""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _first_job_id() -> int:
  """A first job id whose JAX coordinator port is free: JAX's SLURM
  detection takes port 61440 + job id % 4096, and two test clusters on one
  machine would otherwise both start at job 1."""
  for _ in range(100):
    job_id = random.randrange(10_000, 1_000_000)
    try:
      for offset in range(8):  # The first few jobs' ports.
        with socket.socket() as s:
          s.bind(('', 61440 + (job_id + offset) % 4096))
    except OSError:
      continue
    return job_id
  return 1


def _which(name: str) -> str | None:
  # The daemons are in /usr/sbin, which a non-login PATH may lack.
  return shutil.which(name) or shutil.which(
      name, path='/usr/sbin:/usr/local/sbin:/sbin')


def _tail(path: str, chars: int = 2000) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      return f.read()[-chars:]
  except OSError:
    return ''


class SlurmCluster:
  """One node named after this host, CPUS CPUs, one partition `test`."""

  # More than this machine may have: slurmd takes the configured number
  # (config_overrides), and short test jobs can share the cores.
  CPUS = 4

  def __init__(self, directory: str):
    self.directory = directory
    self.node = socket.gethostname().split('.')[0]
    self.conf = os.path.join(directory, 'slurm.conf')
    self._processes = []
    self._munge_socket = None
    # Commands of the cluster's users: no SLURM_* of an enclosing job.
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env['SLURM_CONF'] = self.conf
    env['PATH'] = env.get('PATH', '') + ':/usr/sbin:/sbin'
    self.env = env

  @classmethod
  def start(cls, directory: str, timeout: float = 60) -> 'SlurmCluster':
    """Starts the daemons and waits for the node to be idle."""
    if os.geteuid() != 0:
      raise SlurmUnavailable('the test cluster runs its daemons as root '
                             '(as in CI); this user is not root')
    missing = [name for name in DAEMONS if not _which(name)]
    if missing:
      raise SlurmUnavailable(
          f'{", ".join(missing)} not installed (apt-get install slurm-wlm '
          'munge, as .ci/run does)')
    cluster = cls(directory)
    try:
      cluster._start(timeout)
    except BaseException:
      cluster.stop()
      raise
    return cluster

  def _path(self, *names: str) -> str:
    return os.path.join(self.directory, *names)

  def _start(self, timeout: float) -> None:
    munge = self._path('munge')
    for name in ('munge', 'state', 'spool', 'log'):
      os.makedirs(self._path(name), mode=0o700, exist_ok=True)
    key = os.path.join(munge, 'munge.key')
    subprocess.run([_which('mungekey'), '--create', f'--keyfile={key}'],
                   check=True, capture_output=True)
    socket_path = os.path.join(munge, 'munge.socket')
    # As root, munged wants --force; its files all in the temporary dir.
    subprocess.run(
        [_which('munged'), '--force', f'--socket={socket_path}',
         f'--key-file={key}', f'--pid-file={munge}/munged.pid',
         f'--log-file={munge}/munged.log', f'--seed-file={munge}/munged.seed'],
        check=True, capture_output=True)
    self._munge_socket = socket_path
    with open(self.conf, 'w', encoding='utf-8') as f:
      f.write(self._config(socket_path))
    for daemon, log in (('slurmctld', 'slurmctld.log'),
                        ('slurmd', 'slurmd.log')):
      args = [_which(daemon), '-D', '-f', self.conf]
      if daemon == 'slurmctld':
        args.append('-c')  # A clean start: no jobs of an earlier cluster.
      else:
        args += ['-N', self.node]
      with open(self._path('log', f'{daemon}.out'), 'w') as out:
        self._processes.append(subprocess.Popen(
            args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
    deadline = time.time() + timeout
    state = ''
    while time.time() < deadline:
      for process in self._processes:
        if process.poll() is not None:
          raise SlurmUnavailable(
              f'{os.path.basename(process.args[0])} exited with '
              f'{process.returncode}:\n' + self.logs())
      result = subprocess.run(['sinfo', '-h', '-N', '-o', '%T'], env=self.env,
                              capture_output=True, text=True)
      state = result.stdout.strip()
      if result.returncode == 0 and state == 'idle':
        return
      time.sleep(0.3)
    raise SlurmUnavailable(f'the node is not idle after {timeout:.0f} s '
                           f'(sinfo: {state!r}):\n' + self.logs())

  def _config(self, munge_socket: str) -> str:
    return f"""\
ClusterName=nintest
FirstJobId={_first_job_id()}
SlurmctldHost={self.node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={self._path('state')}
SlurmdSpoolDir={self._path('spool')}
SlurmctldPidFile={self._path('slurmctld.pid')}
SlurmdPidFile={self._path('slurmd.pid')}
SlurmctldLogFile={self._path('log', 'slurmctld.log')}
SlurmdLogFile={self._path('log', 'slurmd.log')}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

  def logs(self) -> str:
    """The end of each daemon's log, for a failure's message."""
    parts = []
    for name in ('munge/munged.log', 'log/slurmctld.log', 'log/slurmd.log',
                 'log/slurmctld.out', 'log/slurmd.out'):
      text = _tail(self._path(*name.split('/')))
      if text:
        parts.append(f'--- {name}\n{text}')
    return '\n'.join(parts)

  def run(self, *args: str, check: bool = True) -> str:
    """A SLURM command against this cluster; its standard output."""
    result = subprocess.run(list(args), env=self.env, capture_output=True,
                            text=True)
    if check and result.returncode:
      raise RuntimeError(f'{" ".join(args)} exited with {result.returncode}:'
                         f'\n{result.stdout}{result.stderr}')
    return result.stdout

  def stop(self) -> None:
    """Cancels every job, stops the daemons and munged, and kills what is
    left of this cluster (a job step's slurmstepd outlives its slurmd)."""
    if self._processes:
      subprocess.run(['scancel', '--full', '--user=root'], env=self.env,
                     capture_output=True, timeout=30)
      deadline = time.time() + 20
      while time.time() < deadline and self.run(
          'squeue', '--noheader', check=False).strip():
        time.sleep(0.5)
    for process in reversed(self._processes):
      if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    for process in reversed(self._processes):
      try:
        process.wait(timeout=15)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    self._processes = []
    self._kill_leftovers()
    pid_file = self._path('munge', 'munged.pid')
    if self._munge_socket and os.path.exists(pid_file):
      subprocess.run([_which('munged'), '--stop',
                      f'--socket={self._munge_socket}'],
                     capture_output=True, timeout=30)

  def _kill_leftovers(self) -> None:
    """SIGKILL to every process of this cluster still running: slurmstepd
    (which blocks SIGTERM) and job processes, all of which have this
    cluster's SLURM_CONF in their environment."""
    mark = f'SLURM_CONF={self.conf}'.encode()
    for pid in os.listdir('/proc'):
      if not pid.isdigit() or int(pid) == os.getpid():
        continue
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          if mark in f.read().split(b'\0'):
            os.kill(int(pid), signal.SIGKILL)
      except OSError:
        continue
