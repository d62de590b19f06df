"""[`attribute`][tl_capability.attribution.attribute]: a short function over parts that each do
one thing: check the options and settle the model's checks (``_plan``), shard the samples over
``torchrun`` ranks, resume a checkpoint, score the batches (``_score_batches``), and reduce
(``_reduced``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability._answer_head import require_separable_head
from tl_capability.attribution._all_position_first_call import settle_checks
from tl_capability.attribution._all_positions import (
    all_position_scores,
    check_all_position_method,
)
from tl_capability.attribution._checkpoint import Checkpoint, fingerprint
from tl_capability.attribution._distributed import all_reduce_sum, distributed_info
from tl_capability.attribution._first_call import FirstCall
from tl_capability.attribution._layered_rows import pass_kinds
from tl_capability.attribution._methods import ig_alphas, per_sample_mean, target_scores
from tl_capability.attribution._moments import Moments
from tl_capability.attribution._scores import NeuronScores
from tl_capability.data import (
    Batch,
    CapabilityDataset,
    TokenizedSample,
    batch_sizes,
    batches,
    tokenize,
)
from tl_capability.options import (
    AttributionMethod,
    IGRule,
    Metric,
    Positions,
    Site,
    check_option,
    check_positive_int,
)
from tl_capability.sites import (
    NeuronSite,
    model_device,
    model_name,
    neuron_site,
    require_eval,
    resolve_use_cache,
)


@dataclass(frozen=True, kw_only=True)
class AttributionConfig:
    """The rarely changed settings of [`attribute`][tl_capability.attribution.attribute], checked
    once, when the config is made.

    Attributes:
        site: ``"post"`` (the input of ``W_out``) or ``"pre"``.
        rule: Integrated-gradients quadrature, see
            [`ig_alphas`][tl_capability.attribution.ig_alphas].
        max_rows: Rows per forward/backward pass (bounds memory); ``None``: 1,024 at the answer
            position. With ``positions="all"`` it counts ``(sample, step)`` sequences per pass,
            and ``None`` takes 64, or more for sequences under 16 tokens: about 1,024
            positions per pass (``docs/speed.md``).
        use_cache: Run each answer-position row as one token attending to the clean run's cached
            keys and values (exact, and about ``len(prompt)`` times cheaper). ``None`` uses it
            whenever [`supports_kv_cache`][tl_capability.sites.supports_kv_cache] and every
            hook attached to the model is
            [`position_free`][tl_capability.sites.position_free] (a hook that indexes
            positions would miss the rows; see
            [`resolve_use_cache`][tl_capability.sites.resolve_use_cache]); ``False`` forces the
            general path, which re-runs ``z_m``; ``True`` on a model without the cached path
            raises. Ignored with ``positions="all"``, whose rows are whole sequences.
        checkpoint_dir: Save the running statistics there (atomically) every
            ``checkpoint_every`` batches; a run restarted with the same arguments and the same
            weights resumes where the last save left off and gives the same result.
        checkpoint_every: Batches between checkpoints.

    Raises:
        ValueError: For an unknown site or rule, or a ``max_rows`` or ``checkpoint_every`` that
            is not a positive integer.
        TypeError: For a ``use_cache`` that is not ``None`` or a bool, or a ``checkpoint_dir``
            that is not a path.
    """

    site: Site = "post"
    rule: IGRule = "midpoint"
    max_rows: int | None = None
    use_cache: bool | None = None
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        check_option(self.site, Site, "site")
        check_option(self.rule, IGRule, "rule")
        if self.max_rows is not None:
            check_positive_int(self.max_rows, "max_rows")
        check_positive_int(self.checkpoint_every, "checkpoint_every")
        if self.use_cache is not None and not isinstance(self.use_cache, bool):
            raise TypeError(f"use_cache must be None, True or False, got {self.use_cache!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str | Path):
            raise TypeError(f"checkpoint_dir must be a path, got {self.checkpoint_dir!r}")


@dataclass(frozen=True)
class _Plan:
    """A call's checked options and what its batches share."""

    model: Any
    dataset: CapabilityDataset
    method: str
    metric: str
    positions: str
    alphas: Tensor
    site: NeuronSite
    batch_size: int
    max_rows: int | None
    use_cache: bool
    first: FirstCall | None
    samples: list[TokenizedSample]
    params: dict[str, Any]


def attribute(
    model: Any,
    dataset: CapabilityDataset,
    method: AttributionMethod = "ig",
    *,
    steps: int = 20,
    metric: Metric = "prob",
    positions: Positions = "answer",
    per_sample: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    config: AttributionConfig | None = None,
) -> NeuronScores:
    """Scores every MLP neuron for the dataset's answers.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: (prompt, answer) pairs; every answer token is a teacher-forced target.
        method: ``"ig"``, ``"grad_x_act"``, ``"neurgrad"`` or ``"activation"`` (see
            [`tl_capability.attribution`][tl_capability.attribution] for the formulas).
        steps: Integrated-gradients steps ``S`` (20 in Dai et al.'s code).
        metric: ``"prob"`` (``P(answer token)``, as in the papers) or ``"logprob"``.
        positions: ``"answer"`` (the papers' scores: the neuron at the position that predicts
            each answer token) or ``"all"`` (the neuron scaled at every position at once, as
            erasure removes it; ``ig``, ``grad_x_act`` and ``activation`` only; see
            [`tl_capability.attribution`][tl_capability.attribution]).
        per_sample: Also keep every sample's score (needed by knowledge-neuron refinement).
        batch_size: Samples per batch (default: 16 for ``"ig"``, 32 otherwise).
        progress: Show a progress bar.
        config: The rarely changed settings: the neuron site, the IG rule, rows per pass, the
            key/value cache, checkpoints
            ([`AttributionConfig`][tl_capability.attribution.AttributionConfig]; ``None``:
            its defaults).

    Under ``torchrun`` (``torch.distributed`` initialised, gloo or NCCL), every rank takes
    every ``world_size``-th sample and the statistics are all-reduced: each rank returns the
    same scores as a single process would.

    Returns:
        [`NeuronScores`][tl_capability.attribution.NeuronScores].

    Raises:
        ValueError: For an unknown method, metric or positions, a model in training mode or
            without MLP hooks, with a hook on ``ln_final`` / ``unembed`` (except for
            ``"activation"``), an empty dataset, a sample that does not fit the context, a
            non-finite score (naming the sample), or a checkpoint of another run (other data,
            parameters or weights) or a damaged one (naming the file).
        TypeError: For a ``config`` that is not an ``AttributionConfig``.
    """
    if config is None:
        config = AttributionConfig()
    if not isinstance(config, AttributionConfig):
        raise TypeError(f"config must be an AttributionConfig, got {type(config).__name__}")
    plan = _plan(model, dataset, method, steps, metric, positions, batch_size, config)
    # Shard samples over torch.distributed ranks (round robin); each rank reduces its own.
    rank, world = distributed_info()
    mine = torch.arange(rank, len(plan.samples), world)
    local = [plan.samples[i] for i in mine.tolist()]
    moments = Moments.zeros(plan.site.n_layers, plan.site.d_mlp)
    kept = torch.zeros(len(local), plan.site.n_layers, plan.site.d_mlp) if per_sample else None
    sizes = batch_sizes(local, plan.batch_size)
    checkpoint, done = None, 0
    if config.checkpoint_dir is not None:
        key = fingerprint(
            model, dataset, method, plan.params, plan.batch_size, per_sample, rank, world
        )
        checkpoint = Checkpoint.for_rank(
            config.checkpoint_dir, config.checkpoint_every, key, rank, world
        )
        done, moments, kept = checkpoint.resume(moments, kept, sizes)
    bar = tqdm(
        total=len(sizes),
        initial=done,
        disable=not progress,
        desc=f"{method} {dataset.name or ''}".strip(),
    )
    _score_batches(plan, local, mine, done, moments, kept, checkpoint, bar)
    bar.close()
    return _reduced(plan, mine, moments, kept, world)


def _plan(
    model: Any,
    dataset: CapabilityDataset,
    method: str,
    steps: int,
    metric: str,
    positions: str,
    batch_size: int | None,
    config: AttributionConfig,
) -> _Plan:
    """Checks the options, settles the model's one-time checks and tokenizes the dataset.

    At the answer position the first batch's clean pass checks the hooks' widths, and the
    model's first call reads its other one-time checks off its own passes
    ([`FirstCall`][tl_capability.attribution._first_call.FirstCall]); a call that keeps
    checkpoints settles them first (its fingerprint names the path). All-position IG runs its
    checks in two short passes first
    ([`settle_checks`][tl_capability.attribution._all_position_first_call.settle_checks])."""
    check_option(method, AttributionMethod, "method")
    check_option(metric, Metric, "metric")
    check_option(positions, Positions, "positions")
    if positions == "all":
        check_all_position_method(method)
    alphas = ig_alphas(steps, config.rule)
    require_eval(model)
    if batch_size is None:
        batch_size = 16 if method == "ig" else 32
    check_positive_int(batch_size, "batch_size")
    max_rows = config.max_rows
    if max_rows is None and positions == "answer":
        max_rows = 1024  # all positions: per batch, by its length (all_position_rows)
    answer = positions == "answer"
    # all-position rows' checks, the width's included, run together in at most two short passes
    settle = not answer and method != "activation"
    site = neuron_site(model, config.site, check_width=not (answer or settle))
    if settle:
        settle_checks(model, site, rows=method == "ig")
    first = None
    if answer and config.checkpoint_dir is None:
        kinds = pass_kinds(site.n_layers, steps, max_rows)
        first = FirstCall(model, site, method, config.use_cache, kinds)
    if method != "activation" and not (first is not None and first.head):
        require_separable_head(model)
    samples = tokenize(model, dataset)
    # all-position rows are whole sequences at their own positions: no cache to choose
    if first is not None and first.kv:
        use_cache = True  # until the first batch's passes say otherwise
    else:
        use_cache = answer and resolve_use_cache(model, config.use_cache)
        if first is not None:
            first.use_cache = use_cache
    params = {
        "steps": steps if method == "ig" else None,
        "rule": config.rule if method == "ig" else None,
        "metric": metric,
        "positions": positions,
        "site": config.site,
        "n_layers": site.n_layers,
        "d_mlp": site.d_mlp,
        "model_name": model_name(model),
        "kv_cache": bool(use_cache),
        "dataset": dataset.name,
    }
    return _Plan(
        model, dataset, method, metric, positions, alphas, site, batch_size, max_rows,
        use_cache, first, samples, params,
    )  # fmt: skip


def _score_batches(
    plan: _Plan,
    local: list[TokenizedSample],
    mine: Tensor,
    done: int,
    moments: Moments,
    kept: Tensor | None,
    checkpoint: Checkpoint | None,
    bar: Any,
) -> None:
    """Adds the scores of this rank's batches after the first ``done`` to ``moments`` (and
    ``kept``), saving ``checkpoint`` on the way.

    Raises:
        ValueError: For a non-finite score, naming the sample.
    """
    n_batches = bar.total
    for i, batch in enumerate(batches(plan.model, local, plan.batch_size)):
        if i < done:
            continue
        sample_scores = _sample_scores(plan, batch)
        bad = ~torch.isfinite(sample_scores).flatten(1).all(1)
        if bad.any():
            index = int(mine[batch.sample_index[bad.nonzero()[0, 0]].cpu()])
            prompt = plan.dataset.prompts[index][:40]
            raise ValueError(f"non-finite {plan.method} score for sample {index} ({prompt!r})")
        moments.add(sample_scores)
        if kept is not None:
            kept[batch.sample_index.cpu()] = sample_scores.cpu()
        bar.update()
        if checkpoint is not None:
            checkpoint.after_batch(i + 1, n_batches, moments, kept)


def _sample_scores(plan: _Plan, batch: Batch) -> Tensor:
    """Each sample's score of every neuron, ``[batch, layer, d_mlp]``."""
    p = plan
    if p.positions == "all":
        return all_position_scores(p.model, p.site, batch, p.method, p.metric, p.alphas, p.max_rows)
    scores = target_scores(
        p.model, p.site, batch, p.method, p.metric, p.alphas, p.max_rows, p.use_cache, p.first
    )
    return per_sample_mean(batch, scores)


def _reduced(
    plan: _Plan, mine: Tensor, moments: Moments, kept: Tensor | None, world: int
) -> NeuronScores:
    """The scores of every rank's samples (all-reduced: each rank gets the same)."""
    device = model_device(plan.model)
    count, total, total_sq = all_reduce_sum(
        [torch.tensor([moments.count], dtype=torch.float64), moments.total, moments.total_sq],
        device,
    )
    moments = Moments(int(count.item()), total, total_sq)
    params = dict(plan.params)
    if plan.first is not None:
        params["kv_cache"] = bool(plan.first.use_cache)  # as the checks left it
    if kept is not None and world > 1:
        full = torch.zeros(len(plan.samples), plan.site.n_layers, plan.site.d_mlp)
        full[mine] = kept
        (kept,) = all_reduce_sum([full], device)
    return NeuronScores(moments.mean, moments.std, moments.count, plan.method, params, kept)
