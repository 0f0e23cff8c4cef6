"""Pure maths of every method: advantages, weights, divergences, losses.

Only torch, numpy and the standard library are imported here. Every function takes explicit tensors and
scalars and returns tensors or a small frozen dataclass; the trainer and the verl plugin only call these.
Shapes: P prompts, G rollouts per prompt, N = P*G sequences, T response tokens, V vocabulary, K top-k.
"""
