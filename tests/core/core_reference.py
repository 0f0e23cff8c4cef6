"""Slow, obviously-correct references for ``opdkit.core``, written from docs/algorithms.md only.

Every function here works on plain Python lists and floats with explicit loops and the ``math`` module, one
formula line per spec line, so that a reader can check it against the spec by eye. They are the independent
check of the vectorised implementation: tests feed both the same random inputs and compare.

Conventions: ``ids`` is a list of int group ids (any values, groups need not be contiguous); ``mask`` is a
list of rows of 0/1; per-token tensors are lists of rows. Nothing here imports opdkit.
"""

from __future__ import annotations

import math


def members(ids: list[int], i: int) -> list[int]:
    """Indices j with ids[j] == ids[i] (the group G_q of row i, §0)."""
    return [j for j in range(len(ids)) if ids[j] == ids[i]]


# ------------------------------------------------------------------------------------------ §2.1, §1


def grpo(rewards: list[float], ids: list[int], normalize_std: bool = True, eps: float = 1e-6) -> list[float]:
    """§2.1: A_i = (r_i − mean)/(std_unbiased + eps) or r_i − mean; a singleton takes mean 0, std 1 (§1.6)."""
    out = []
    for i in range(len(rewards)):
        group = members(ids, i)
        n = len(group)
        if n == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(rewards[j] for j in group) / n
            std = math.sqrt(sum((rewards[j] - mean) ** 2 for j in group) / (n - 1))
        centred = rewards[i] - mean
        out.append(centred / (std + eps) if normalize_std else centred)
    return out


def pass_rates(success: list[float], ids: list[int]) -> list[float]:
    """§1.5: p_q = k_q / n_q, reported on every member of the group."""
    out = []
    for i in range(len(success)):
        group = members(ids, i)
        out.append(sum(success[j] for j in group) / len(group))
    return out


def opd(old: list[list[float]], teacher: list[list[float]], mask: list[list[int]], coef: float = 1.0,
        discount: float = 0.0) -> list[list[float]]:  # fmt: skip
    """§3.1: A[i,t] = −λ (logp_old − logp_T) m; with γ > 0, A_t ← Σ_{s ≥ t, valid} γ^(s−t) A_s (positions)."""
    out = []
    for old_row, t_row, m_row in zip(old, teacher, mask):
        base = [(-coef * (o - t) if m else 0.0) for o, t, m in zip(old_row, t_row, m_row)]
        row = []
        for t in range(len(base)):
            if not m_row[t]:
                row.append(0.0)
                continue
            row.append(sum(discount ** (s - t) * base[s] for s in range(t, len(base)) if m_row[s])
                       if discount else base[t])  # fmt: skip
        out.append(row)
    return out


# -------------------------------------------------------------------------------------- §6, §7 weights


def informative(p: float) -> bool:
    return 0.0 < p < 1.0


def unit_mean(u: list[float], keep: list[bool]) -> list[float]:
    """u / mean(u over keep) on keep, 0 elsewhere; all zeros when nothing is kept (§6.1, §6.3)."""
    kept = [x for x, k in zip(u, keep) if k]
    if not kept:
        return [0.0] * len(u)
    mean = sum(kept) / len(kept)
    return [x / mean if k else 0.0 for x, k in zip(u, keep)]


def sc_sdpo_weights(p: list[float], alpha: float) -> list[float]:
    """§6.1: u_q = (p(1−p))^α, mean 1 over 0 < p < 1, 0 elsewhere."""
    u = [(q * (1 - q)) ** alpha if informative(q) else 0.0 for q in p]
    return unit_mean(u, [informative(q) for q in p])


def hard_filter(p: list[float]) -> list[float]:
    """§6.4: 1[0 < p < 1]."""
    return [1.0 if informative(q) else 0.0 for q in p]


def paced(p0: list[float], a: float = 1.0, b: float = 1.0) -> list[float]:
    """§7.3: Beta kernel p0^a (1−p0)^b, mean 1 over the non-degenerate questions, 0 for degenerate ones."""
    u = [q**a * (1 - q) ** b if informative(q) else 0.0 for q in p0]
    return unit_mean(u, [informative(q) for q in p0])


def scope(student_seq: list[float], teacher_seq: list[float], correct: list[bool], ids: list[int], *,
          tau: float = 1.0, student_exponent: float = 1.0, teacher_exponent: float = -1.0,
          normalization: str = "mean1", valid: list[bool] | None = None) -> tuple[list, list]:  # fmt: skip
    """§5.3-§5.6 literally: PPL = exp(−seq_logp); correct rows ∝ PPL_S^(e_S/τ) over the group's correct rows,
    wrong rows ∝ PPL_T^(e_T/τ) over the group's wrong rows with teacher scores; sum 1 or mean 1 per path."""
    valid = valid if valid is not None else [True] * len(ids)
    student, teacher = [0.0] * len(ids), [0.0] * len(ids)
    for i in range(len(ids)):
        group = members(ids, i)
        if correct[i]:
            path = [j for j in group if correct[j]]
            raw = {j: math.exp(-student_seq[j]) ** (student_exponent / tau) for j in path}
            student[i] = raw[i] / sum(raw.values()) * (len(path) if normalization == "mean1" else 1)
        elif valid[i]:
            path = [j for j in group if not correct[j] and valid[j]]
            raw = {j: math.exp(-teacher_seq[j]) ** (teacher_exponent / tau) for j in path}
            teacher[i] = raw[i] / sum(raw.values()) * (len(path) if normalization == "mean1" else 1)
    return student, teacher


def srpo_routing(success: list[bool], ids: list[int]) -> list[bool]:
    """§7.4: z_sdpo_i = (1 − c_i)·1[some j ≠ i in the group has c_j = 1]."""
    return [(not success[i]) and any(success[j] for j in members(ids, i) if j != i) for i in range(len(ids))]


def entropy_weights(
    entropy: list[list[float]], mask: list[list[int]], beta: float = 1.0
) -> list[list[float]]:
    """§7.4: w~ = exp(−βH), divided by its mean over the masked tokens; 0 elsewhere (all 0 when empty)."""
    raw = [math.exp(-beta * h) for row, mrow in zip(entropy, mask) for h, m in zip(row, mrow) if m]
    mean = sum(raw) / len(raw) if raw else None
    return [[math.exp(-beta * h) / mean if m and mean else 0.0 for h, m in zip(row, mrow)]
            for row, mrow in zip(entropy, mask)]  # fmt: skip


# ---------------------------------------------------------------------------------------- §3 divergences


def kl(p_logp: list[float], q_logp: list[float]) -> float:
    """KL(P‖Q) = Σ_v e^p (p − q), with a zero-probability term contributing 0."""
    return sum(math.exp(p) * (p - q) for p, q in zip(p_logp, q_logp) if p > -math.inf)


def divergence(s: list[float], t: list[float], alpha: float) -> float:
    """§3.2 table: α = 0 KL(T‖S), α = 1 KL(S‖T), else (1−α) KL(S‖M) + α KL(T‖M), M = (1−α)e^s + α e^t."""
    if alpha == 0:
        return kl(t, s)
    if alpha == 1:
        return kl(s, t)
    mix = [(1 - alpha) * math.exp(a) + alpha * math.exp(b) for a, b in zip(s, t)]
    log_m = [math.log(m) if m > 0 else -math.inf for m in mix]
    return (1 - alpha) * kl(s, log_m) + alpha * kl(t, log_m)


def log_softmax(z: list[float]) -> list[float]:
    top = max(z)
    lse = top + math.log(sum(math.exp(x - top) for x in z))
    return [x - lse for x in z]


def logsumexp(x: list[float]) -> float:
    top = max(x)
    return top + math.log(sum(math.exp(v - top) for v in x))


def topk_with_tail(zs: list[float], zt: list[float], k: int, tail: bool) -> tuple[list[float], list[float]]:
    """§3.3 at one position: the student's top-k ids (descending student logit), both distributions
    normalised over the full vocabulary and gathered there; tail bucket log(1 − Σ_k p) appended, or both
    renormalised over the k entries."""
    order = sorted(range(len(zs)), key=lambda v: -zs[v])[:k]
    s_full, t_full = log_softmax(zs), log_softmax(zt)
    s_k, t_k = [s_full[v] for v in order], [t_full[v] for v in order]
    if tail:
        return [*s_k, _log_rest(s_k)], [*t_k, _log_rest(t_k)]
    return [x - logsumexp(s_k) for x in s_k], [x - logsumexp(t_k) for x in t_k]


def _log_rest(logp: list[float]) -> float:
    """log(1 − Σ e^x): the tail bucket; −inf when the top-k hold all the mass (k = V)."""
    rest = 1 - sum(math.exp(x) for x in logp)
    return math.log(rest) if rest > 0 else -math.inf


def teacher_support(zs: list[float], ids: list[int], t_logp: list[float]) -> tuple[list[float], list[float]]:
    """§3.3 server variant: student logits gathered on the teacher's ids; both renormalised there, no tail."""
    s_k = [zs[v] for v in ids]
    return [x - logsumexp(s_k) for x in s_k], [x - logsumexp(t_logp) for x in t_logp]


def entropy(z: list[float]) -> float:
    """H = −Σ q log q of softmax(z) (§7.4)."""
    return -sum(math.exp(x) * x for x in log_softmax(z) if x > -math.inf)


def kl_penalty(d: float, kind: str) -> float:
    """§2.4 forward values: k1 = d, k2 = ½d², k3 = e^{−d} + d − 1 with −d clamped to [−20, 20] and the
    result to [−10, 10]; the '+' variants keep these values."""
    base = kind.rstrip("+")
    if base in ("k1", "kl"):
        return d
    if base in ("k2", "mse"):
        return 0.5 * d * d
    neg_d = min(max(-d, -20.0), 20.0)
    return min(max(math.exp(neg_d) - neg_d - 1, -10.0), 10.0)


# ------------------------------------------------------------------------------------------- §2.2, §2.3


def aggregate(loss: list[list[float]], mask: list[list[int]], mode: str, norm_length: int | None = None,
              denominator: str = "valid") -> float:  # fmt: skip
    """§2.3 table. N_s = sequences with ≥ 1 valid token ('valid') or all sequences ('per_sequence_all',
    §11 A8); seq-mean-token-sum-norm divides by B·L_norm; an empty denominator counts as 1 (loss 0)."""
    rows = list(zip(loss, mask))
    if mode == "token-mean":
        tokens = sum(m for _, mrow in rows for m in mrow)
        return sum(x for row, mrow in rows for x, m in zip(row, mrow) if m) / max(tokens, 1)
    if mode == "seq-mean-token-sum-norm":
        length = norm_length if norm_length is not None else len(loss[0])
        return sum(x for row, mrow in rows for x, m in zip(row, mrow) if m) / (len(loss) * length)
    n_s = len(rows) if denominator == "per_sequence_all" else sum(1 for _, mrow in rows if sum(mrow) > 0)
    total = 0.0
    for row, mrow in rows:
        seq_sum = sum(x for x, m in zip(row, mrow) if m)
        if mode == "seq-mean-token-mean":
            seq_sum = seq_sum / sum(mrow) if sum(mrow) else 0.0
        total += seq_sum
    return total / max(n_s, 1)


def surrogate(logp: float, old: float, adv: float, clip_low: float = 0.2, clip_high: float = 0.28,
              dual_clip: float | None = 3.0) -> tuple[float, bool, bool]:  # fmt: skip
    """§2.2 at one token -> (loss, clip active, dual clip active)."""
    ratio = math.exp(min(max(logp - old, -20.0), 20.0))
    unclipped = -adv * ratio
    clipped = -adv * min(max(ratio, 1 - clip_low), 1 + clip_high)
    loss = max(unclipped, clipped)
    clip_active = clipped > unclipped
    dual_active = False
    if dual_clip is not None and adv < 0:
        dual_active = loss > -adv * dual_clip
        loss = min(loss, -adv * dual_clip)
    return loss, clip_active, dual_active


def surrogate_grad(logp: float, old: float, adv: float, clip_low: float = 0.2, clip_high: float = 0.28,
                   dual_clip: float | None = 3.0) -> float:  # fmt: skip
    """d loss / d logp at one token: −A·ratio where the unclipped branch is active, else 0 (the clipped and
    dual-clipped branches are constant in logp). Only valid away from the branch boundaries."""
    _, clip_active, dual_active = surrogate(logp, old, adv, clip_low, clip_high, dual_clip)
    ratio = math.exp(logp - old)
    return 0.0 if clip_active or dual_active else -adv * ratio


def truncated_is(num: float, den: float, cap: float | None) -> float:
    """§3.4 / §2.6: min(exp(clamp(num − den, ±20)), cap); 1 when cap is None."""
    if cap is None:
        return 1.0
    return min(math.exp(min(max(num - den, -20.0), 20.0)), cap)


# ------------------------------------------------------------------------------------------ objectives


def scope_loss(logp: list[list[float]], old: list[list[float]], teacher: list[list[float]],
               mask: list[list[int]], correct: list[bool], valid: list[bool], w_stu: list[float],
               w_tea: list[float], agg: str = "code", clip: tuple = (0.2, 0.2, 3.0)) -> tuple:  # fmt: skip
    """§5.5 code path (and 'joint'), wrong rows without teacher scores dropped (§5.7) -> (loss, ∂loss/∂logp).

    code:  L_PG = Σ_{used rows} m ℓ_PG / Σ_{used rows} m  (ℓ_PG = 0 on correct rows, A = 0 there)
           L_MLE = Σ_{correct} m w_stu (−logp) / Σ_{correct} m
    joint: (Σ_{wrong} m ℓ_PG + Σ_{correct} m w_stu (−logp)) / Σ_{used rows} m
    """
    used = [c or v for c, v in zip(correct, valid)]
    pg_den = max(sum(sum(mask[i]) for i in range(len(mask)) if used[i]), 1)
    mle_den = max(sum(sum(mask[i]) for i in range(len(mask)) if correct[i]), 1) if agg == "code" else pg_den
    pg_num, mle_num = 0.0, 0.0
    grad = [[0.0] * len(row) for row in logp]
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if not mask[i][t] or not used[i]:
                continue
            if correct[i]:
                mle_num += w_stu[i] * -logp[i][t]
                grad[i][t] = -w_stu[i] / mle_den
            else:
                adv = w_tea[i] * (teacher[i][t] - old[i][t])
                pg_num += surrogate(logp[i][t], old[i][t], adv, *clip)[0]
                grad[i][t] = surrogate_grad(logp[i][t], old[i][t], adv, *clip) / pg_den
    return pg_num / pg_den + mle_num / mle_den, grad


def self_distillation(div: list[list[float]], mask: list[list[int]], is_w: list[list[float]] | None,
                      q_w: list[float] | None, mode: str, denominator: str) -> float:  # fmt: skip
    """§4.7, §6.2: agg(w_q(i) · IS[i,t] · D[i,t], loss_mask)."""
    per_token = [[d * (is_w[i][t] if is_w else 1.0) * (q_w[i] if q_w else 1.0) for t, d in enumerate(row)]
                 for i, row in enumerate(div)]  # fmt: skip
    return aggregate(per_token, mask, mode, denominator=denominator)


def srpo_loss(grpo_loss: list[list[float]], sdpo_loss: list[list[float]], sdpo_rows: list[bool],
              mask: list[list[int]]) -> float:  # fmt: skip
    """§7.4: (Σ z_grpo m ℓ_GRPO + Σ z_sdpo m ℓ_DW) / (Σ z_grpo m + Σ z_sdpo m) = … / Σ m."""
    num, den = 0.0, 0
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if mask[i][t]:
                num += sdpo_loss[i][t] if sdpo_rows[i] else grpo_loss[i][t]
                den += 1
    return num / max(den, 1)
