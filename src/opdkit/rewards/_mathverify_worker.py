"""A math-verify worker process: reads requests on stdin, answers on stdout, one JSON document per line.

Run as a plain script (``python _mathverify_worker.py``) by ``opdkit.rewards.pool``; it imports nothing from
opdkit, so it works wherever the interpreter has math-verify, whatever the caller's ``sys.path``.

Protocol:
- on start it prints ``{"ready": true}``, or ``{"fatal": "<why>"}`` and exits when math-verify is missing;
- request ``[gold, pred, timeout_s]`` -> reply ``{"ok": true|false}`` (``"error"`` says why it is false).

Why a process: math-verify bounds its work with ``signal.alarm``, which only works on a process's main thread
(§9.1). Here the whole check (parse gold, parse prediction, compare) runs on this process's main thread
under one ``setitimer`` deadline, with math-verify's own alarms switched off. The deadline raises a
``BaseException`` so that math-verify's ``except Exception`` blocks cannot swallow it and carry on unbounded.
The parent also kills this process if a reply is late (a C routine that ignores signals).
"""

from __future__ import annotations

import json
import signal
import sys


class _Deadline(BaseException):
    """Raised by the interval timer; a BaseException so library ``except Exception`` cannot catch it."""


def _on_alarm(signum, frame):
    raise _Deadline


def _boxed(answer: str) -> str:
    # Wrapping both sides in \boxed{} makes math-verify extract the whole answer as one LaTeX expression
    # (SCOPE wraps the MATH500 gold the same way) instead of hunting for the last number in it.
    return "\\boxed{" + answer + "}"


def _check(parse, verify, gold: str, pred: str, timeout_s: float) -> dict:
    signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.01))
    try:
        gold_parsed = parse(_boxed(gold), parsing_timeout=None)
        pred_parsed = parse(_boxed(pred), parsing_timeout=None)
        ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))
        return {"ok": ok}
    except _Deadline:
        return {"ok": False, "error": "timeout"}
    except Exception as exc:  # any failure to parse or compare counts as a wrong answer (§9.1)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _send(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def main() -> None:
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not land in the reply stream
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        import logging

        logging.disable(logging.WARNING)  # math-verify logs every timeout and parse failure
        from math_verify import parse, verify
    except ImportError as exc:
        _send(protocol, {"fatal": f"math-verify is not importable: {exc}"})
        return
    # Warm up (builds the LaTeX grammar, ~1 s) so the first real request's deadline is not spent here.
    _check(parse, verify, "\\frac{1}{2}", "0.5", 60.0)
    _send(protocol, {"ready": True})
    for line in sys.stdin:  # EOF (the parent closed the pipe or died) ends the worker
        try:
            gold, pred, timeout_s = json.loads(line)
            reply = _check(parse, verify, str(gold), str(pred), float(timeout_s))
        except _Deadline:  # the timer fired between two statements outside _check's try
            reply = {"ok": False, "error": "timeout"}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"[:200]}
        _send(protocol, reply)


if __name__ == "__main__":
    main()
