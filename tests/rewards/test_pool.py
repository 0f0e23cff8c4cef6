"""math-verify runs bounded in time, from any thread, and inside worker processes (§9.1)."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

from opdkit.rewards import MathVerifier
from opdkit.rewards.pool import MathVerifyPool, shared_pool

# Pairs that the fast path cannot settle, so every one goes through math-verify, with the right answer.
CASES = [
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"\pi/2", r"\frac{\pi}{2}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^3", "x^2", False),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"\sqrt{8}", r"3\sqrt{2}", False),
]
PATHOLOGICAL = r"9^{9^{9^{9}}}"  # sympy tries to evaluate a number with ~10^369693099 digits


def test_many_threads_share_a_pool_and_get_the_right_answers():
    pool = shared_pool(2)
    pool.start()  # both workers now, rather than on first use
    assert len(pool.worker_pids()) == 2
    results: dict[int, bool] = {}

    def work(k: int) -> None:
        gold, pred, _ = CASES[k % len(CASES)]
        results[k] = pool.equivalent(gold, pred)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: CASES[k % len(CASES)][2] for k in range(24)}


def test_verifier_from_threads():
    verify = MathVerifier(workers=2)
    completions = [f"so \\boxed{{{pred}}}" for _, pred, _ in CASES] * 3
    golds = [gold for gold, _, _ in CASES] * 3
    out: list = [None] * len(completions)

    def work(i: int) -> None:
        out[i] = verify(completions[i], golds[i]).correct

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(completions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [ok for _, _, ok in CASES] * 3


def test_pathological_input_is_wrong_within_the_bound():
    pool = MathVerifyPool(1)
    assert pool.equivalent("1", "1")  # start the worker outside the timed part
    start = time.monotonic()
    assert pool.equivalent("3", PATHOLOGICAL, timeout_s=1.0) is False
    elapsed = time.monotonic() - start
    # The bound is timeout_s + 1 s grace; a generous margin absorbs a busy machine. Without the bound this
    # check runs for minutes.
    assert elapsed < 1.0 + 1.0 + 5.0
    assert pool.timeouts == 1
    assert pool.equivalent("2", "2")  # the worker is still usable
    pool.close()


def test_a_worker_that_stops_answering_is_killed_and_replaced():
    pool = MathVerifyPool(1)
    assert pool.equivalent("1", "1")
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGSTOP)  # a worker stuck where signals cannot reach it
    assert pool.equivalent("1", "1", timeout_s=0.5) is False
    assert pool.timeouts == 1
    assert pool.worker_pids() == []  # killed, not returned to the pool
    assert pool.equivalent(r"\frac{1}{2}", "0.5")  # a fresh worker answers
    assert pool.worker_pids() != [pid]
    pool.close()


def test_in_process_mode_is_bounded_on_the_main_thread_and_refuses_elsewhere():
    # A generous bound for the first call: it imports math-verify and builds its grammar (slow when busy).
    assert MathVerifier(workers=0, timeout_s=20.0)(r"so \boxed{(x+1)^2}", "x^2+2x+1").correct
    inline = MathVerifier(workers=0, timeout_s=1.0)
    assert not inline(f"so \\boxed{{{PATHOLOGICAL}}}", "3").correct
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_call_or_error(inline)))
    thread.start()
    thread.join()
    assert "only time-bounded on the main thread" in str(errors[0])


def _call_or_error(verifier):
    try:
        return verifier(r"so \boxed{(x+1)^2}", "x^2+2x+1")
    except RuntimeError as exc:
        return exc


def _verify_in_child(pair):
    gold, pred = pair
    return MathVerifier(workers=1)(f"so \\boxed{{{pred}}}", gold).correct, os.getpid()


def test_works_inside_daemonic_forked_workers():
    # multiprocessing pool workers are daemonic (they may not start multiprocessing children) and forked
    # (they inherit the parent's pools): the verifier must start its own subprocess worker there.
    MathVerifier(workers=1)(r"so \boxed{x^2}", "x^3")  # the parent has a live pool before the fork
    with multiprocessing.get_context("fork").Pool(1) as procs:
        results = procs.map(_verify_in_child, [(g, p) for g, p, _ in CASES[:3]])
    assert [ok for ok, _ in results] == [True, True, True]
    assert all(pid != os.getpid() for _, pid in results)


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError, match="pool size"):
        MathVerifyPool(0)


def test_a_waiting_thread_gets_a_new_worker_when_the_busy_one_is_killed():
    pool = MathVerifyPool(1)
    pool.start()
    (pid,) = pool.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    results = {}
    first = threading.Thread(target=lambda: results.update(a=pool.equivalent("1", "1", timeout_s=0.5)))
    first.start()
    time.sleep(0.2)  # the only worker is on loan to `first`: `second` has to wait for the slot
    second = threading.Thread(target=lambda: results.update(b=pool.equivalent("x^2", "x \\cdot x")))
    second.start()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert results == {"a": False, "b": True}  # the stuck worker was killed; its slot started a fresh one
    pool.close()
