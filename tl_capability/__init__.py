"""tl_capability: find the neurons behind a language model's capabilities, and edit them.

A TransformerLens plugin. It works on any model with MLP neuron hooks (TransformerLens 3.x
``HookedTransformer`` and 4.x ``TransformerBridge``) and ships a small trained model, the zoo
model ([`tl_capability.zoo`][tl_capability.zoo]), so that everything runs offline.

See the README for the quickstart and ``tutorials/`` for the methods.
"""

import importlib as _importlib
from typing import Any as _Any

from tl_capability.attribution import AttributionConfig, NeuronScores, attribute, ig_alphas
from tl_capability.budget import budget_mask, holdout
from tl_capability.circuit_figures import circuit_figure
from tl_capability.circuits import (
    CircuitMask,
    Faithfulness,
    KnowledgeCircuit,
    faithfulness,
    knowledge_circuit,
)
from tl_capability.curves import EraseCurve, erase_curve
from tl_capability.data import Batch, CapabilityDataset, TokenizedSample, batches, tokenize
from tl_capability.edits import EditHandle, edit_knowledge, erase_weights, finetune_neurons
from tl_capability.empirical_neg import EmpiricalNEG, empirical_neg
from tl_capability.evaluate import accuracy, answer_correct, answer_probability
from tl_capability.interventions import ablate, answer_positions, mean_activations
from tl_capability.learned import LearnConfig, LearnedMask, learn_gates, learn_mask
from tl_capability.localization import LocateConfig, locate, rank_neurons
from tl_capability.masks import NeuronMask, coarse_masks, random_controls, refine, select
from tl_capability.options import (
    AllPositionMethod,
    AttributionMethod,
    Gate,
    IGRule,
    InterventionMode,
    LocateMethod,
    Metric,
    Positions,
    Reduce,
    Side,
    Site,
    Suppression,
    check_option,
)
from tl_capability.rankings import contrastive_scores, iterative_ranking
from tl_capability.sites import NeuronSite, neuron_site, position_free, require_eval
from tl_capability.tracing import CausalTrace, causal_trace
from tl_capability.tracing_figures import trace_heatmap

__version__ = "0.1.0"

__all__ = [
    "AllPositionMethod",
    "AttributionConfig",
    "AttributionMethod",
    "Batch",
    "CapabilityDataset",
    "CausalTrace",
    "CircuitMask",
    "EditHandle",
    "EmpiricalNEG",
    "EraseCurve",
    "Faithfulness",
    "Gate",
    "IGRule",
    "InterventionMode",
    "KnowledgeCircuit",
    "LearnConfig",
    "LearnedMask",
    "LocateConfig",
    "LocateMethod",
    "Metric",
    "NeuronMask",
    "NeuronScores",
    "NeuronSite",
    "Positions",
    "Reduce",
    "Side",
    "Site",
    "Suppression",
    "TokenizedSample",
    "__version__",
    "ablate",
    "accuracy",
    "answer_correct",
    "answer_positions",
    "answer_probability",
    "attribute",
    "batches",
    "budget_mask",
    "causal_trace",
    "check_option",
    "circuit_figure",
    "coarse_masks",
    "contrastive_scores",
    "edit_knowledge",
    "empirical_neg",
    "erase_curve",
    "erase_weights",
    "faithfulness",
    "finetune_neurons",
    "holdout",
    "ig_alphas",
    "iterative_ranking",
    "knowledge_circuit",
    "learn_gates",
    "learn_mask",
    "locate",
    "mean_activations",
    "neuron_site",
    "position_free",
    "random_controls",
    "rank_neurons",
    "refine",
    "require_eval",
    "select",
    "tokenize",
    "trace_heatmap",
]

# Submodules with heavier imports (plots, pandas, the experiments) load on first access, so
# `import tl_capability` stays quick and `tl_capability.zoo` still works without an import.
_LAZY = ("zoo", "experiments", "report", "models", "loaders", "cli", "demo")


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        return _importlib.import_module(f"tl_capability.{name}")
    raise AttributeError(f"module 'tl_capability' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
