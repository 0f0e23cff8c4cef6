"""Teacher-server throughput: concurrent vs sequential clients, batched vs unbatched server.

Starts two ``opdkit`` teacher servers on 127.0.0.1 for the same model: one batching concurrent requests into
padded forwards (``max_batch_rows`` 256, ``--max-batch-tokens``) and one running every row alone
(``max_batch_rows=1``). Then, interleaved over ``--repeats`` rounds, it scores the same random rows with

1. one sequential client (``ServerTeacher``, one row per request, one in flight) on the batched server;
2. ``--clients`` concurrent clients (threads, each its own ``ServerTeacher`` on a slice of the rows) on the
   batched server;
3. the same concurrent clients on the unbatched server;
4. one client sending ``--clients`` rows per request on the batched server (HTTP cost shared by the rows);

and prints rows scored per second (median of the rounds) and the two ratios 2/1 and 2/3. For reference it also
times the scoring engine in this process without HTTP: all rows in forwards of ``--clients`` rows vs one row
per forward (the ceiling batching can reach). Without ``--model`` a random Llama is built in a temporary
directory (``--hidden``, ``--layers``, vocabulary 512).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teacher_server.py [--rows 64] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from opdkit.teachers.server import ServerTeacher, ServerTeacherConfig  # noqa: E402


def build_model(path: Path, hidden: int, layers: int, max_len: int) -> None:
    """A random Llama with a 512-token vocabulary (ids 0-3 special, the rest single characters or pairs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    symbols = [chr(c) for c in range(33, 127)]
    pieces = ["<pad>", "<s>", "</s>", "<unk>", *symbols, *(a + b for a in symbols for b in symbols)][:512]
    backend = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=max_len,
    )
    LlamaForCausalLM(config).save_pretrained(path)


def start_server(
    model: str, max_batch_rows: int, max_batch_tokens: int, log: Path
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "from opdkit.serve import ServeConfig, serve; "
        f"serve(ServeConfig({model!r}, port={port}, max_batch_rows={max_batch_rows}, "
        f"max_batch_tokens={max_batch_tokens}))"
    )
    env = dict(
        os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(REPO / "src")
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def rows_per_second(url: str, prompts: list, responses: list, clients: int, per_request: int = 1):
    """Score all rows with ``clients`` threads, each a sequential ServerTeacher on its slice.

    Returns rows per second and the server's mean rows per forward pass during the run.
    """
    slices = [(prompts[i::clients], responses[i::clients]) for i in range(clients)]
    config = ServerTeacherConfig(url=url, rows_per_request=per_request, max_concurrency=1)
    teachers = [ServerTeacher(config) for _ in slices]
    failed = []

    def work(teacher: ServerTeacher, p: list, r: list) -> None:
        failed.append(teacher.score(p, r).failed_rows)

    threads = [threading.Thread(target=work, args=(t, *s)) for t, s in zip(teachers, slices)]
    before = httpx.get(url + "/health").json()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    after = httpx.get(url + "/health").json()
    forwards = after["forward_passes"] - before["forward_passes"]
    for t in teachers:
        t.close()
    if sum(failed):
        raise RuntimeError(f"{sum(failed)} rows failed")
    return len(prompts) / elapsed, (after["rows_scored"] - before["rows_scored"]) / max(1, forwards)


def engine_rows_per_second(model: str, prompts: list, responses: list, batch: int) -> float:
    """Rows per second of ``ScoringEngine.score_rows`` alone, ``batch`` rows per forward (median of 3)."""
    from opdkit.serve.engine import RowRequest, ScoringEngine

    engine = ScoringEngine.from_pretrained(model)
    rows = [RowRequest(ids=tuple(p + r)) for p, r in zip(prompts, responses)]
    engine.score_rows(rows[:batch])  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            engine.score_rows(rows[i : i + batch])
        times.append(time.perf_counter() - start)
    return len(rows) / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF causal LM directory (default: build a random Llama)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="opdkit-bench-"))
    model = args.model
    if model is None:
        model = str(tmp / "model")
        build_model(Path(model), args.hidden, args.layers, max_len=2 * (args.prompt_len + args.response_len))
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, 512, (args.rows, args.prompt_len), generator=gen).tolist()
    responses = torch.randint(4, 512, (args.rows, args.response_len), generator=gen).tolist()
    batched, b_url = start_server(model, 256, args.max_batch_tokens, tmp / "batched.log")
    unbatched, u_url = start_server(model, 1, args.max_batch_tokens, tmp / "unbatched.log")
    try:
        for url in (b_url, u_url):  # warm-up
            rows_per_second(url, prompts[:8], responses[:8], 2)
        settings = {
            "seq": (b_url, 1, 1),
            "conc": (b_url, args.clients, 1),
            "conc_unbatched": (u_url, args.clients, 1),
            "seq_multi": (b_url, 1, args.clients),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
        for _ in range(args.repeats):  # interleaved, so slow drifts of a shared machine hit every setting
            for key, (url, clients, per_request) in settings.items():
                runs[key].append(rows_per_second(url, prompts, responses, clients, per_request))
    finally:
        for proc in (batched, unbatched):
            proc.terminate()
            proc.wait()
    med = {k: statistics.median(r for r, _ in v) for k, v in runs.items()}
    per_forward = {k: statistics.mean(f for _, f in v) for k, v in runs.items()}

    desc = args.model or f"random Llama hidden {args.hidden}, {args.layers} layers, vocab 512"
    print(
        f"model: {desc}; {args.rows} rows of {args.prompt_len} prompt + {args.response_len} response tokens"
    )
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; median of {args.repeats} rounds")
    print(f"{'setting':<46}{'rows/s':>10}{'rows/forward':>14}")
    names = {
        "seq": "1 sequential client, batched server",
        "conc": f"{args.clients} concurrent clients, batched server",
        "conc_unbatched": f"{args.clients} concurrent clients, unbatched server",
        "seq_multi": f"1 client, {args.clients} rows per request, batched",
    }
    for key, name in names.items():
        print(f"{name:<46}{med[key]:>10.1f}{per_forward[key]:>14.2f}")
    print(f"ratio {args.clients} concurrent / 1 sequential (batched server): {med['conc'] / med['seq']:.2f}x")
    ratio = med["conc"] / med["conc_unbatched"]
    print(f"ratio batched / unbatched server ({args.clients} clients): {ratio:.2f}x")
    one = engine_rows_per_second(model, prompts, responses, 1)
    many = engine_rows_per_second(model, prompts, responses, args.clients)
    print(f"{f'engine alone (no HTTP), {args.clients} rows per forward':<46}{many:>10.1f}")
    print(f"{'engine alone (no HTTP), 1 row per forward':<46}{one:>10.1f}")
    print(f"ratio engine batched / unbatched: {many / one:.2f}x")


if __name__ == "__main__":
    main()
