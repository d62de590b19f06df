"""The first answer-position call on a model checks its fast paths on the call's own passes.

Attribution's fast paths rest on facts about the model, each checked once per model (and again
where the hooks attached to it change): the neuron hooks carry ``d_mlp`` values
([`neuron_site`][tl_capability.sites.neuron_site]), ``ln_final`` and the unembedding alone give
the model's logits ([`head_is_separable`][tl_capability._answer_head.head_is_separable]), rows run
over the clean run's key/value cache under a 4-D mask reproduce the full pass
([`supports_kv_cache`][tl_capability.sites.supports_kv_cache]), and rows entering at their own
layer, with the blocks' arguments cut to the live positions, run as the plain cached rows do
([`layered_rows_exact`][tl_capability.attribution._layered_rows.layered_rows_exact]). Each has a
probe of its own: a few short passes, and on a CPU a short pass costs reading every weight of the
model, so on a 6-layer, 768-wide model the probes took twice as long as the two-prompt call they
served.

At the answer position the first call reads the same facts off its own passes instead:

- its clean pass runs to the logits, with the cache the model's forward pass makes itself: the
  hooks' widths, the head (its logits at the targets against the model's own) and the class of
  the cache (a ``DynamicCache``, filled) are read off it, with each probe's own test;
- its integrated-gradient rows check themselves: a row reaches its own layer unpatched, so
  the activation it carries there, before it is replaced, must be the clean pass's. A layered
  row enters its layer's block as a copy of the carrier and runs that block over the cached
  prefix, under the 4-D mask, with the mask, position ids and rotary tables cut to the live
  positions; every row of every pass of the call is so compared, at every block, for free.
  That is the cache probe's test (rows over the prefix under the 4-D mask reproduce the full
  pass: the mask obeyed, attention following the position ids and not the keys' indices, the
  cache read at all) and the layered probe's (the cut arguments exact), on forward values at
  each row's entry; the gradients above it are not compared again, and they come from the
  same blocks under the same cut arguments;
- where the call's rows are not layered (``grad_x_act``, ``neurgrad``, or a model whose layered
  rows were refused), two copies of one target's row are run over the cache and compared with
  the clean pass: the cache probe's test on the call's data (one short pass).

Where a check fails or a checked pass raises, the model's own probe decides (with its warning),
and the batch runs on the path it leaves. A first batch too large to unembed whole (more than
``2**25`` logits) runs the probes instead; so does a call that keeps checkpoints (its
fingerprint names the path) or that asks for ``use_cache=True`` (refused up front where the
model has no cached path).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tl_capability._answer_head import (
    check_pending,
    final_residual,
    head_matches,
    require_separable_head,
)
from tl_capability.attribution._layered_rows import (
    layered_ig_grad_sum,
    layered_rows_known,
    record_layered_rows,
)
from tl_capability.attribution._row_gradients import RowsInexact
from tl_capability.attribution._rows import CleanRun, cached_rows, clean_run, usable_cache
from tl_capability.data import Batch
from tl_capability.options import Metric
from tl_capability.sites import (
    NeuronSite,
    final_resid_hook_name,
    hooks_are_position_free,
    kv_cache_known,
    may_have_kv_cache,
    own_cache_verdict,
    probe_tolerance,
    record_kv_cache,
    supports_kv_cache,
    unembed_input_hook,
)

#: Logits a first clean pass may compute whole (batch × positions × vocabulary) to check the
#: head and the cache on the way; a larger first batch runs the probes instead.
LOOK_LOGITS = 2**25

_FAILED = (RowsInexact, RuntimeError, ValueError, TypeError, IndexError, KeyError)


class FirstCall:
    """The checks an answer-position call still owes ``model``, done on its passes.

    Attributes:
        kv: Whether the cached path is still to be checked (the call then runs over the cache
            until a check says otherwise).
        use_cache: Whether the call's rows run over the cache; set by the caller, turned off
            by a check that fails.
    """

    def __init__(
        self,
        model: Any,
        site: NeuronSite,
        method: str,
        use_cache: bool | None,
        kinds: set[bool],
    ):
        self.model, self.site, self.method, self.kinds = model, site, method, kinds
        rows = method != "activation"
        self.head = rows and check_pending(model) and unembed_input_hook(model) is None
        self.kv = bool(
            rows
            and use_cache is None
            and kv_cache_known(model) is None
            and hooks_are_position_free(model)
            and may_have_kv_cache(model)
        )
        self.use_cache = self.kv

    def clean(self, batch: Batch) -> CleanRun:
        """The batch's clean pass, with whatever checks are due read off it (raising for a
        width or a head that fails its check)."""
        model, site = self.model, self.site
        if (self.head or self.kv) and batch.tokens.numel() * model.cfg.d_vocab > LOOK_LOGITS:
            self._probe_instead()
        want = self.use_cache and self.method != "activation"
        own = self.kv and want
        final = self.head or own
        try:
            run = clean_run(model, site, batch, want, final=final, logits=self.head, own_cache=own)
        except (TypeError, NotImplementedError):
            if not own:
                raise
            self._no_cache()  # a forward pass that takes no cache: the probe's "no"
            run = clean_run(model, site, batch, False, final=final, logits=self.head)
        if self.head:
            self.head = False
            head_matches(model, run.logits, run.final, final_resid_hook_name(model))
            require_separable_head(model)
        if not own or not self.kv:
            return run
        width = batch.tokens.shape[1]
        verdict = own_cache_verdict(model, run.cache, width)
        if verdict is False:
            self._no_cache(recorded=True)
            return CleanRun(run.acts, None, run.final)
        cache = usable_cache(model, site, run.cache, width)
        if verdict is None or cache is None or run.final is None:
            # These tokens cannot decide (a window shorter than the batch or than its rows):
            # the probe does, on its own tokens.
            self.kv = False
            self.use_cache = supports_kv_cache(model)
            cache = cache if self.use_cache else None
        return CleanRun(run.acts, cache, run.final)

    def ig_grad_sum(
        self,
        batch: Batch,
        run: CleanRun,
        alphas: Float[Tensor, " step"],
        metric: Metric,
        max_rows: int,
    ) -> Float[Tensor, "target layer d_mlp"] | None:
        """``Σ_k ∂P/∂a (α_k a)`` by layered rows where they are (or are found) exact, checking
        the cache on the way where it is still to be checked; ``None`` where the call takes the
        plain cached rows instead (over
        [`rows_checked`][tl_capability.attribution._first_call.FirstCall.rows_checked]'s cache)."""
        model, site = self.model, self.site
        known = layered_rows_known(model, site, self.kinds)
        if known is False:
            return None
        check = known is None or self.kv
        try:
            grad_sum = layered_ig_grad_sum(
                model, site, batch, run.cache, run.acts, alphas, metric, max_rows, check=check
            )
        except _FAILED as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            # The cache or the cut: the plain rows, whose cache rows_checked checks.
            record_layered_rows(model, site, self.kinds, False)
            return None
        if check:
            record_layered_rows(model, site, self.kinds, True)
            if self.kv:
                self.kv = False
                record_kv_cache(model, True)
        return grad_sum

    def rows_checked(self, batch: Batch, run: CleanRun) -> Any:
        """The cache plain cached rows may run over: ``run.cache`` once two copies of one
        target's row over it end the last block as the clean pass does (where the cache is
        still to be checked), else ``None`` (the general path)."""
        if not self.kv or run.cache is None:
            return run.cache
        self.kv = False
        if _rows_match(self.model, batch, run):
            record_kv_cache(self.model, True)
            return run.cache
        if supports_kv_cache(self.model):  # the probe passes where the call's data did not
            record_kv_cache(self.model, False, warn=True)
        self.use_cache = False
        return None

    def _probe_instead(self) -> None:
        if self.head:
            self.head = False
            require_separable_head(self.model)
        if self.kv:
            self.kv = False
            self.use_cache = supports_kv_cache(self.model)

    def _no_cache(self, recorded: bool = False) -> None:
        self.kv = False
        self.use_cache = False
        if not recorded:
            record_kv_cache(self.model, False)


def _rows_match(model: Any, batch: Batch, run: CleanRun) -> bool:
    """Whether two copies of the row of the target with the longest prefix, run over the cache
    under the cached rows' 4-D mask, end the last block as the clean pass does there."""
    t = int(batch.target_pos.argmax())
    targets = torch.full((2,), t, device=batch.tokens.device)
    rows = cached_rows(batch, run.cache, targets)
    try:
        with torch.no_grad():
            out = final_residual(model, rows.tokens, [], **rows.forward_kwargs)
    except _FAILED as error:
        if isinstance(error, torch.OutOfMemoryError):
            raise
        return False
    got = out[rows.seq, rows.pos].float()
    want = run.final[t].float()
    scale = max(float(want.abs().max()), 1.0)
    tol = probe_tolerance(run.cache.layers[0].keys.dtype)
    return bool(torch.isfinite(got).all()) and float((got - want).abs().max()) <= tol * scale
