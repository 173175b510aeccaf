"""``--processes N`` on a CPU: the same command again as N processes of one gloo group, one thread each.

A CPU's cores are used by processes rather than threads: the demo's models are too small for a second thread to
pay (``docs/demo.md``), while two processes generate two shards at once. The ranks get torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...), so the engine shards the work exactly as under ``torchrun`` or
``accelerate launch``; the samples do not depend on the number of processes (``bench.sampling``).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_thread_environment() -> dict:
    """This process's environment for a child ``python -m`` of this project: one thread, and this checkout first on
    ``PYTHONPATH`` (so the child imports the same code, installed or not)."""
    package_root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def relaunch(module: str, argv: list[str], processes: int) -> int:
    """Run ``python -m module argv`` as ``processes`` ranks; their exit code (the first failure's, if any).

    Rank 0 speaks for the run: the other ranks' stderr is kept aside and shown only when one of them fails while
    rank 0 did not (so a bad input is one line, not one line plus a partner's broken-barrier traceback). A rank
    that fails stops the others, so no rank waits at a barrier for a partner that is gone.
    """
    env = {**one_thread_environment(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes)}
    with tempfile.TemporaryDirectory() as logs:
        stderr = [None] + [open(Path(logs) / f"rank{rank}.log", "w+") for rank in range(1, processes)]
        try:
            ranks = [subprocess.Popen([sys.executable, "-m", module, *argv], stderr=stderr[rank],
                                      env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
                     for rank in range(processes)]
            try:
                first = _first_failure(ranks)
            finally:
                for rank in ranks:
                    if rank.poll() is None:
                        rank.terminate()
                for rank in ranks:
                    rank.wait()
            if first is None:
                return 0
            if ranks[0].returncode > 0:  # rank 0 failed on its own and has said why
                return ranks[0].returncode
            if first > 0:
                stderr[first].seek(0)
                sys.stderr.write(stderr[first].read())
            code = ranks[first].returncode
            return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
        finally:
            for log in stderr[1:]:
                log.close()


def _first_failure(ranks: list[subprocess.Popen], grace: float = 5.0) -> int | None:
    """Wait for every rank; None when all succeed, else the index of the first that failed. The others get
    ``grace`` seconds to end on their own first (then they are stopped), so that rank 0's own failure, which
    breaks its partners' barriers at once, is seen as its own."""
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            deadline = time.time() + grace
            while time.time() < deadline and any(rank.poll() is None for rank in ranks):
                time.sleep(0.1)
            return failed[0]
        if all(code == 0 for code in codes):
            return None
        time.sleep(0.2)


def ran_as_ranks(module: str, argv: list[str], config, state, device: str) -> bool:
    """When ``config.processes`` > 1 asks for it (a CPU run not already under a launcher, which generates), run
    ``python -m module argv`` again as that many ranks and return True once they succeed; a failure exits with
    the ranks' code (they have printed why)."""
    from bench.errors import UserError

    if config.processes <= 1 or state.num_processes > 1 or config.metrics_only:
        return False
    if device != "cpu":
        raise UserError(f"--processes {config.processes} is for CPU runs: on GPUs use accelerate launch "
                        f"--num_processes N -m {module} ...")
    if code := relaunch(module, argv, config.processes):
        raise SystemExit(code)
    return True
