"""The papers' experiments, on any model and dataset, each against random-neuron controls.

Results are :class:`Table` objects (``.rows``, ``.to_frame()``, ``.to_markdown()``).
Capability localization: :func:`split_overlap`, :func:`erase` (or amplify), :func:`overlap_matrix`,
:func:`enhancement` (see
:mod:`.cnl`).
Knowledge neurons: :func:`fidelity`, :func:`reliability`, :func:`decoupling` (see :mod:`.kn`).
Neuron empirical gradients: :func:`neurgrad_agreement`, :func:`linearity`, :func:`skill_probe`
(see :mod:`.neg`).
"""

from tl_capability.experiments._results import Table, mean_ci
from tl_capability.experiments.cnl import (
    SIGMAS,
    enhancement,
    erase,
    locate_scores,
    overlap_matrix,
    split_overlap,
)
from tl_capability.experiments.kn import decoupling, fidelity, knowledge_neurons, reliability
from tl_capability.experiments.neg import linearity, neurgrad_agreement, option_neg, skill_probe

__all__ = [
    "SIGMAS",
    "Table",
    "decoupling",
    "enhancement",
    "erase",
    "fidelity",
    "knowledge_neurons",
    "linearity",
    "locate_scores",
    "mean_ci",
    "neurgrad_agreement",
    "option_neg",
    "overlap_matrix",
    "reliability",
    "skill_probe",
    "split_overlap",
]
