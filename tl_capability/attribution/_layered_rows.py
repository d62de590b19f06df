"""Integrated-gradient rows that enter the model at their own layer (the cached path).

An answer-position IG row of layer ``l`` (Dai et al., ACL 2022) replaces one neuron vector at
layer ``l`` of the last position of ``z_m``; below ``l`` it is the clean run. On the cached path
([`_rows`][tl_capability.attribution._rows]) a row is one token over the clean run's
keys and values, but it still runs every block, forward and backward, though only the blocks from
``l`` up see anything but the clean run. Here the rows of a pass share sequences that grow along the
way:

- position 0 of each sequence, the *carrier*, runs the clean token through every block;
- at the input of block ``l`` the rows of layer ``l`` are appended as copies of the carrier's
  residual (detached), so a row runs the blocks from its own layer up, forward and backward
  (about half the block work of a model's depth, and the backward pass stops at the row's own
  layer);
- a 4-D mask lets every position see the cached prefix and itself only, as on the cached path.

The model's forward pass builds one attention mask, one set of position ids and rotary tables
for the longest sequence; a forward pre-hook on every block cuts those to the positions alive
there. Whether that cut is exact depends on what a Hugging Face block reads, so
[`layered_rows_exact`][tl_capability.attribution._layered_rows.layered_rows_exact] checks it once
per model against the plain cached rows; where it differs or fails, attribution keeps the plain
rows. Attribution's first call on a model checks it on its own passes instead (every row against the
clean run where it enters its layer: ``layered_ig_grad_sum(check=True)``, see
[`tl_capability.attribution._first_call`][tl_capability.attribution._first_call]).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_capability.attribution._row_gradients import layer_row_gradients, probe_head
from tl_capability.attribution._rows import (
    ROWS_PER_SEQUENCE,
    Rows,
    cached_rows,
    clean_pass,
    over_cached_prefix,
)
from tl_capability.data import Batch
from tl_capability.options import Metric
from tl_capability.sites import (
    NeuronSite,
    ProbeMemo,
    block_modules,
    hook_signature,
    kept_until_hooks_change,
    model_device,
    probe_tolerance,
)


@dataclass(frozen=True)
class LayeredRows:
    """One pass of rows for layers ``lo .. hi - 1`` and ``chunk`` steps per sequence.

    Sequence ``s`` reads target ``owner[s]``; its row of layer ``l`` and step ``first[s] + j``
    sits at position ``1 + (l - lo) * chunk + j``. ``rows`` lists the real rows (a last chunk
    may be padded) with ``layer`` and ``step`` of each.
    """

    rows: Rows
    layer: Int[Tensor, " row"]
    step: Int[Tensor, " row"]
    lo: int
    hi: int
    chunk: int
    width: int

    def alive(self, layer: int) -> int:
        """Positions of each sequence at the input of block ``layer``."""
        return 1 + self.chunk * min(max(layer - self.lo + 1, 0), self.hi - self.lo)


def layered_rows(
    batch: Batch,
    cache: Any,
    owner: Int[Tensor, " seq"],
    first: Int[Tensor, " seq"],
    n_steps: int,
    lo: int,
    hi: int,
    chunk: int,
) -> LayeredRows:
    """The layout of one pass: sequences of targets ``owner``, steps from ``first``."""
    device = owner.device
    n_seq, n_layers = len(owner), hi - lo
    n_max = 1 + n_layers * chunk
    q = batch.target_pos[owner]
    tokens = batch.tokens[batch.target_row[owner], q][:, None].expand(-1, n_max).contiguous()
    kwargs = over_cached_prefix(batch, cache, owner, n_max)
    width = int(q.max())
    s, lay, j = (
        x.flatten()
        for x in torch.meshgrid(
            torch.arange(n_seq, device=device),
            torch.arange(lo, hi, device=device),
            torch.arange(chunk, device=device),
            indexing="ij",
        )
    )
    step = first[s] + j
    real = step < n_steps
    s, lay, j, step = s[real], lay[real], j[real], step[real]
    pos = 1 + (lay - lo) * chunk + j
    rows = Rows(tokens, s, pos, batch.target_token[owner[s]], kwargs)
    return LayeredRows(rows, lay, step, lo, hi, chunk, width)


def _cut(value: Any, n_max: int, n: int, width: int) -> Any:
    """``value`` (a block's argument) cut from ``n_max`` query positions to the first ``n``."""
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, n_max, n, width) for v in value)
    if not isinstance(value, Tensor) or n == n_max:
        return value
    if value.dim() == 4 and value.shape[-2] == n_max:  # attention mask [seq, 1, query, key]
        return value[..., :n, : width + n]
    if value.dim() in (2, 3) and value.shape[1] == n_max:  # position ids, rotary tables
        return value[:, :n]
    if value.dim() == 1 and value.shape[0] == n_max:  # cache positions
        return value[:n]
    return value


@contextlib.contextmanager
def entering_at_layers(model: Any, layout: LayeredRows) -> Iterator[None]:
    """Forward pre-hooks that grow every sequence at the blocks where its rows enter."""
    n_max = layout.alive(layout.hi - 1)

    def enter(layer: int):
        n = layout.alive(layer)

        def pre(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            hidden = args[0] if args else kwargs["hidden_states"]
            have = hidden.shape[1]
            if have > n:
                hidden = hidden[:, :n]
            elif have < n:
                carrier = hidden[:, :1].detach().expand(-1, n - have, -1)
                hidden = torch.cat([hidden, carrier], dim=1)
            cut = [_cut(a, n_max, n, layout.width) for a in args[1:]]
            new_args = (hidden, *cut) if args else args
            new_kwargs = {
                key: hidden if key == "hidden_states" else _cut(v, n_max, n, layout.width)
                for key, v in kwargs.items()
            }
            return new_args, new_kwargs

        return pre

    handles = [
        block.register_forward_pre_hook(enter(layer), with_kwargs=True)
        for layer, block in enumerate(block_modules(model))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layered_gradients(
    model: Any,
    site: NeuronSite,
    layout: LayeredRows,
    metric: Metric,
    patch_value: Float[Tensor, "row d_mlp"],
    clean: Float[Tensor, "row d_mlp"] | None = None,
) -> Float[Tensor, "row d_mlp"]:
    """Gradient of each row's metric at its own layer, its activation there first replaced by
    its ``patch_value``; the same numbers as
    [`layer_row_gradients`][tl_capability.attribution._row_gradients.layer_row_gradients] on the
    plain cached rows (which checks each row against its ``clean`` activation on the way, where
    given)."""
    with entering_at_layers(model, layout):
        return layer_row_gradients(
            model, site, layout.rows, metric, layout.layer, patch_value, clean
        )


SEQUENCE_ROWS = ROWS_PER_SEQUENCE  # rows per sequence at most, as on the plain cached rows


def plan(
    n_layers: int, n_steps: int, max_rows: int, sequence_rows: int = SEQUENCE_ROWS
) -> tuple[int, int, int]:
    """``(layers per pass, steps per sequence, sequences per pass)`` within ``max_rows`` rows,
    a sequence holding at most about ``sequence_rows`` rows (every layer's of a pass, one step
    at least). All-position rows, each a whole sequence of its own, pass ``max_rows`` there.

    Of the chunk sizes that fit, the one whose sequences run the fewest positions through the
    blocks: a sequence carries one clean position through every block, and a last chunk padded
    to the others' size carries empty rows, so 20 steps over 8 layers run as 4 chunks of 5
    (no padding, 752 block-positions) rather than 3 of 7 (one empty row per layer, 780).
    """
    group = min(n_layers, max_rows)
    cap = max(1, min(n_steps, max_rows // group, sequence_rows // group))
    chunk = min(range(1, cap + 1), key=lambda c: (block_positions(n_layers, n_steps, group, c), -c))
    return group, chunk, max(1, max_rows // (group * chunk))


def block_positions(n_layers: int, n_steps: int, group: int, chunk: int) -> int:
    """Positions one target's sequences run through the blocks, summed over blocks, in passes
    of ``group`` layers and chunks of ``chunk`` steps (padded to equal size)."""
    n_chunks = math.ceil(n_steps / chunk)
    total = 0
    for top in range(n_layers, 0, -group):
        lo = max(0, top - group)
        total += sum(1 + chunk * min(b - lo + 1, top - lo) for b in range(lo, n_layers))
    return n_chunks * total


def layered_ig_grad_sum(
    model: Any,
    site: NeuronSite,
    batch: Batch,
    cache: Any,
    acts: Float[Tensor, "target layer d_mlp"],
    alphas: Float[Tensor, " step"],
    metric: Metric,
    max_rows: int,
    passes: tuple[int, int, int] | None = None,
    check: bool = False,
) -> Float[Tensor, "target layer d_mlp"]:
    """``Σ_k ∂P/∂a (α_k a)`` of every target and layer, rows entering at their own layer, in
    passes of ``plan(…, max_rows)`` (or of ``passes``: layers, steps per sequence, sequences).

    With ``check``, every row's activation at its own layer, before it is replaced, must be
    the clean pass's ``acts`` there, else
    [`RowsInexact`][tl_capability.attribution._row_gradients.RowsInexact]: a row enters its layer's
    block as a copy of the carrier and runs the block over the cached prefix with the arguments cut
    to the live positions, so this checks the cache, the 4-D mask and the cut at every block, for
    every row of the pass, at no cost: the check of a model's first call.
    """
    device = batch.tokens.device
    n_targets, n_steps = len(batch.target_row), len(alphas)
    group, chunk, per_pass = passes or plan(site.n_layers, n_steps, max_rows)
    n_chunks = math.ceil(n_steps / chunk)
    owner = torch.arange(n_targets, device=device).repeat_interleave(n_chunks)
    first = (torch.arange(n_chunks, device=device) * chunk).repeat(n_targets)
    grad_sum = torch.zeros(n_targets, site.n_layers, site.d_mlp, device=device)
    for top in range(site.n_layers, 0, -group):
        lo = max(0, top - group)
        for start in range(0, len(owner), per_pass):
            part = slice(start, start + per_pass)
            layout = layered_rows(batch, cache, owner[part], first[part], n_steps, lo, top, chunk)
            t = owner[part][layout.rows.seq]
            clean = acts[t, layout.layer]
            value = alphas[layout.step, None] * clean
            g = layered_gradients(model, site, layout, metric, value, clean if check else None)
            grad_sum.index_put_((t, layout.layer), g, accumulate=True)
    return grad_sum


def pass_kinds(n_layers: int, n_steps: int, max_rows: int) -> set[bool]:
    """The kinds of layered passes ``plan(n_layers, n_steps, max_rows)`` runs: ``False`` for a
    pass whose rows start at the first block, ``True`` for one whose carrier runs alone below
    its lowest layer."""
    group = plan(n_layers, n_steps, max_rows)[0]
    return {top - group > 0 for top in range(n_layers, 0, -group)}


def layered_rows_known(model: Any, site: NeuronSite, kinds: set[bool]) -> bool | None:
    """What is known, under the hooks attached now, of layered rows on ``model`` for passes of
    ``kinds`` ([`pass_kinds`][tl_capability.attribution._layered_rows.pass_kinds]): ``True`` (exact:
    [`layered_rows_exact`][tl_capability.attribution._layered_rows.layered_rows_exact]'s probe said
    so, or a checked pass of every kind did), ``False`` (not), ``None`` (not yet checked)."""
    known = _EXACT.get(model, {})
    signature = hook_signature(model)

    def answer(key: Any) -> bool | None:
        entry = known.get(key)
        return entry[1] if entry is not None and entry[0] == signature else None

    whole = answer(site)
    if whole is not None:
        return whole
    each = [answer((site, kind)) for kind in kinds]
    return True if all(each) else None


def record_layered_rows(model: Any, site: NeuronSite, kinds: set[bool], exact: bool) -> None:
    """Keeps what a checked layered pass found (see
    [`layered_rows_known`][tl_capability.attribution._layered_rows.layered_rows_known]): exact for
    these kinds of passes, or not exact at all, until the hooks attached to ``model`` change."""
    known = _EXACT.setdefault(model, {})
    signature = hook_signature(model)
    if not exact:
        known[site] = (signature, False)
    for kind in kinds if exact else ():
        known[(site, kind)] = (signature, True)


_EXACT: ProbeMemo = WeakKeyDictionary()


def layered_rows_exact(model: Any, site: NeuronSite) -> bool:
    """Whether layered rows give the plain cached rows' gradients on ``model`` (a two-token
    prompt, three steps, every layer in one pass and in passes of half the layers; relative
    difference below 1e-4, or 2e-2 in half precision). Kept per model and site until the hooks
    attached to the model change."""

    def probe() -> bool:
        with probe_head():  # the head is the same on both paths; a small one is cheaper
            return _probe(model, site)

    return kept_until_hooks_change(_EXACT, model, site, probe)


def _probe(model: Any, site: NeuronSite) -> bool:
    device = model_device(model)
    tokens = torch.tensor([[0, 1, 2, 0]], device=device) % model.cfg.d_vocab
    one = torch.zeros(1, dtype=torch.long, device=device)
    batch = Batch(
        tokens,
        torch.ones_like(tokens, dtype=torch.bool),
        one,
        torch.zeros(2, dtype=torch.long, device=device),
        torch.tensor([1, 2], device=device),
        tokens[0, 2:4].clone(),
        torch.tensor([0, 1], device=device),
    )
    alphas = torch.tensor([1 / 6, 1 / 2, 5 / 6], device=device)
    try:
        acts, cache = clean_pass(model, site, batch, True)
        if cache is None:  # no usable cache even for two tokens (a very narrow window)
            return False
        # Every layer in one pass; then passes of half the layers (whose sequences start with
        # the carrier alone at the lower pass's top) holding the steps in chunks of 2 + 1 (a
        # padded last chunk, a chunk starting past step 0). One pass per group of layers: the
        # blocks' weights are what a small pass spends its time reading.
        fast = [
            layered_ig_grad_sum(model, site, batch, cache, acts, alphas, "prob", 1024, passes)
            for passes in ((site.n_layers, 3, 2), (max(1, site.n_layers // 2), 2, 4))
        ]
        slow = torch.zeros_like(fast[0])
        t, lay, k = (
            x.flatten().to(device)
            for x in torch.meshgrid(
                torch.arange(2), torch.arange(site.n_layers), torch.arange(3), indexing="ij"
            )
        )
        value = alphas[k, None] * acts[t, lay]
        g = layer_row_gradients(model, site, cached_rows(batch, cache, t), "prob", lay, value)
        slow.index_put_((t, lay), g, accumulate=True)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError):
        return False  # a block that reads the cut arguments otherwise: keep the plain rows
    scale = float(slow.abs().max())
    if not scale > 0:  # nothing to compare (e.g. a head whose probed logits are all alike)
        return False
    tol = probe_tolerance(cache.layers[0].keys.dtype) * scale
    return all(bool(torch.isfinite(f).all()) and float((f - slow).abs().max()) <= tol for f in fast)
