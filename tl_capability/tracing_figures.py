"""Figures of causal traces ([`causal_trace`][tl_capability.tracing.causal_trace]), drawn as
ROME draws them: one fact's ``[tokens, layers]`` scores, and the average indirect effect per
layer of one trace or several (hidden state, MLP, attention).

Figures are pyplot-free ``matplotlib.figure.Figure`` objects, as
[`tl_capability.report`][tl_capability.report]'s: a notebook shows the one a cell returns, and
[`Report.figure`][tl_capability.report.Report.figure] saves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tl_capability.tracing import CausalTrace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["aie_curves", "trace_heatmap"]

_COLOURS = {None: "Purples", "mlp": "Greens", "attn": "Reds"}
_NAMES = {None: "hidden state", "mlp": "MLP", "attn": "attention"}


def trace_heatmap(result: CausalTrace, fact: int = 0) -> Figure:
    """One fact's trace: ``P(answer)`` per restored (token, layer), the subject's tokens
    starred, the colour scale starting at the fact's ``low``.

    Args:
        result: A [`CausalTrace`][tl_capability.tracing.CausalTrace].
        fact: The fact's index in the traced dataset.

    Returns:
        The figure.

    Raises:
        IndexError: For a fact the result does not hold.
    """
    from matplotlib.figure import Figure

    scores, (first, end) = result.scores[fact], result.subject_ranges[fact]
    labels = [t + ("*" if first <= k < end else "") for k, t in enumerate(result.tokens[fact])]
    fig = Figure(figsize=(0.22 * scores.shape[1] + 2.5, 0.3 * len(labels) + 1.4), layout="tight")
    ax = fig.subplots()
    image = ax.pcolormesh(scores.numpy(), cmap=_COLOURS[result.kind], vmin=float(result.low[fact]))
    ax.invert_yaxis()
    ax.set_yticks([k + 0.5 for k in range(len(labels))], labels)
    ticks = range(0, scores.shape[1], max(1, scores.shape[1] // 10))
    ax.set_xticks([k + 0.5 for k in ticks], ticks)
    window = f"centre of {result.window} restored {_NAMES[result.kind]} layers"
    ax.set_xlabel("single restored layer" if result.kind is None else window)
    ax.set_title(f"restoring the {_NAMES[result.kind]} after corrupting the subject (*)")
    fig.colorbar(image, ax=ax).ax.set_title(f"p({result.answers[fact].strip()})", fontsize=8)
    return fig


def aie_curves(*results: CausalTrace) -> Figure:
    """The average indirect effect per layer at the last subject token
    ([`aie`][tl_capability.tracing.CausalTrace.aie]) of each trace, with its total effect.

    Args:
        results: Traces of the same model (e.g. ``kind=None``, ``"mlp"`` and ``"attn"``).

    Returns:
        The figure.

    Raises:
        ValueError: Without a trace.
    """
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no trace to draw")
    fig = Figure(figsize=(5.5, 3.4), layout="tight")
    ax = fig.subplots()
    for result in results:
        colour = {None: "tab:purple", "mlp": "tab:green", "attn": "tab:red"}[result.kind]
        ax.plot(result.aie.numpy(), marker="o", ms=3, color=colour, label=_NAMES[result.kind])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer (centre of the window for MLP and attention)")
    ax.set_ylabel("AIE at the last subject token")
    ax.set_title(f"{len(results[0].scores)} facts, total effect {results[0].total_effect:.3f}")
    ax.legend(fontsize=8)
    return fig
