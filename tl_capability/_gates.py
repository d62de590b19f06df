"""The parts of a learned mask's training (private): the gates' stochastic samples and their
expected removal, the suppression loss, the batch sampler and the controls' clean reference.

[`tl_capability.learned`][tl_capability.learned] holds the loss's description and the papers
it follows; this module holds the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability._answer_head import answer_logits
from tl_capability.attribution import NeuronScores
from tl_capability.data import Batch, CapabilityDataset, collate, tokenize
from tl_capability.options import Gate, Suppression
from tl_capability.sites import model_device

# Hard concrete (Louizos et al., 2018): temperature β, stretch interval (γ, ζ).
_BETA, _GAMMA, _ZETA = 2.0 / 3.0, -0.1, 1.1
# The start logit of every gate. Starting from the removal of a large random part of the
# network (half of it for sigmoid gates) and pruning works; starting nearly closed (−4) does
# not move: one neuron's removal barely changes a confident answer, so the gradients that would
# open the right gates are too small before many are open together. That holds on the zoo's
# small models; on SmolLM2-135M (30 layers) half removed destroys the model (KL 15-17 nats) and
# −4 with contrastive scores added works (docs/findings.md): LearnConfig.start chooses.
_START = {"hard_concrete": -2.0, "sigmoid": 0.0}


def default_start(gate: Gate) -> float:
    """The gate's own start logit (half removed for sigmoid gates)."""
    return _START[gate]


def init_logits(
    init: Any, shape: tuple[int, int], gate: Gate, start: float | None = None
) -> Tensor:
    """``θ₀``: ``start`` (``None``: the gate's start logit, ``_START``), plus the
    standardised scores clamped to ``±3`` when given (higher score: more likely removed; nothing
    starts saturated)."""
    start = _START[gate] if start is None else float(start)
    if init is None:
        return torch.full(shape, start)
    values = init.values if isinstance(init, NeuronScores) else init
    if not isinstance(values, Tensor) or tuple(values.shape) != shape:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"init must be NeuronScores or a tensor of shape {shape}, got {got}")
    values = values.detach().float().cpu()
    if not torch.isfinite(values).all():
        raise ValueError("init has non-finite values")
    z = (values - values.mean()) / values.std().clamp_min(1e-12)
    return start + z.clamp(-3, 3)


def removal_sample(theta: Tensor, gate: Gate, gen: torch.Generator) -> Tensor:
    """One stochastic sample of the removal gates ``r ∈ [0, 1]``, differentiable in ``θ``."""
    u = torch.rand(theta.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(theta.device)
    noise = u.log() - (-u).log1p()  # logistic noise (the difference of two Gumbels)
    if gate == "hard_concrete":
        s = torch.sigmoid((noise + theta) / _BETA)
        return (s * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)
    soft = torch.sigmoid(noise + theta)
    return (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through


def expected_removed(theta: Tensor, gate: Gate) -> Tensor:
    """``P(r_j > 0)`` (hard concrete: the expected-L0 term) or ``P(r_j = 1)`` (sigmoid)."""
    if gate == "hard_concrete":
        return torch.sigmoid(theta - _BETA * math.log(-_GAMMA / _ZETA))
    return torch.sigmoid(theta)


def suppression_loss(logits: Tensor, batch: Batch, n_rows: int, kind: Suppression) -> Tensor:
    """The suppression loss of the first ``n_rows`` rows (the target's), mean over samples
    (``"unlikely"``) or answer tokens (``"uniform"``), from logits at every answer position."""
    picked = batch.target_row < n_rows
    z = logits[picked].double()
    if kind == "uniform":  # KL(uniform ‖ p) = −log V − mean_v log p_v
        return (-math.log(z.shape[-1]) - z.log_softmax(-1).mean(-1)).mean().float()
    # log(1 − P(y_m)) = logsumexp over v ≠ y − logsumexp over all v: exact when P(y_m) ≈ 1,
    # where log_softmax rounds log P(y_m) to 0 and the gradient would vanish.
    total = z.logsumexp(-1)
    others = z.scatter(-1, batch.target_token[picked, None], -math.inf).logsumexp(-1)
    log_p = torch.log1p(-(others - total).exp())  # log P(y_m), accurate near 0
    log_answer = torch.zeros(n_rows, dtype=z.dtype, device=z.device)
    log_answer = log_answer.index_add(0, batch.target_row[picked], log_p)
    # −log(1 − P(answer)) with P(answer) = exp(Σ_m log P(y_m)); clamp keeps it finite at P = 1.
    return -torch.log(-torch.expm1(log_answer.clamp(max=-1e-12))).mean().float()


class Sampler:
    """Batches of indices without replacement, reshuffled each epoch from ``gen``."""

    def __init__(self, n: int, size: int, gen: torch.Generator) -> None:
        self.n, self.size, self.gen, self.queue = n, min(size, n), gen, []

    def __call__(self) -> list[int]:
        if len(self.queue) < self.size:
            self.queue = self.queue + torch.randperm(self.n, generator=self.gen).tolist()
        out, self.queue = self.queue[: self.size], self.queue[self.size :]
        return out


class CleanLogProbs:
    """The clean model's log-probabilities at the control samples' answer positions, the
    maintenance term's reference. They do not change while the gates train, so each sample's are
    computed once, when first drawn, and kept while the whole control set would fit in
    ``budget`` bytes; past that, each step's are computed afresh."""

    def __init__(
        self,
        model: Any,
        samples: Mapping[str, list],
        batch_size: int,
        pad: int,
        budget: int = 256 * 2**20,
    ) -> None:
        self.model, self.samples, self.batch_size, self.pad = model, samples, batch_size, pad
        vocab = int(model.cfg.d_vocab)
        answers = sum(len(s.answer) for data in samples.values() for s in data)
        self.keep = answers * vocab * 4 <= budget
        self.kept: dict[tuple[str, int], Tensor] = {}

    def _run(self, chosen: list) -> list[Tensor]:
        device = model_device(self.model)
        batch = collate(chosen, range(len(chosen)), self.pad).to(device)
        with torch.no_grad():
            logits = answer_logits(self.model, batch.tokens, batch.target_row, batch.target_pos)
        logp = logits.float().log_softmax(-1)
        return list(logp.split(batch.n_targets.tolist()))

    def __call__(self, name: str, indices: list[int]) -> Float[Tensor, "target vocab"]:
        data = self.samples[name]
        if not self.keep:
            return torch.cat(self._run([data[i] for i in indices]))
        missing = list(dict.fromkeys(i for i in indices if (name, i) not in self.kept))
        for start in range(0, len(missing), self.batch_size):
            part = missing[start : start + self.batch_size]
            for i, logp in zip(part, self._run([data[i] for i in part]), strict=True):
                self.kept[name, i] = logp
        return torch.cat([self.kept[name, i] for i in indices])


def pad_id(model: Any) -> int:
    """The model's padding token (0 without a tokenizer or a pad token)."""
    return getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0


def removal_kl(
    model: Any,
    samples: Mapping[str, list],
    clean: CleanLogProbs,
    hook_names: list[str],
    theta: Tensor,
    gate: Gate,
    seed: int,
) -> float:
    """The mean KL (nats) of ``samples``' answers, clean model against one draw of the gates at
    ``theta`` (no gradients): how much of the model a start destroys."""
    removal = [removal_sample(theta, gate, torch.Generator().manual_seed(seed))]
    hooks = [(name, _gated(removal, i)) for i, name in enumerate(hook_names)]
    pad = clean.pad
    kls = []
    for name, data in samples.items():
        chosen = list(range(len(data)))
        reference = clean(name, chosen)
        batch = collate(data, chosen, pad).to(model_device(model))
        with torch.no_grad():
            logits = answer_logits(model, batch.tokens, batch.target_row, batch.target_pos, hooks)
        kept = logits.float().log_softmax(-1)
        kls.append((reference.exp() * (reference - kept)).sum(-1).mean().item())
    return sum(kls) / len(kls)


def _gated(removal: list[Tensor], layer: int) -> Any:
    """The hook that scales layer ``layer``'s neurons by ``1 − r`` (``r``: the current sample
    of the removal gates, ``removal[0]``)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        return act * (1 - removal[0][layer]).to(act.dtype)

    return hook


class Training:
    """One learned mask's training: the samples, the samplers drawn from one generator, the
    optimizer and the gated hooks; ``step`` is one Adam
    step on ``θ``."""

    def __init__(
        self,
        model: Any,
        target: CapabilityDataset,
        controls: dict[str, CapabilityDataset],
        theta: Tensor,
        hook_names: list[str],
        config: Any,  # a learned.LearnConfig; not imported: learned imports this module
        budget: int,
        seed: int,
    ) -> None:
        self.model, self.theta, self.config, self.budget = model, theta, config, budget
        self.device = model_device(model)
        self.target = tokenize(model, target)
        self.controls = {key: tokenize(model, data) for key, data in controls.items()}
        self.pad = pad_id(model)
        self.gen = torch.Generator().manual_seed(seed)
        size = config.batch_size
        self.draw_target = Sampler(len(self.target), size, self.gen)
        self.draw_control = {k: Sampler(len(s), size, self.gen) for k, s in self.controls.items()}
        self.names = list(controls)
        self.optimizer = torch.optim.Adam([theta], lr=config.lr)
        self.removal: list[Tensor] = []
        self.fwd = [(name, _gated(self.removal, i)) for i, name in enumerate(hook_names)]
        self.clean_logp = CleanLogProbs(model, self.controls, size, self.pad)

    def step(self, step: int) -> dict[str, Any]:
        """One Adam step on ``θ``; its losses, for the history."""
        cfg, name = self.config, self.names[step % len(self.names)] if self.names else None
        rows = [self.target[i] for i in self.draw_target()]
        drawn = self.draw_control[name]() if name else []
        ctrl = [self.controls[name][i] for i in drawn]
        # Target and control rows run as two passes under the same gates, each padded to
        # its own length (one pass padded the short prompts to the long ones': 16-31 % more
        # tokens on the zoo's capabilities).
        parts = [collate(rows, range(len(rows)), self.pad).to(self.device)]
        if ctrl:
            parts.append(collate(ctrl, range(len(ctrl)), self.pad).to(self.device))
            clean = self.clean_logp(name, drawn)
        with torch.enable_grad():
            self.removal[:] = [removal_sample(self.theta, cfg.gate, self.gen)]
            logits = [
                answer_logits(self.model, b.tokens, b.target_row, b.target_pos, self.fwd)
                for b in parts
            ]
            suppress = suppression_loss(logits[0], parts[0], len(rows), cfg.suppression)
            if ctrl:
                kept = logits[1].float().log_softmax(-1)
                kl = (clean.exp() * (clean - kept)).sum(-1).mean()
            else:
                kl = suppress.new_zeros(())
            removed = expected_removed(self.theta, cfg.gate).sum() / self.budget
            loss = suppress + cfg.maintain * kl + cfg.sparsity * removed
            self.optimizer.zero_grad()
            loss.backward()
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "suppress": suppress.item(),
            "maintain": kl.item(),
            "sparsity": removed.item(),
            "control": name,
        }
