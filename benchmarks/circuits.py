"""Knowledge circuits: EAP (every edge from one corrupted pass, one clean pass and one backward
pass) against a plain loop that patches one edge per forward pass, and a run on SmolLM2-135M.

``speed``: a random-weight GPT-2 bridge (``--layers``, ``--width``, ``--heads``); EAP's time and
peak extra memory against the loop's (one corrupted pass, then one patched clean pass per edge:
what EAP-IG's ``get_scores_exact`` runs), in this process, the ratio printed; it also prints
how well the EAP scores rank the patched effects (Spearman over all edges).

``smollm2``: ``knowledge_circuit`` on the P36 facts (capitals) of the shipped PARAREL data,
template 0, each fact corrupted by the subject of another fact of the same token length (and
that fact's answer as the corrupted answer); prints the time, the top edges, the layers of the
top-``--n`` circuit and its faithfulness against random circuits, and writes the figure.

    python benchmarks/circuits.py speed [--layers 4] [--width 128] [--heads 4]
    python benchmarks/circuits.py smollm2 [--facts 10] [--n 200] [--method eap] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._rss import PeakRSS
from tl_capability import _circuit_data as cd
from tl_capability import _circuit_graph as cg
from tl_capability.circuits import faithfulness, knowledge_circuit
from tl_capability.data import CapabilityDataset

PROMPTS = ["the cat of bob is", "a dog of ann was", "the son of tom is", "a hat of amy is"]
CORRUPT = ["the cat of joe is", "a dog of sue was", "the son of ian is", "a hat of kim is"]


def per_edge_loop(model: Any, clean: CapabilityDataset, bad: CapabilityDataset) -> torch.Tensor:
    """The metric change of patching each edge alone (one patched pass per edge)."""
    graph = cg.Graph.of(model)
    pairs = cd.pairs_of(model, clean, bad)
    ((tokens, bad_tokens, last, answer, other),) = cd.batches(model, pairs, len(pairs.answer))
    measure = cd.metric_fn("logit_diff", last, answer, other)
    out = torch.zeros(graph.n_parents, graph.n_children)
    with cg.split_inputs(model):
        buffer = torch.zeros(*tokens.shape, graph.n_parents, model.cfg.d_model)
        cg.record_pass(model, graph, bad_tokens, buffer, 1.0)
        with torch.no_grad():
            base = measure(model(tokens)).mean()
        for u, c in graph.valid.nonzero().tolist():
            outside = torch.zeros(graph.n_parents, graph.n_children)
            outside[u, c] = 1.0
            out[u, c] = (
                measure(cg.patched_pass(model, graph, tokens, buffer, outside)).mean() - base
            )
    return out


def speed(args: argparse.Namespace) -> None:
    from transformer_lens import TransformerBridge

    from tests.models import save_hf_model

    config = dict(n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_inner=4 * args.width)
    path = save_hf_model("gpt2", Path(tempfile.mkdtemp()), **config)
    model = TransformerBridge.boot_transformers(str(path)).eval()
    clean = CapabilityDataset.from_pairs(PROMPTS, ["x"] * 4)
    bad = CapabilityDataset.from_pairs(CORRUPT, ["y"] * 4)
    knowledge_circuit(model, clean, bad)  # warm-up
    with PeakRSS() as eap_mem:
        start = time.perf_counter()
        result = knowledge_circuit(model, clean, bad, batch_size=4)
        eap_s = time.perf_counter() - start
    with PeakRSS() as loop_mem:
        start = time.perf_counter()
        exact = per_edge_loop(model, clean, bad)
        loop_s = time.perf_counter() - start
    valid = result.graph.valid
    a, b = result.scores[valid], exact[valid]
    rank = torch.corrcoef(torch.stack([a.argsort().argsort(), b.argsort().argsort()]).float())[0, 1]
    print(f"model: gpt2 bridge, {args.layers} layers, width {args.width}, {args.heads} heads")
    print(f"edges: {int(valid.sum())}, samples: {len(PROMPTS)}, threads {torch.get_num_threads()}")
    print(f"EAP: {eap_s:.3f} s, peak extra {eap_mem.extra_mb:.0f} MiB")
    print(f"per-edge patching loop: {loop_s:.2f} s, peak extra {loop_mem.extra_mb:.0f} MiB")
    print(f"ratio (loop / EAP): {loop_s / eap_s:.0f}x")
    print(f"Spearman(EAP score, patched effect) over all edges: {float(rank):.3f}")


def corrupted_facts(model: Any, data: CapabilityDataset) -> tuple[CapabilityDataset, ...]:
    """Each fact with the subject of the next fact (cyclically) of the same token length."""
    tok = model.tokenizer
    rows = list(zip(data.data["prompt"], data.data["answer"], data.data["subject"], strict=True))
    length = [len(tok(p, add_special_tokens=False)["input_ids"]) for p, _, _ in rows]
    keep, bad_prompts, bad_answers = [], [], []
    for i, (prompt, _, subject) in enumerate(rows):
        for step in range(1, len(rows)):
            j = (i + step) % len(rows)
            swapped = prompt.replace(subject, rows[j][2])
            same = len(tok(swapped, add_special_tokens=False)["input_ids"]) == length[i]
            if same and rows[j][1] != rows[i][1]:
                keep.append(i)
                bad_prompts.append(swapped)
                bad_answers.append(rows[j][1])
                break
    clean = CapabilityDataset.from_pairs([rows[i][0] for i in keep], [rows[i][1] for i in keep])
    return clean, CapabilityDataset.from_pairs(bad_prompts, bad_answers)


def smollm2(args: argparse.Namespace) -> None:
    from tl_capability import zoo
    from tl_capability.circuit_figures import circuit_figure
    from tl_capability.zoo import real

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = zoo.load_model("smollm2-135m")
    data = real.fact_dataset("P36", n_facts=args.facts, templates=[0], model=model)
    clean, bad = corrupted_facts(model, data)
    print(f"{len(clean)} facts, e.g. {clean.data['prompt'][0]!r} vs {bad.data['prompt'][0]!r}")
    start = time.perf_counter()
    result = knowledge_circuit(model, clean, bad, args.method, steps=args.steps, batch_size=4)
    edges = int(result.graph.valid.sum())
    print(f"{args.method}: {time.perf_counter() - start:.1f} s for {edges} edges")
    print(f"metric clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f}")
    for parent, child, score in result.edges(15):
        print(f"  {parent:>8} -> {child:<12} {score:+.4f}")
    circuit = result.select(n=args.n)
    print(
        f"top-{args.n} circuit: {circuit.n_edges} edges after pruning, {len(circuit.nodes)} nodes"
    )
    print(f"layers: {circuit.mask.layers}; heads {int(circuit.mask.heads.sum())}, "
          f"MLPs {circuit.mask.mlps.nonzero().flatten().tolist()}")  # fmt: skip
    start = time.perf_counter()
    faith = faithfulness(model, clean, bad, circuit, n_random=args.random, batch_size=4)
    random = [round(v, 3) for v in faith.random_normalized]
    print(f"faithfulness ({time.perf_counter() - start:.1f} s): circuit {faith.circuit:.3f}, "
          f"clean {faith.clean:.3f}, corrupted {faith.corrupted:.3f}, normalized "
          f"{faith.normalized:.3f}; random {random}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    circuit_figure(circuit).savefig(out / "circuit.png", dpi=150)
    print(f"figure: {out / 'circuit.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--width", type=int, default=128)
    s.add_argument("--heads", type=int, default=4)
    r = sub.add_parser("smollm2")
    r.add_argument("--facts", type=int, default=10)
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--method", default="eap")
    r.add_argument("--steps", type=int, default=5)
    r.add_argument("--random", type=int, default=5)
    r.add_argument("--out", default="circuits-smollm2")
    args = parser.parse_args()
    speed(args) if args.command == "speed" else smollm2(args)


if __name__ == "__main__":
    main()
