"""Learned masks: a removal gate per neuron, trained to erase one capability and keep others.

[`learn_mask`][tl_capability.learned.learn_mask] learns gate logits ``θ`` of shape
``[layer, d_mlp]``. Neuron ``j``'s removal gate ``r_j ∈ [0, 1]`` scales its activation at **every
position**, ``a ← (1 − r_j) · a``, on the neuron hook (``blocks.{l}.mlp.hook_post`` for
``site="post"``), so ``r = 1`` is exactly the zero ablation of
[`NeuronMask.hooks("zero")`][tl_capability.masks.NeuronMask.hooks]. Only ``θ`` is trained; the
model's weights are never changed. The loss has three terms:

- **suppression** of the target's answers (teacher forced): ``−log(1 − P(answer))`` by default
  (see [`SUPPRESSIONS`][tl_capability.learned.SUPPRESSIONS]);
- **maintenance** of the controls: ``KL(p_clean ‖ p_removed)`` at their answer positions;
- **sparsity**: ``λ ·`` the expected number of removed neurons over the budget
  (``max_fraction`` of all neurons); for hard-concrete gates that is the expected L0 of Louizos
  et al. (ICLR 2018).

This follows two papers. Chang et al. (NAACL 2024, "Do localization methods actually localize
memorized data in LLMs?") found that mask-learning methods, Hard Concrete (expected-L0 gates)
and Slimming (L1 on per-neuron coefficients), beat integrated gradients on both of their
localization benchmarks. Bayazit et al. (EMNLP 2024, "Discovering knowledge-critical
subnetworks in pretrained language models") add the maintenance term: suppression
``KL(uniform ‖ p_removed)`` on the target, ``KL(p_orig ‖ p_removed)`` on controls, ``λ ·`` mean
gate, with Gumbel-sigmoid gates and a straight-through estimator (``gate="sigmoid"`` here).

Defaults, measured on the zoo model (six capabilities, each against the other five; 100
training samples each, drops on 150 test samples): sigmoid gates starting half removed,
``λ = 3``, 150 steps at ``lr = 0.1`` reached a 60-point drop on the training data for all six
with 23–74 neurons (1–3.6 %), 45–67 points on the test samples, worst other capability ≤ 8
points; grad × act's top neurons of the same count dropped their own capability by 0–14.
Hard-concrete gates (start ``θ = −2``) reached it for three of six, with 41–90 neurons;
starting from grad × act scores gave larger, less specific sets (worst other up to 27 points).

After training, the gates are **binarised**: neurons are ranked by ``θ`` and the smallest top-k
(at most ``max_fraction`` of all neurons) whose zero ablation drops the target's accuracy by
``target_drop`` points is returned as a [`NeuronMask`][tl_capability.masks.NeuronMask].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._answer_head import answer_logits
from tl_capability.attribution import NeuronScores
from tl_capability.data import Batch, CapabilityDataset, collate, tokenize
from tl_capability.evaluate import accuracy
from tl_capability.interventions import ablate
from tl_capability.masks import NeuronMask
from tl_capability.options import Gate, Site, Suppression, check_option
from tl_capability.sites import is_masked_lm, model_device, model_name, neuron_site, require_eval

GATES = get_args(Gate)
SUPPRESSIONS = get_args(Suppression)
"""``"unlikely"``: ``−log(1 − P(answer))``, ``P(answer) = Π_m P(y_m)`` the teacher-forced
probability of the whole answer; it saturates once the answer is improbable, and one wrong token
is enough, as for exact-match accuracy. ``"uniform"``: Bayazit et al.'s ``KL(uniform ‖ p)`` at
each answer token, which keeps pushing every answer position towards the uniform distribution.
Measured on the zoo model (sigmoid gates, 150 steps, 100 training samples, five controls):
``"unlikely"`` reached a 60-point drop with 23 neurons (sentiment) and 55 (sort);
``"uniform"`` did not reach it within 5 % of the neurons (102 neurons: 18 and 55 points).
Our reading: the uniform target never saturates, so gates keep being spent on answers that are
already wrong, while exact match needs only one wrong token per answer. Hence the default."""

# Hard concrete (Louizos et al., 2018): temperature β, stretch interval (γ, ζ).
_BETA, _GAMMA, _ZETA = 2.0 / 3.0, -0.1, 1.1
# The start logit of every gate. Starting from the removal of a large random part of the
# network (half of it for sigmoid gates) and pruning works; starting nearly closed (−4) does
# not move: one neuron's removal barely changes a confident answer, so the gradients that would
# open the right gates are too small before many are open together.
_START = {"hard_concrete": -2.0, "sigmoid": 0.0}


@dataclass(frozen=True)
class LearnedMask:
    """The result of [`learn_mask`][tl_capability.learned.learn_mask].

    Attributes:
        logits: The trained gate logits ``θ``; higher means more surely removed.
        mask: The binarised set: the top ``k`` neurons by ``θ``.
        reached: Whether zero-ablating ``mask`` drops the target by ``target_drop`` points.
        own_drop: The target's accuracy drop (points) when ``mask`` is zero-ablated.
        clean_accuracy: The target's accuracy (0 to 1) without any ablation.
        history: One dict per step: ``loss``, ``suppress``, ``maintain``, ``sparsity`` (the
            expected number removed over the budget), ``control`` (that step's control).
        drops: The drop (points) measured for every ``k`` the binarisation tried.
    """

    logits: Float[Tensor, "layer d_mlp"]
    mask: NeuronMask
    reached: bool
    own_drop: float
    clean_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)
    drops: dict[int, float] = field(default_factory=dict)

    def ranking(self) -> Float[Tensor, "layer d_mlp"]:
        """The gate logits as scores (for [`select`][tl_capability.masks.select] or erase curves
        over ``k``)."""
        return self.logits.clone()


def _init_logits(init: Any, shape: tuple[int, int], gate: Gate) -> Tensor:
    """``θ₀``: the gate's start logit ([`_START`][tl_capability.learned._START]), plus the
    standardised scores clamped to ``±3`` when given (higher score: more likely removed; nothing
    starts saturated)."""
    start = _START[gate]
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


def _removal(theta: Tensor, gate: Gate, gen: torch.Generator) -> Tensor:
    """One stochastic sample of the removal gates ``r ∈ [0, 1]``, differentiable in ``θ``."""
    u = torch.rand(theta.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(theta.device)
    noise = u.log() - (-u).log1p()  # logistic noise (the difference of two Gumbels)
    if gate == "hard_concrete":
        s = torch.sigmoid((noise + theta) / _BETA)
        return (s * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)
    soft = torch.sigmoid(noise + theta)
    return (soft > 0.5).to(soft.dtype) + soft - soft.detach()  # straight-through


def _expected_removed(theta: Tensor, gate: Gate) -> Tensor:
    """``P(r_j > 0)`` (hard concrete: the expected-L0 term) or ``P(r_j = 1)`` (sigmoid)."""
    if gate == "hard_concrete":
        return torch.sigmoid(theta - _BETA * math.log(-_GAMMA / _ZETA))
    return torch.sigmoid(theta)


def _suppression(logits: Tensor, batch: Batch, n_rows: int, kind: Suppression) -> Tensor:
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


class _Sampler:
    """Batches of indices without replacement, reshuffled each epoch from ``gen``."""

    def __init__(self, n: int, size: int, gen: torch.Generator) -> None:
        self.n, self.size, self.gen, self.queue = n, min(size, n), gen, []

    def __call__(self) -> list[int]:
        if len(self.queue) < self.size:
            self.queue = self.queue + torch.randperm(self.n, generator=self.gen).tolist()
        out, self.queue = self.queue[: self.size], self.queue[self.size :]
        return out


def _check_controls(
    target: CapabilityDataset, controls: Mapping[str, CapabilityDataset] | None
) -> None:
    if not isinstance(target, CapabilityDataset):
        raise ValueError(f"target must be a CapabilityDataset, got {type(target).__name__}")
    if controls is None:
        return
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError(
            "controls must be a non-empty mapping of name -> CapabilityDataset (or None, to "
            "learn without a maintenance term)"
        )
    for key, data in controls.items():
        if not isinstance(data, CapabilityDataset):
            raise ValueError(f"control {key!r} is not a CapabilityDataset")
        same_name = target.name is not None and target.name in (key, data.name)
        if data is target or same_name or data.prompts == target.prompts:
            raise ValueError(
                f"control {key!r} is the target itself ({target.name!r}): a mask cannot both "
                "erase and keep it"
            )


class _CleanLogProbs:
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


def _measure_drops(
    model: Any,
    target: CapabilityDataset,
    order: Int[Tensor, " n"],
    shape: tuple[int, int],
    max_k: int,
    target_drop: float,
    clean: float,
    batch_size: int,
    meta: dict[str, Any],
) -> tuple[int, dict[int, float]]:
    """The smallest ``k ≤ max_k`` whose top-k ablation drops the target by ``target_drop``:
    a doubling grid, then bisection in the first interval that reaches it (assumes the drop is
    near-monotone in ``k``). Returns ``max_k`` when nothing reaches it."""
    drops: dict[int, float] = {}

    def drop(k: int) -> float:
        if k not in drops:
            tensor = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
            tensor[order[:k]] = True
            mask = NeuronMask(tensor.view(shape), **meta)
            with ablate(model, mask):
                acc = accuracy(model, target, batch_size=batch_size, progress=False)
            drops[k] = 100.0 * (clean - acc)
        return drops[k]

    grid = sorted({max(1, max_k >> i) for i in range(12)})
    lo = 0
    for k in grid:
        if drop(k) >= target_drop:
            hi = k
            break
        lo = k
    else:
        return max_k, drops
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if drop(mid) >= target_drop else (mid, hi)
    return hi, drops


def learn_gates(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    *,
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None = None,
    max_fraction: float = 0.05,
    steps: int = 150,
    lr: float = 0.1,
    sparsity: float = 3.0,
    maintain: float = 1.0,
    gate: Gate = "sigmoid",
    suppression: Suppression = "unlikely",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    site: Site = "post",
) -> tuple[Float[Tensor, "layer d_mlp"], list[dict[str, Any]]]:
    """The training part of [`learn_mask`][tl_capability.learned.learn_mask]: the gate logits
    ``θ`` (higher: more surely removed) and the per-step history, without binarising them (what
    [`locate`][tl_capability.localization.locate] ranks by; it picks the set size itself).
    Arguments and errors as for [`learn_mask`][tl_capability.learned.learn_mask]."""
    require_eval(model)
    if is_masked_lm(model):
        raise ValueError("learn_mask supports causal LMs only (masked LMs would attend to padding)")
    _check_controls(target, controls)
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
    check_option(gate, Gate, "gate")
    check_option(suppression, Suppression, "suppression")
    if steps < 1 or batch_size < 1 or lr <= 0 or sparsity < 0 or maintain < 0:
        raise ValueError("steps, batch_size and lr must be positive; sparsity, maintain >= 0")
    resolved = neuron_site(model, site)
    shape = (resolved.n_layers, resolved.d_mlp)
    device = model_device(model)
    theta = _init_logits(init, shape, gate).to(device).requires_grad_(True)
    target_samples = tokenize(model, target)
    controls = dict(controls or {})
    control_samples = {key: tokenize(model, data) for key, data in controls.items()}
    pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None) or 0

    gen = torch.Generator().manual_seed(seed)
    draw_target = _Sampler(len(target_samples), batch_size, gen)
    draw_control = {k: _Sampler(len(s), batch_size, gen) for k, s in control_samples.items()}
    names = list(controls)
    optimizer = torch.optim.Adam([theta], lr=lr)
    budget = max(1, math.floor(max_fraction * theta.numel()))
    removal: list[Tensor] = []

    def gated(layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            return act * (1 - removal[0][layer]).to(act.dtype)

        return hook

    fwd = [(resolved.hook_name(layer), gated(layer)) for layer in range(shape[0])]
    clean_logp = _CleanLogProbs(model, control_samples, batch_size, pad)
    history: list[dict[str, Any]] = []
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        bar = tqdm(range(steps), disable=not progress, desc=f"learn_mask {target.name or ''}")
        for step in bar:
            name = names[step % len(names)] if names else None
            rows = [target_samples[i] for i in draw_target()]
            drawn = draw_control[name]() if name else []
            ctrl = [control_samples[name][i] for i in drawn]
            # Target and control rows run as two passes under the same gates, each padded to
            # its own length (one pass padded the short prompts to the long ones': 16-31 % more
            # tokens on the zoo's capabilities).
            parts = [collate(rows, range(len(rows)), pad).to(device)]
            if ctrl:
                parts.append(collate(ctrl, range(len(ctrl)), pad).to(device))
                clean = clean_logp(name, drawn)
            with torch.enable_grad():
                removal[:] = [_removal(theta, gate, gen)]
                logits = [
                    answer_logits(model, b.tokens, b.target_row, b.target_pos, fwd) for b in parts
                ]
                suppress = _suppression(logits[0], parts[0], len(rows), suppression)
                if ctrl:
                    kept = logits[1].float().log_softmax(-1)
                    kl = (clean.exp() * (clean - kept)).sum(-1).mean()
                else:
                    kl = suppress.new_zeros(())
                removed = _expected_removed(theta, gate).sum() / budget
                loss = suppress + maintain * kl + sparsity * removed
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            history.append(
                {
                    "loss": loss.item(),
                    "suppress": suppress.item(),
                    "maintain": kl.item(),
                    "sparsity": removed.item(),
                    "control": name,
                }
            )
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(suppress=f"{suppress.item():.3f}", kl=f"{kl.item():.3f}")
    finally:
        removal.clear()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)

    return theta.detach().cpu(), history


def learn_mask(
    model: Any,
    target: CapabilityDataset,
    controls: Mapping[str, CapabilityDataset] | None,
    *,
    init: Float[Tensor, "layer d_mlp"] | NeuronScores | None = None,
    target_drop: float = 60.0,
    max_fraction: float = 0.05,
    steps: int = 150,
    lr: float = 0.1,
    sparsity: float = 3.0,
    maintain: float = 1.0,
    gate: Gate = "sigmoid",
    suppression: Suppression = "unlikely",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    site: Site = "post",
) -> LearnedMask:
    """Learns which neurons to zero-ablate to erase ``target`` while keeping ``controls``.

    Each step draws ``batch_size`` target samples and ``batch_size`` samples of one control
    dataset (round robin), samples the gates, runs the gated model on both (one forward pass)
    and the clean model on the control samples (no gradients), and takes an Adam step on ``θ``.
    See the module docstring for the loss and the papers it follows.

    Example:
        >>> learned = learn_mask(model, zoo.dataset("sort", 100, "train"),
        ...                      {"addition": zoo.dataset("addition", 100, "train")})
        >>> with ablate(model, learned.mask):
        ...     accuracy(model, zoo.dataset("sort", 100))

    Args:
        model: A causal TransformerLens model in eval mode. Its weights are not changed and its
            parameters' ``requires_grad`` flags are restored, also after an exception.
        target: The capability to erase (teacher-forced answers).
        controls: Capabilities to keep, by name; none may be the target. ``None`` learns
            without the maintenance term (suppression and sparsity only).
        init: Attribution scores (higher: more likely removed) to start from, e.g.
            ``attribute(model, target, "grad_x_act")``: ``θ₀`` = the gate's start logit plus
            the standardised scores clamped to ±3. ``None`` (the default, better on the zoo
            model) starts every gate alike: sigmoid gates half removed, hard-concrete gates
            at ``θ = −2``.
        target_drop: The accuracy drop (points, 0 to 100) on ``target`` the binarised set must
            reach.
        max_fraction: The largest set, as a fraction of all neurons, in ``(0, 1]``.
        steps: Optimisation steps.
        lr: Adam's learning rate on ``θ``.
        sparsity: Weight ``λ`` of the expected number of removed neurons divided by the
            budget ``max_fraction · n_neurons``: filling the budget costs ``λ`` nats, on the
            scale of the other two terms whatever the model's size.
        maintain: Weight of the controls' KL term.
        gate: ``"hard_concrete"`` (Louizos et al.; Chang et al.'s HC) or ``"sigmoid"``
            (Gumbel-sigmoid with a straight-through hard gate; Bayazit et al.).
        suppression: See [`SUPPRESSIONS`][tl_capability.learned.SUPPRESSIONS].
        batch_size: Samples per dataset per step, and per evaluation batch (bounds memory).
        seed: Seeds the batches and the gate noise; the same seed gives the same logits.
        progress: Show a progress bar.
        site: ``"post"`` or ``"pre"`` (see [`tl_capability.sites`][tl_capability.sites]).

    Returns:
        [`LearnedMask`][tl_capability.learned.LearnedMask].

    Raises:
        ValueError: For empty controls, a control that is the target (same object, same name or
            same prompts), a model in training mode or a masked LM, an ``init`` of the wrong
            shape or with non-finite values, a sample that does not fit the context, or a
            parameter out of range.
    """
    if not 0 < target_drop <= 100:
        raise ValueError(f"target_drop must be in (0, 100] points, got {target_drop}")
    logits, history = learn_gates(
        model,
        target,
        controls,
        init=init,
        max_fraction=max_fraction,
        steps=steps,
        lr=lr,
        sparsity=sparsity,
        maintain=maintain,
        gate=gate,
        suppression=suppression,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        site=site,
    )
    names = list(controls or {})
    resolved = neuron_site(model, site)
    shape = (resolved.n_layers, resolved.d_mlp)
    order = logits.flatten().argsort(descending=True, stable=True)
    max_k = max(1, math.floor(max_fraction * logits.numel()))
    clean_acc = accuracy(model, target, batch_size=batch_size, progress=False)
    selection = {
        "method": "learned",
        "gate": gate,
        "suppression": suppression,
        "steps": steps,
        "lr": lr,
        "sparsity": sparsity,
        "maintain": maintain,
        "seed": seed,
        "target_drop": target_drop,
        "max_fraction": max_fraction,
        "init": getattr(init, "method", None if init is None else "tensor"),
        "dataset": target.name,
        "controls": names,
    }
    meta = {"model_name": model_name(model), "site": site, "selection": selection}
    k, drops = _measure_drops(
        model, target, order, shape, max_k, target_drop, clean_acc, batch_size, meta
    )
    reached = drops[k] >= target_drop
    tensor = torch.zeros(logits.numel(), dtype=torch.bool)
    tensor[order[:k]] = True
    selection.update(k=k, reached=reached, own_drop=drops[k])
    mask = NeuronMask(tensor.view(shape), **meta)
    return LearnedMask(logits, mask, reached, drops[k], clean_acc, history, drops)
