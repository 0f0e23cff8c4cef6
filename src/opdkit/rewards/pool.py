"""Time-bounded math-verify checks that are safe from any thread or process (docs/algorithms.md §9.1).

math-verify bounds its own work with ``signal.alarm``: that raises outside the main thread, and without it a
pathological answer (``9^{9^{9^{9}}}``) runs for minutes. So each check runs in a worker *subprocess*:

- ``MathVerifyPool(size)`` keeps up to ``size`` workers (``python _mathverify_worker.py`` started with
  ``subprocess``, so it also works inside daemonic multiprocessing workers and Ray actors, where
  ``multiprocessing`` may not start children).
- ``pool.equivalent(gold, pred)`` borrows an idle worker (or starts one), sends one request and waits at most
  ``timeout_s`` + a grace second. The worker enforces ``timeout_s`` itself with an interval timer; a worker
  that still has not answered is killed and replaced later. Timeouts, crashes and errors all mean "not
  equivalent".
- Any number of threads may call it at once: each borrowed worker serves one thread at a time; callers beyond
  ``size`` wait for a free worker.
- ``shared_pool(size)`` returns one pool per size and process (a forked child gets its own, never its parent's
  pipes); pools are closed at interpreter exit.

Example::

    pool = shared_pool(2)
    pool.equivalent(r"\\frac{1}{2}", "0.5")          # True
    pool.equivalent("3", r"9^{9^{9^{9}}}", timeout_s=1)  # False after about a second
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from opdkit.rewards.base import VerifierUnavailableError

_WORKER_SCRIPT = Path(__file__).with_name("_mathverify_worker.py")
_GRACE_S = 1.0  # the worker's own timer fires first; this only catches code that ignores signals
_STARTUP_TIMEOUT_S = 120.0  # importing sympy + math-verify on a busy 2-core machine can take several seconds


class MathVerifyUnavailableError(VerifierUnavailableError):
    """math-verify cannot be run (not installed, or the worker could not start)."""


class _Worker:
    """One worker subprocess and its line-based pipe protocol."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            close_fds=True,
        )
        self._buffer = b""
        hello = self._read_line(time.monotonic() + _STARTUP_TIMEOUT_S)
        message = json.loads(hello) if hello else {"fatal": "the worker exited or did not start in time"}
        if not message.get("ready"):
            self.kill()
            raise MathVerifyUnavailableError(
                f"{message.get('fatal')}; install it with: pip install 'opdkit[math]'"
            )

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line from the worker, or None when the deadline passes or the worker is gone."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def ask(self, gold: str, pred: str, timeout_s: float) -> dict | None:
        """Send one request; the decoded reply, or None when the worker died or overran its deadline."""
        data = memoryview((json.dumps([gold, pred, timeout_s]) + "\n").encode())
        try:
            while data:  # a raw pipe write may be partial
                data = data[self.proc.stdin.write(data) :]
        except OSError:  # BrokenPipeError: the worker is gone
            return None
        line = self._read_line(time.monotonic() + timeout_s + _GRACE_S)
        try:
            return None if line is None else json.loads(line)
        except json.JSONDecodeError:  # the protocol is out of step: treat the worker as broken
            return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin); kill it if it does not within a second."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class MathVerifyPool:
    """Up to ``size`` math-verify worker processes shared by any number of threads.

    The queue holds one entry per slot that is not on loan: an idle worker, or None for a free slot whose
    worker has not been started yet (or was killed). A borrower that takes None starts a worker in that slot,
    so a thread waiting for a worker is never stranded when another thread's worker is killed.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        self.size = size
        self.pid = os.getpid()
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._slots.put(None)
        self._lock = threading.Lock()
        self.timeouts = 0  # checks that ran past their deadline (worker answered "timeout" or was killed)

    def _borrow(self) -> _Worker:
        slot = self._slots.get()  # blocks while every slot is on loan
        if slot is not None:
            return slot
        try:
            return _Worker()
        except BaseException:
            self._slots.put(None)  # give the slot back; the next borrower tries again
            raise

    def start(self) -> None:
        """Start every worker now (otherwise each starts on first use), e.g. before timing or training."""
        borrowed = [self._borrow() for _ in range(self.size)]  # an empty slot starts a worker when borrowed
        for worker in borrowed:
            self._slots.put(worker)

    def _count_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1

    def equivalent(self, gold: str, pred: str, *, timeout_s: float = 5.0) -> bool:
        """math-verify's ``verify(parse(gold), parse(pred))``, bounded by ``timeout_s`` (+1 s grace).

        Both sides are wrapped in ``\\boxed{}`` first. Errors and timeouts return False.
        """
        worker = self._borrow()
        reply = worker.ask(gold, pred, timeout_s)
        if reply is None:  # late or dead: a stuck worker cannot be trusted with the next request
            worker.kill()
            self._slots.put(None)
            self._count_timeout()
            return False
        self._slots.put(worker)
        if reply.get("error") == "timeout":
            self._count_timeout()
        return bool(reply.get("ok"))

    def worker_pids(self) -> list[int]:
        """Process ids of the idle workers (for monitoring; a busy worker is not listed)."""
        return [w.proc.pid for w in list(self._slots.queue) if w is not None]

    def close(self) -> None:
        """Stop the idle workers; their slots stay usable (a later call starts a new worker)."""
        workers = []
        while True:
            try:
                workers.append(self._slots.get_nowait())
            except queue.Empty:
                break
        for worker in workers:
            if worker is not None:
                worker.close()
            self._slots.put(None)


_POOLS: dict[int, MathVerifyPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(size: int) -> MathVerifyPool:
    """The process-wide pool with ``size`` workers (created on first use; a forked child gets a new one)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(size)
        if pool is None or pool.pid != os.getpid():
            pool = _POOLS[size] = MathVerifyPool(size)
        return pool


def default_pool_size() -> int:
    """Workers per pool unless told otherwise: the CPU count, capped at 4."""
    return max(1, min(4, os.cpu_count() or 1))


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        if pool.pid == os.getpid():
            pool.close()
