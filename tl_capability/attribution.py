"""Attribution of answers to MLP neurons: integrated gradients, gradient × activation, NeurGrad.

Every method scores neuron ``(l, j)`` for each answer token of each sample, teacher forced:
``z_m = prompt ⊕ answer[:m]``, ``a_m`` the neuron's activation at the last position of ``z_m``,
``P_m = P(answer[m] | z_m)`` (``metric="prob"``) or its log (``metric="logprob"``). A sample's
score is the mean over its answer tokens; [`NeuronScores`][tl_capability.attribution.NeuronScores]
holds the mean and standard deviation over samples.

- ``"ig"``: integrated gradients from a zero baseline, one layer scaled at a time (Dai et al.,
  ACL 2022; the contribution score of capability localization, Huang et al., ICLR 2025):
  ``a_m · (1/S) Σ_k ∂P_m/∂a (a ← α_k a_m)``. ``rule="midpoint"`` (default) uses
  ``α_k = (k - ½)/S``; Dai et al.'s code uses the left Riemann sum ``α_k = (k - 1)/S``
  (``rule="left"``), which includes the baseline and, with one step, degenerates to the
  gradient at zero.
- ``"grad_x_act"``: ``a_m · ∂P_m/∂a_m`` at the clean run (attribution patching). Each answer
  token gets its own row, so the gradient is that of ``P_m`` alone, not of later tokens too.
- ``"neurgrad"``: ``∂P_m/∂a_m · sign(a_m)`` with ``sign(0) = +1`` (the direction
  [`empirical_neg`][tl_capability.neg.empirical_neg] shifts along), the NeurGrad estimate of the
  neuron empirical gradient (Zhao et al., ACL 2025).
- ``"activation"``: ``|a_m|``, a baseline.

With ``positions="answer"`` (the papers' choice, the default) only the activation at the last
position of ``z_m`` is changed or differentiated; positions after it are not in ``z_m`` and are
dropped from the row. ``positions="all"`` scales the neuron at every position at once, as erasure
removes it ([`tl_capability.all_positions`][tl_capability.all_positions]).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tl_capability.all_positions import all_position_scores, check_all_position_method
from tl_capability.data import Batch, CapabilityDataset, batch_sizes, batches, tokenize
from tl_capability.first_call import FirstCall
from tl_capability.head import require_separable_head
from tl_capability.layered_rows import layered_ig_grad_sum, layered_rows_exact, pass_kinds
from tl_capability.options import (
    AttributionMethod,
    IGRule,
    Metric,
    Positions,
    Site,
    check_option,
)
from tl_capability.rows import (
    clean_run,
    layer_row_gradients,
    neg_direction,
    row_gradients,
    rows_for,
)
from tl_capability.sites import (
    NeuronSite,
    model_device,
    model_name,
    neuron_site,
    require_eval,
    resolve_use_cache,
)
from tl_capability.stats import (
    Moments,
    all_reduce_sum,
    distributed_info,
    load_atomic,
    load_pair,
    save_atomic,
    save_pair,
    tensor_bytes,
)

METHODS = get_args(AttributionMethod)
# Below this many rows per layer, layers share an integrated-gradients pass (measured with
# benchmarks/peers.py: on CPU a pass of a few dozen one-token rows costs streaming the weights).
_ROWS_PER_PASS = 128
METRICS = get_args(Metric)
RULES = get_args(IGRule)
POSITIONS = get_args(Positions)


def ig_alphas(steps: int, rule: IGRule = "midpoint") -> Float[Tensor, " steps"]:
    """The scales ``α_k`` at which integrated gradients evaluates the gradient.

    Args:
        steps: Number of evaluation points ``S``.
        rule: ``"midpoint"`` (``(k - ½)/S``), ``"left"`` (``(k - 1)/S``, Dai et al.) or
            ``"right"`` (``k/S``), for ``k = 1..S``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    k = torch.arange(1, steps + 1, dtype=torch.float64)
    offsets = {"midpoint": 0.5, "left": 1.0, "right": 0.0}
    return ((k - offsets[check_option(rule, IGRule, "rule")]) / steps).float()


def neuron_order(values: Float[Tensor, "layer d_mlp"]) -> Int[Tensor, "neuron 2"]:
    """Every neuron as ``(layer, index)``, highest value first (ties: lower flat index first;
    ``-inf`` last, so callers can rule neurons out)."""
    flat = torch.sort(-values.flatten(), stable=True).indices
    return torch.stack(torch.unravel_index(flat, values.shape), dim=1)


@dataclass(frozen=True)
class NeuronScores:
    """Per-neuron attribution scores over a dataset.

    Attributes:
        values: Mean score over samples.
        std: Standard deviation over samples (``n - 1`` denominator).
        n: Number of samples.
        method: ``"ig"``, ``"grad_x_act"``, ``"neurgrad"`` or ``"activation"``.
        params: The method's parameters and the model's signature (``n_layers``, ``d_mlp``,
            ``model_name``, ``site``), for provenance and for refusing foreign models.
        per_sample: Each sample's score, in dataset order, when asked for.
    """

    values: Float[Tensor, "layer d_mlp"]
    std: Float[Tensor, "layer d_mlp"]
    n: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    per_sample: Float[Tensor, "sample layer d_mlp"] | None = None

    @property
    def n_layers(self) -> int:
        return self.values.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.values.shape[1]

    def ranking(self, *, absolute: bool = False) -> Int[Tensor, "neuron 2"]:
        """Every neuron as ``(layer, index)``, highest score first (ties by flat index).

        Args:
            absolute: Rank by ``|score|`` (NeurGrad and grad × act scores are signed).
        """
        return neuron_order(self.values.abs() if absolute else self.values)

    def top(self, k: int, *, absolute: bool = False) -> Int[Tensor, "k 2"]:
        """The ``k`` highest-scoring neurons as ``(layer, index)`` rows, best first.

        Args:
            k: How many (0 to the number of neurons).
            absolute: Rank by ``|score|``.

        Raises:
            ValueError: When ``k`` is not an integer in ``0..n_layers * d_mlp``.
        """
        total = self.values.numel()
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= total:
            raise ValueError(f"k must be an integer in 0..{total}, got {k!r}")
        return self.ranking(absolute=absolute)[:k]

    def save(self, path: str | Path) -> None:
        """Writes ``scores.safetensors`` and ``scores.json`` into the directory ``path``.

        The pair is replaced as a whole (see
        [`tl_capability.stats.save_pair`][tl_capability.stats.save_pair]): an interrupted save
        leaves the previous pair, or one that [`load`][tl_capability.attribution.NeuronScores.load]
        refuses.
        """
        tensors = {"values": self.values.contiguous(), "std": self.std.contiguous()}
        if self.per_sample is not None:
            tensors["per_sample"] = self.per_sample.contiguous()
        meta = {"n": self.n, "method": self.method, "params": self.params}
        save_pair(Path(path), "scores", tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> NeuronScores:
        """Reads what [`save`][tl_capability.attribution.NeuronScores.save] wrote, checking that it
        is whole and consistent.

        Raises:
            FileNotFoundError: When a file is missing.
            ValueError: Naming the folder, for unreadable or mismatched files, tensors of the
                wrong shapes, dtypes or with NaN / infinite values, or bad metadata.
        """
        path = Path(path)
        tensors, meta = load_pair(path, "scores")

        def bad(why: str) -> ValueError:
            return ValueError(f"{path} does not hold valid scores: {why}")

        n, method, params = meta.get("n"), meta.get("method"), meta.get("params", {})
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise bad(f"n must be a positive integer, got {n!r}")
        try:
            check_option(method, AttributionMethod, "method")
        except ValueError as e:
            raise bad(str(e)) from None
        if not isinstance(params, dict):
            raise bad(f"params must be a JSON object, got {type(params).__name__}")
        missing = {"values", "std"} - set(tensors)
        if missing:
            raise bad(f"scores.safetensors lacks {sorted(missing)}")
        values, std, per_sample = tensors["values"], tensors["std"], tensors.get("per_sample")
        if values.dim() != 2 or std.shape != values.shape:
            raise bad(
                f"values {tuple(values.shape)} and std {tuple(std.shape)} must share one "
                "[layer, d_mlp] shape"
            )
        for key, size in (("n_layers", values.shape[0]), ("d_mlp", values.shape[1])):
            if key in params and params[key] != size:
                raise bad(f"params say {key} = {params[key]!r} but the tensors have {size}")
        if per_sample is not None and per_sample.shape != (n, *values.shape):
            raise bad(
                f"per_sample has shape {tuple(per_sample.shape)}, expected "
                f"{(n, *values.shape)} (n = {n})"
            )
        for name, t in tensors.items():
            if name not in ("values", "std", "per_sample"):
                raise bad(f"unexpected tensor {name!r}")
            if not t.is_floating_point():
                raise bad(f"{name} has dtype {t.dtype}, expected a float dtype")
            if not torch.isfinite(t).all():
                raise bad(f"{name} holds NaN or infinite values")
        return cls(values, std, n, method, params, per_sample)


def _target_scores(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    method: str,
    metric: str,
    alphas: Tensor,
    max_rows: int,
    use_cache: bool,
    first: FirstCall | None = None,
) -> Float[Tensor, "target layer d_mlp"]:
    if first is not None:  # the checks the model still owes, read off this batch's passes
        run = first.clean(batch)
    else:
        run = clean_run(model, site, batch, use_cache and method != "activation")
    acts, cache = run.acts, run.cache
    if method == "activation":
        return acts.abs()
    device = batch.tokens.device

    n_targets = len(batch.target_row)
    if first is not None and cache is not None and method == "ig":
        grad_sum = first.ig_grad_sum(batch, run, alphas.to(device), metric, max_rows)
        if grad_sum is not None:
            return acts * grad_sum / len(alphas)
    if first is not None:
        cache = first.rows_checked(batch, run)
    if method in ("grad_x_act", "neurgrad"):
        grads = []
        for start in range(0, n_targets, max_rows):
            t = torch.arange(start, min(start + max_rows, n_targets), device=device)
            grads.append(row_gradients(model, site, rows_for(batch, t, cache), metric, None))
        g = torch.cat(grads)
        return g * (acts if method == "grad_x_act" else neg_direction(acts))
    if first is None and cache is not None and layered_rows_exact(model, site):
        grad_sum = layered_ig_grad_sum(
            model, site, batch, cache, acts, alphas.to(device), metric, max_rows
        )
        return acts * grad_sum / len(alphas)
    # Integrated gradients: one row per (target, layer, step). A pass differentiates a few
    # adjacent layers, so its backward pass stops at the lowest of them instead of running
    # down to the embeddings; when the rows of one layer are few, several layers share a
    # pass, because then a pass costs reading the weights, not the arithmetic on its rows.
    n_steps = len(alphas)
    per_layer = n_targets * n_steps
    group = max(1, min(site.n_layers, _ROWS_PER_PASS // per_layer))
    alphas = alphas.to(device)
    grad_sum = torch.zeros(n_targets, site.n_layers, site.d_mlp, device=device)
    for top in range(site.n_layers, 0, -group):
        layers = torch.arange(max(0, top - group), top)
        t_idx, l_idx, k_idx = (
            x.flatten().to(device)
            for x in torch.meshgrid(
                torch.arange(n_targets), layers, torch.arange(n_steps), indexing="ij"
            )
        )
        for start in range(0, len(t_idx), max_rows):
            t, lay, k = (x[start : start + max_rows] for x in (t_idx, l_idx, k_idx))
            value = alphas[k, None] * acts[t, lay]
            g = layer_row_gradients(model, site, rows_for(batch, t, cache), metric, lay, value)
            grad_sum.index_put_((t, lay), g, accumulate=True)
    return acts * grad_sum / n_steps


def attribute(
    model: Any,
    dataset: CapabilityDataset,
    method: AttributionMethod = "ig",
    *,
    steps: int = 20,
    metric: Metric = "prob",
    site: Site = "post",
    batch_size: int | None = None,
    progress: bool = True,
    rule: IGRule = "midpoint",
    per_sample: bool = False,
    max_rows: int | None = None,
    use_cache: bool | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 10,
    positions: Positions = "answer",
) -> NeuronScores:
    """Scores every MLP neuron for the dataset's answers.

    Args:
        model: A TransformerLens model in eval mode.
        dataset: (prompt, answer) pairs; every answer token is a teacher-forced target.
        method: ``"ig"``, ``"grad_x_act"``, ``"neurgrad"`` or ``"activation"`` (see the
            module docstring for the formulas).
        steps: Integrated-gradients steps ``S`` (20 in Dai et al.'s code).
        metric: ``"prob"`` (``P(answer token)``, as in the papers) or ``"logprob"``.
        site: ``"post"`` (the input of ``W_out``) or ``"pre"``.
        batch_size: Samples per batch (default: 16 for ``"ig"``, 32 otherwise).
        progress: Show a progress bar.
        rule: Integrated-gradients quadrature, see
            [`ig_alphas`][tl_capability.attribution.ig_alphas].
        per_sample: Also keep every sample's score (needed by knowledge-neuron refinement).
        max_rows: Rows per forward/backward pass (bounds memory); default 1,024 at the answer
            position and 64 with ``positions="all"`` (where a row is a whole sequence: on a
            CPU larger passes there are slower, not faster; ``docs/speed.md``).
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
        positions: ``"answer"`` (the papers' scores: the neuron at the position that predicts
            each answer token) or ``"all"`` (the neuron scaled at every position at once, as
            erasure removes it; ``ig``, ``grad_x_act`` and ``activation`` only; see
            [`tl_capability.all_positions`][tl_capability.all_positions]). With ``"all"``,
            ``max_rows`` counts ``(sample, step)`` sequences per pass.

    Under ``torchrun`` (``torch.distributed`` initialised, gloo or NCCL), every rank takes
    every ``world_size``-th sample and the statistics are all-reduced: each rank returns the
    same scores as a single process would.

    Returns:
        [`NeuronScores`][tl_capability.attribution.NeuronScores].

    Raises:
        ValueError: For an unknown method, metric, rule or site, a model in training mode or
            without MLP hooks, with a hook on ``ln_final`` / ``unembed`` (except for
            ``"activation"``), an empty dataset, a sample that does not fit the context, a
            non-finite score (naming the sample), or a checkpoint of another run (other data,
            parameters or weights) or a damaged one (naming the file).
    """
    check_option(method, AttributionMethod, "method")
    check_option(metric, Metric, "metric")
    check_option(positions, Positions, "positions")
    if positions == "all":
        check_all_position_method(method)
    alphas = ig_alphas(steps, rule)
    require_eval(model)
    if batch_size is None:
        batch_size = 16 if method == "ig" else 32
    if max_rows is None:
        max_rows = 64 if positions == "all" else 1024
    for label, value in (
        ("batch_size", batch_size),
        ("max_rows", max_rows),
        ("checkpoint_every", checkpoint_every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    # At the answer position the first batch's clean pass checks the hooks' widths, and the
    # model's first call reads its other one-time checks off its own passes (first_call.py);
    # a call that keeps checkpoints settles them first (its fingerprint names the path).
    answer = positions == "answer"
    resolved = neuron_site(model, site, check_width=not answer)
    first = None
    if answer and checkpoint_dir is None:
        kinds = pass_kinds(resolved.n_layers, steps, max_rows)
        first = FirstCall(model, resolved, method, use_cache, kinds)
    if method != "activation" and not (first is not None and first.head):
        require_separable_head(model)
    samples = tokenize(model, dataset)
    # all-position rows are whole sequences at their own positions: no cache to choose
    if first is not None and first.kv:
        use_cache = True  # until the first batch's passes say otherwise
    else:
        use_cache = answer and resolve_use_cache(model, use_cache)
        if first is not None:
            first.use_cache = use_cache
    params = {
        "steps": steps if method == "ig" else None,
        "rule": rule if method == "ig" else None,
        "metric": metric,
        "positions": positions,
        "site": site,
        "n_layers": resolved.n_layers,
        "d_mlp": resolved.d_mlp,
        "model_name": model_name(model),
        "kv_cache": bool(use_cache),
        "dataset": dataset.name,
    }
    # Shard samples over torch.distributed ranks (round robin); each rank reduces its own.
    rank, world = distributed_info()
    mine = torch.arange(rank, len(samples), world)
    local = [samples[i] for i in mine.tolist()]
    moments = Moments.zeros(resolved.n_layers, resolved.d_mlp)
    kept = torch.zeros(len(local), resolved.n_layers, resolved.d_mlp) if per_sample else None
    checkpoint = None
    done = 0
    sizes = batch_sizes(local, batch_size)
    n_batches = len(sizes)
    if checkpoint_dir is not None:
        fingerprint = _fingerprint(
            model, dataset, method, params, batch_size, per_sample, rank, world
        )
        checkpoint = Path(checkpoint_dir) / f"attribution-rank{rank}-of-{world}.safetensors"
        # No lock: a run reads the checkpoint only here, and every save replaces the file
        # whole (save_atomic), so runs sharing the folder each end with their own exact
        # result, and one that finds another run's checkpoint here is refused.
        if checkpoint.exists():
            state, meta = load_atomic(checkpoint)
            if meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{checkpoint} belongs to another run (dataset, method, parameters, "
                    "batching or the model's weights differ); remove it or use another "
                    "checkpoint_dir"
                )
            done = meta.get("batches_done")
            moments = _checked_checkpoint(
                checkpoint, state, done, sizes, tuple(moments.total.shape), kept
            )
            if kept is not None:
                kept = state["per_sample"]
    bar = tqdm(
        total=n_batches,
        initial=done,
        disable=not progress,
        desc=f"{method} {dataset.name or ''}".strip(),
    )
    for i, batch in enumerate(batches(model, local, batch_size)):
        if i < done:
            continue
        if positions == "all":
            sample_scores = all_position_scores(
                model, resolved, batch, method, metric, alphas, max_rows
            )
        else:
            scores = _target_scores(
                model, resolved, batch, method, metric, alphas, max_rows, use_cache, first
            )
            sample_scores = _per_sample(batch, scores)
        bad = ~torch.isfinite(sample_scores).flatten(1).all(1)
        if bad.any():
            index = int(mine[batch.sample_index[bad.nonzero()[0, 0]].cpu()])
            raise ValueError(
                f"non-finite {method} score for sample {index} ({dataset.prompts[index][:40]!r})"
            )
        moments.add(sample_scores)
        if kept is not None:
            kept[batch.sample_index.cpu()] = sample_scores.cpu()
        bar.update()
        if checkpoint is not None and ((i + 1) % checkpoint_every == 0 or i + 1 == n_batches):
            state = moments.state_dict() | ({"per_sample": kept} if kept is not None else {})
            save_atomic(checkpoint, state, {"fingerprint": fingerprint, "batches_done": i + 1})
    bar.close()
    count, total, total_sq = all_reduce_sum(
        [torch.tensor([moments.count], dtype=torch.float64), moments.total, moments.total_sq],
        model_device(model),
    )
    moments = Moments(int(count.item()), total, total_sq)
    if first is not None:
        params["kv_cache"] = bool(first.use_cache)  # as the checks left it
    if kept is not None and world > 1:
        full = torch.zeros(len(samples), resolved.n_layers, resolved.d_mlp)
        full[mine] = kept
        (kept,) = all_reduce_sum([full], model_device(model))
    return NeuronScores(moments.mean, moments.std, moments.count, method, params, kept)


def _fingerprint(
    model: Any,
    dataset: CapabilityDataset,
    method: str,
    params: dict[str, Any],
    batch_size: int,
    per_sample: bool,
    rank: int,
    world: int,
) -> str:
    """A hash of everything that determines a run's batches and scores, the model's weights
    and their dtypes included ([`weights_digest`][tl_capability.attribution.weights_digest])."""
    h = hashlib.sha256()
    for p, a in zip(dataset.prompts, dataset.answers, strict=True):
        h.update(f"{p}\x00{a}\x01".encode())
    config = [method, params, batch_size, per_sample, rank, world, weights_digest(model)]
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    return h.hexdigest()


def weights_digest(model: Any) -> str:
    """A sha256 over every parameter and buffer of ``model``: names, dtypes, shapes and raw
    bytes, in ``state_dict`` order (tensors are copied to the CPU one at a time)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}\x00{t!r}\x01".encode())
            continue
        h.update(f"{name}\x00{t.dtype}\x00{tuple(t.shape)}\x01".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _checked_checkpoint(
    path: Path,
    state: dict[str, Tensor],
    done: Any,
    sizes: list[int],
    shape: tuple[int, int],
    kept: Tensor | None,
) -> Moments:
    """The statistics of a loaded checkpoint, after checking that they can be those of its
    first ``done`` batches (of ``sizes`` samples each) for neurons of ``shape``, in the dtypes
    a run saves (float64 sums; per-sample scores as ``kept``: fewer bits would resume to other
    scores).

    Raises:
        ValueError: Naming ``path``, for anything out of place.
    """

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is damaged ({why}); remove it to start over")

    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= len(sizes):
        raise bad(f"batches_done is {done!r}, expected an integer in 0..{len(sizes)}")
    expected = {
        "count": ((1,), torch.int64),
        "total": (shape, torch.float64),
        "total_sq": (shape, torch.float64),
    }
    if kept is not None:
        expected["per_sample"] = (tuple(kept.shape), kept.dtype)
    for name, (want, dtype) in expected.items():
        t = state.get(name)
        if t is None:
            raise bad(f"no {name!r} tensor")
        if tuple(t.shape) != want:
            raise bad(f"{name} has shape {tuple(t.shape)}, expected {want}")
        if name != "count" and (t.dtype != dtype or not torch.isfinite(t).all()):
            raise bad(f"{name} is not a finite {str(dtype).removeprefix('torch.')} tensor")
    count = state["count"]
    if count.dtype != torch.int64 or int(count[0]) != sum(sizes[:done]):
        want = sum(sizes[:done])
        raise bad(f"count {count.tolist()} is not the {want} samples of {done} batches")
    return Moments.from_state_dict(state)


def _per_sample(batch: Batch, scores: Tensor) -> Float[Tensor, "batch layer d_mlp"]:
    """Mean of the target scores of each row (``(1/Y) Σ_m``)."""
    n_rows = batch.tokens.shape[0]
    total = torch.zeros(n_rows, *scores.shape[1:], device=scores.device)
    total.index_add_(0, batch.target_row, scores)
    return total / batch.n_targets[:, None, None].to(scores.dtype)
