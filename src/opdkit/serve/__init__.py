"""The teacher server: any Hugging Face causal LM behind vLLM's ``/v1/completions`` scoring protocol.

SCOPE and OPD query a large external teacher for the log-probs of the student's own tokens
(docs/algorithms.md §5.1). Users usually serve that teacher with ``vllm serve``; ``opdkit serve-teacher``
speaks the same protocol on any machine that runs transformers (a CPU laptop included), so one client
(``opdkit.teachers.server``) works with both::

    opdkit serve-teacher --model PATH [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch-tokens N]

    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": [1, 5, 9, 2], "echo": true, "max_tokens": 1, "logprobs": 2, "temperature": 1}'

Modules: ``engine`` (padded no-grad forward, per-token log-probs, ranks, top-k), ``batcher``
(concurrent requests share forwards up to a token budget), ``protocol`` (request validation,
vLLM-format responses), ``app`` (routes, API key, errors, ``serve``).
"""

from opdkit.serve.app import ServeConfig, create_app, serve

__all__ = ["ServeConfig", "create_app", "serve"]
