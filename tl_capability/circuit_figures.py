"""A drawing of a knowledge circuit ([`KnowledgeCircuit`][tl_capability.circuits.KnowledgeCircuit]
with its edges chosen): nodes by layer (``input`` at the bottom, ``logits`` at the top, a
layer's heads left of its MLP), edges as lines coloured by the sign of their score (blue: the
edge's corruption lowers the metric, red: raises it) and as wide as ``|score|``. Edges into a
head's query, key or value input end at the head (a key/value group's at each of its heads in
the circuit).

The figure is a pyplot-free ``matplotlib.figure.Figure``, as
[`tl_capability.report`][tl_capability.report]'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tl_capability.circuits import KnowledgeCircuit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["circuit_figure"]


def _position(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    """``(x, y)`` of a node: heads at ``x = h``, the MLP right of them, a layer two rows."""
    if name == "input":
        return (n_heads / 2, 0.0)
    if name == "logits":
        return (n_heads / 2, 2.0 * n_layers + 1)
    if name.startswith("m"):
        return (n_heads + 0.5, 2.0 * int(name[1:]) + 2)
    layer, head = name[1:].split(".h")
    return (float(head), 2.0 * int(layer) + 1)


def _targets(child: str, graph: Any, nodes: set[str]) -> list[str]:
    """The drawn node(s) of a node input: its head or MLP; a key/value group's heads in the
    circuit (its first head when none is)."""
    target = child.split("<")[0]
    if ".g" not in target:
        return [target]
    layer, group = target[1:].split(".g")
    size = graph.n_heads // graph.n_kv_heads
    heads = [f"a{layer}.h{int(group) * size + j}" for j in range(size)]
    return [h for h in heads if h in nodes] or heads[:1]


def circuit_figure(circuit: KnowledgeCircuit, max_edges: int = 300) -> Figure:
    """Draws the chosen circuit.

    Args:
        circuit: A circuit whose edges were chosen (``select`` or ``knowledge_circuit(n=...)``).
        max_edges: Draw at most this many edges (the largest ``|score|``).

    Returns:
        The figure.

    Raises:
        ValueError: For a circuit whose edges were not chosen.
    """
    from matplotlib.figure import Figure

    graph = circuit.graph
    edges = circuit.edges()[:max_edges]
    nodes = set(circuit.nodes)
    width = max((abs(s) for *_, s in edges), default=1.0) or 1.0
    fig = Figure(figsize=(2 + 0.6 * (graph.n_heads + 2), 1.5 + 0.35 * graph.n_layers))
    ax = fig.subplots()
    for parent, child, score in reversed(edges):
        for target in _targets(child, graph, nodes):
            (x0, y0), (x1, y1) = (
                _position(n, graph.n_heads, graph.n_layers) for n in (parent, target)
            )
            colour = "tab:blue" if score < 0 else "tab:red"
            ax.plot([x0, x1], [y0, y1], color=colour, lw=0.3 + 3 * abs(score) / width, alpha=0.6)
    for name in nodes:
        x, y = _position(name, graph.n_heads, graph.n_layers)
        face = "tab:green" if name.startswith("m") else "white"
        ax.scatter([x], [y], s=220, color=face, edgecolors="black", zorder=3)
        ax.annotate(name, (x, y), fontsize=5, ha="center", va="center", zorder=4)
    ax.set_yticks([2 * layer + 1.5 for layer in range(graph.n_layers)])
    ax.set_yticklabels([f"layer {layer}" for layer in range(graph.n_layers)], fontsize=7)
    ax.set_xticks([])
    ax.set_title(
        f"{circuit.method.upper()} circuit: {circuit.n_edges} edges, {len(nodes)} nodes "
        f"({circuit.metric})"
    )
    fig.tight_layout()
    return fig
