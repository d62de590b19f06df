"""Reports: experiment results and matplotlib figures rendered to a folder (``index.md`` + PNGs).

This module only renders: every number comes from a result that
[`tl_capability.experiments`][tl_capability.experiments] computed. Build a
[`Report`][tl_capability.report.Report], add text, results (any
[`Table`][tl_capability.tables.Table]) and figures, then
[`Report.save`][tl_capability.report.Report.save]. The figure helpers read the typed results' fields
and draw what people would rather look at than read: where a capability's neurons are (Fig. 3 of the
CNL paper), the cross-capability erase and amplify matrices (Fig. 4), accuracy against σ, erase
curves against the number of neurons, and NeurGrad against interventions.
[`add_localization`][tl_capability.report.add_localization] renders a
[`LocalizationResult`][tl_capability.experiments.suite.LocalizationResult] as a report section.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: a notebook shows the one
a cell returns, and nothing touches the global pyplot state or the user's backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from tl_capability.curves import EraseCurve
from tl_capability.masks import NeuronMask
from tl_capability.tables import Table

__all__ = [
    "Report",
    "add_localization",
    "enhancement_curves",
    "erase_curves_figure",
    "erase_matrix",
    "linearity_histogram",
    "mask_heatmap",
    "neg_scatter",
    "overlap_heatmap",
    "sigma_curves",
]


@dataclass
class Report:
    """A report being assembled; [`save`][tl_capability.report.Report.save] writes it.

    Attributes:
        title: The report's heading.
        parts: Markdown blocks and ``(file name, figure)`` pairs, in order.
    """

    title: str
    parts: list[Any] = field(default_factory=list)

    def text(self, markdown: str) -> None:
        """Adds a markdown paragraph (or heading)."""
        self.parts.append(markdown.strip() + "\n")

    def table(self, table: Table) -> None:
        """Adds an experiment's result (any [`Table`][tl_capability.tables.Table])."""
        self.parts.append(table.to_markdown())

    def figure(self, name: str, figure: Figure, caption: str = "") -> None:
        """Adds a figure, saved as ``<name>.png``."""
        self.parts.append((name, figure, caption))

    def save(self, directory: str | Path) -> Path:
        """Writes ``index.md`` and the PNGs into ``directory``; returns the index's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"# {self.title}\n"]
        for part in self.parts:
            if isinstance(part, tuple):
                name, figure, caption = part
                figure.savefig(directory / f"{name}.png", dpi=110, bbox_inches="tight")
                lines.append(f"![{caption or name}]({name}.png)\n")
                if caption:
                    lines.append(f"*{caption}*\n")
            else:
                lines.append(part)
        index = directory / "index.md"
        index.write_text("\n".join(lines))
        return index


def mask_heatmap(masks: dict[str, NeuronMask], bins: int = 64) -> Figure:
    """Where each capability's neurons are: per layer, counts in ``bins`` groups of neurons."""
    fig = Figure(figsize=(8, 1.1 * len(masks) + 0.6), layout="tight")
    axes = fig.subplots(len(masks), 1, squeeze=False)
    for ax, (name, mask) in zip(axes[:, 0], masks.items(), strict=True):
        n_layers, d_mlp = mask.tensor.shape
        width = -(-d_mlp // bins)
        padded = torch.zeros(n_layers, bins * width, dtype=torch.bool)
        padded[:, :d_mlp] = mask.tensor
        counts = padded.view(n_layers, bins, width).sum(-1)
        ax.imshow(counts, aspect="auto", cmap="Reds", interpolation="nearest")
        ax.set_ylabel("layer")
        ax.set_yticks(range(n_layers))
        ax.set_xticks([])
        ax.set_title(f"{name}: {len(mask)} neurons, per layer {mask.per_layer()}", fontsize=9)
    axes[-1, 0].set_xlabel(f"neuron index (groups of {width})")
    return fig


def _grid_figure(
    grid: torch.Tensor, rows: list[str], cols: list[str], title: str, fmt: str, **imshow: Any
) -> Figure:
    """A labelled heatmap with its values written in the cells."""
    fig = Figure(figsize=(1.1 * len(cols) + 2, 0.8 * len(rows) + 1.5), layout="tight")
    ax = fig.subplots()
    image = ax.imshow(grid, **imshow)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, format(float(grid[i, j]), fmt), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def erase_matrix(result: Table, sigma: float | None = None) -> Figure:
    """Accuracy drop of every evaluated capability (columns) when each capability's located
    neurons (rows) are erased or amplified, at one σ (default: the first), from
    [`erase`][tl_capability.experiments.erase.erase] or
    [`amplify`][tl_capability.experiments.erase.amplify]. Negative drops (gains) show in blue."""
    sigma = result.sigmas[0] if sigma is None else sigma
    rows = result.at(sigma)
    located = list(dict.fromkeys(r.located for r in rows))
    evaluated = list(dict.fromkeys(r.evaluated for r in rows))
    grid = torch.zeros(len(located), len(evaluated))
    for r in rows:
        grid[located.index(r.located), evaluated.index(r.evaluated)] = r.drop
    top = max(1.0, float(grid.abs().max()))
    fig = _grid_figure(
        grid,
        located,
        evaluated,
        f"accuracy drop (points), σ = {sigma:g}",
        ".0f",
        cmap="RdBu_r",
        vmin=-top,
        vmax=top,
    )
    fig.axes[0].set_xlabel("capability measured")
    fig.axes[0].set_ylabel("neurons intervened on")
    return fig


def overlap_heatmap(result: Table) -> Figure:
    """Overlap between capabilities' sets (from
    [`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix])."""
    names = list(result.names)
    grid = torch.zeros(len(names), len(names))
    for r in result.rows:
        grid[names.index(r.a), names.index(r.b)] = r.overlap
    return _grid_figure(
        grid, names, names, "overlap of located neurons", ".2f", cmap="Purples", vmin=0, vmax=1
    )


def sigma_curves(erased: Table, halves: Table | None = None) -> Figure:
    """Every σ-dependent number against σ: the own-capability drop of located and random sets
    (from [`erase`][tl_capability.experiments.erase.erase]) and, when given, the overlap of sets
    located on two halves of the data (from
    [`split_overlap`][tl_capability.experiments.overlap.split_overlap])."""
    own = [r for r in erased.rows if r.located == r.evaluated]
    n_panels = 3 if halves is not None else 1
    fig = Figure(figsize=(5 * n_panels, 3.6), layout="tight")
    axes = fig.subplots(1, n_panels, squeeze=False)
    ax = axes[0, 0]
    for name in dict.fromkeys(r.located for r in own):
        rows = sorted((r for r in own if r.located == name), key=lambda r: r.sigma)
        sigmas = [r.sigma for r in rows]
        (line,) = ax.plot(sigmas, [r.drop for r in rows], marker="o", label=name)
        ax.plot(sigmas, [r.random_drop for r in rows], ls="--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("σ")
    ax.set_ylabel("own accuracy drop (points)")
    ax.set_title("erased: located (solid) vs random (dashed)", fontsize=10)
    ax.legend(fontsize=8)
    if halves is not None:
        for name in dict.fromkeys(r.capability for r in halves.rows):
            split = sorted((r for r in halves.rows if r.capability == name), key=lambda r: r.sigma)
            sigmas = [r.sigma for r in split]
            axes[0, 1].plot(sigmas, [r.overlap for r in split], marker="o", label=name)
            axes[0, 2].plot(sigmas, [100 * r.fraction for r in split], marker="o", label=name)
        axes[0, 1].set_ylim(0, 1.02)
        axes[0, 1].set_title("overlap of the sets located on two halves", fontsize=10)
        axes[0, 2].set_yscale("log")
        axes[0, 2].set_title("located neurons (% of all)", fontsize=10)
        for a in axes[0, 1:]:
            a.set_xlabel("σ")
    return fig


def enhancement_curves(result: Table) -> Figure:
    """Test accuracy against fine-tuning epochs for each neuron set (from
    [`enhancement`][tl_capability.experiments.enhancement.enhancement]), titled with the
    dataset's name."""
    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.subplots()
    for label in dict.fromkeys(r.neurons for r in result.rows):
        rows = sorted((r for r in result.rows if r.neurons == label), key=lambda r: r.epochs)
        ax.plot(
            [r.epochs for r in rows],
            [r.accuracy for r in rows],
            marker="o",
            label=f"{label} ({rows[0].count})",
        )
    ax.set_xlabel("epochs of fine-tuning")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(result.dataset, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def linearity_histogram(result: Table) -> Figure:
    """The distribution over neurons of |Pearson r| under interventions (from
    [`linearity`][tl_capability.experiments.neurgrad.linearity])."""
    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.subplots()
    for group in dict.fromkeys(r.group for r in result.rows):
        values = [r.abs_r for r in result.rows if r.group == group]
        ax.hist(values, bins=20, range=(0, 1), alpha=0.6, label=f"{group} ({len(values)})")
    ax.set_xlabel("|Pearson r| of activation shift vs answer-probability change")
    ax.set_ylabel("neurons")
    ax.legend(fontsize=8)
    return fig


def neg_scatter(
    predicted: Table | Float[Tensor, "sample neuron"],
    measured: Float[Tensor, "sample neuron"] | None = None,
) -> Figure:
    """NeurGrad (x) against interventional NEG (y), with the identity line.

    Args:
        predicted: A
            [`neurgrad_agreement`][tl_capability.experiments.neurgrad.neurgrad_agreement] result
            (then no ``measured``), or NeurGrad per sample and neuron.
        measured: The interventional NEG of the same samples and neurons.
    """
    if isinstance(predicted, Table):  # a neurgrad_agreement result
        if measured is not None:
            raise TypeError("give a neurgrad_agreement result alone, or two tensors")
        predicted, measured = predicted.predicted, predicted.measured
    elif measured is None:
        raise TypeError("neg_scatter needs the measured NEG next to the predicted one")
    x, y = predicted.flatten().float(), measured.flatten().float()
    fig = Figure(figsize=(4.5, 4.5), layout="tight")
    ax = fig.subplots()
    ax.scatter(x, y, s=8, alpha=0.6)
    lim = float(torch.cat([x, y]).abs().max()) * 1.05 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="gray", lw=1)
    slope = float((x * y).sum() / (x * x).sum().clamp_min(1e-30))
    ax.plot(
        [-lim, lim],
        [-lim * slope, lim * slope],
        color="C1",
        lw=1,
        label=f"fit through 0: slope {slope:.2f}",
    )
    ax.set_xlabel("NeurGrad  ∂P/∂a · sign(a)")
    ax.set_ylabel("empirical NEG (interventions)")
    ax.legend(fontsize=8)
    return fig


def erase_curves_figure(curves: Sequence[EraseCurve], title: str | None = None) -> Figure:
    """Erase curves of every method side by side, one panel per capability (from
    [`erase_curve`][tl_capability.curves.erase_curve]).

    x: % of the model's neurons erased (log scale); y: accuracy drop (points). Each method has
    one colour: its own-capability drop is solid, its worst other-capability drop dashed, and
    random sets of the same per-layer shape dotted, with their 95 % interval shaded.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not curves:
        raise ValueError("no erase curves to draw")
    targets = list(dict.fromkeys(c.target for c in curves))
    colours = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(c.name for c in curves))}
    n_cols = min(3, len(targets))
    n_rows = -(-len(targets) // n_cols)
    fig = Figure(figsize=(4.6 * n_cols, 3.4 * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).flatten()
    for ax, target in zip(axes, targets, strict=False):
        for curve in (c for c in curves if c.target == target):
            x, colour = [100 * f for f in curve.fractions], colours[curve.name]
            ax.plot(x, curve.own_drop, color=colour, marker="o", ms=3)
            if curve.other_drops:
                ax.plot(x, curve.worst_other, color=colour, ls="--")
            ax.plot(x, curve.random_drop, color=colour, ls=":")
            low = [m - h for m, h in zip(curve.random_drop, curve.random_ci, strict=True)]
            high = [m + h for m, h in zip(curve.random_drop, curve.random_ci, strict=True)]
            ax.fill_between(x, low, high, color=colour, alpha=0.15, lw=0)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=20))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("% of neurons erased")
        ax.set_ylabel("accuracy drop (points)")
        ax.set_title(target, fontsize=10)
    for ax in axes[len(targets) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, lw=3, label=m) for m, c in colours.items()] + [
        Line2D([], [], color="black", marker="o", ms=3, label="own drop"),
        Line2D([], [], color="black", ls="--", label="worst other drop"),
        Line2D([], [], color="black", ls=":", label="random sets (95 % band)"),
    ]
    n_legend = min(len(handles), 3 * n_cols)
    fig.legend(handles=handles, loc="outside lower center", ncols=n_legend, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def add_localization(report: Report, result: Any) -> Any:
    """Adds the capability-localization section of a computed result to ``report``.

    Renders, in order: the accuracy table, where each capability's neurons are (first σ), the
    split-overlap table, the erase matrix (first σ), the σ curves, the erase table, the amplify
    matrix and the overlap between capabilities' sets. ``result`` is a
    [`LocalizationResult`][tl_capability.experiments.suite.LocalizationResult], computed with
    [`tl_capability.experiments.localization_suite`][tl_capability.experiments.suite.localization_suite]
    (this module renders only and never imports the experiments)::

        found = localization_suite(model, locate_on, evaluate_on, sigmas=(2, 3, 6), n_random=3)
        add_localization(report, found)

    Returns:
        The rendered result.
    """
    sigma = result.sigma
    report.table(result.accuracy)
    report.text("## Capability localization")
    report.figure(
        "neurons",
        mask_heatmap(result.masks),
        f"Located neurons per layer (σ = {sigma:g}); darker = more neurons.",
    )
    report.table(result.halves)
    report.figure(
        "erase-matrix",
        erase_matrix(result.erased, sigma),
        "Erasing each capability's neurons (rows) and measuring every capability.",
    )
    report.figure(
        "sigma",
        sigma_curves(result.erased, result.halves),
        "Own-capability drop, split overlap and size against σ.",
    )
    report.table(result.erased)
    flagged = result.erased.not_localized(sigma)
    if flagged:
        report.text(
            f"**Not localization:** at σ = {sigma:g} the located sets of {', '.join(flagged)} "
            "drop every capability, their own and the others alike (more than their random "
            "sets do): these neurons are critical to the model, not to one capability. Read "
            "an own drop only beside the other capabilities' drops and the random sets'."
        )
    report.figure(
        "amplify-matrix",
        erase_matrix(result.amplified, sigma),
        f"Amplifying (×{result.amplified.factor:g}) each capability's neurons (rows); negative "
        "drops are gains.",
    )
    report.figure(
        "overlap-matrix", overlap_heatmap(result.overlaps), "Overlap between capabilities."
    )
    return result
