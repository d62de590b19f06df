"""The papers' experiments, on any model and dataset, each against random-neuron controls.

Every experiment returns a frozen result dataclass derived from :class:`Table` (``.title``,
``.rows``, ``.to_frame()``, ``.to_markdown()``, plus what its figures need), whose rows are
typed records (``row.drop``; ``row["drop"]`` still works). Random controls come from
:func:`tl_capability.masks.random_controls`, seeded explicitly.

Capability localization: :func:`split_overlap`, :func:`erase`, :func:`amplify`,
:func:`overlap_matrix`, :func:`enhancement`, and :func:`localization` (all of them at once,
for :func:`tl_capability.report.add_localization`) (see :mod:`.cnl`).
Knowledge neurons: :func:`fidelity`, :func:`reliability`, :func:`decoupling` (see :mod:`.kn`).
Neuron empirical gradients: :func:`neurgrad_agreement`, :func:`linearity`, :func:`skill_probe`
(see :mod:`.neg`).
"""

from tl_capability.experiments._results import Row, Table, mean_ci
from tl_capability.experiments.cnl import (
    SIGMAS,
    AccuracyResult,
    AccuracyRow,
    AmplifyResult,
    AmplifyRow,
    EnhancementResult,
    EnhancementRow,
    EraseResult,
    EraseRow,
    LocalizationResult,
    OverlapMatrixResult,
    OverlapRow,
    SplitOverlapResult,
    SplitOverlapRow,
    amplify,
    enhancement,
    erase,
    localization,
    locate_scores,
    overlap_matrix,
    split_overlap,
)
from tl_capability.experiments.kn import (
    DecouplingResult,
    DecouplingRow,
    FidelityResult,
    FidelityRow,
    ReliabilityResult,
    ReliabilityRow,
    decoupling,
    fidelity,
    knowledge_neurons,
    reliability,
)
from tl_capability.experiments.neg import (
    AgreementRow,
    LinearityResult,
    LinearityRow,
    NeurgradAgreementResult,
    SkillProbeResult,
    SkillProbeRow,
    linearity,
    neurgrad_agreement,
    option_neg,
    skill_probe,
)

__all__ = [
    "SIGMAS",
    "AccuracyResult",
    "AccuracyRow",
    "AgreementRow",
    "AmplifyResult",
    "AmplifyRow",
    "DecouplingResult",
    "DecouplingRow",
    "EnhancementResult",
    "EnhancementRow",
    "EraseResult",
    "EraseRow",
    "FidelityResult",
    "FidelityRow",
    "LinearityResult",
    "LinearityRow",
    "LocalizationResult",
    "NeurgradAgreementResult",
    "OverlapMatrixResult",
    "OverlapRow",
    "ReliabilityResult",
    "ReliabilityRow",
    "Row",
    "SkillProbeResult",
    "SkillProbeRow",
    "SplitOverlapResult",
    "SplitOverlapRow",
    "Table",
    "amplify",
    "decoupling",
    "enhancement",
    "erase",
    "fidelity",
    "knowledge_neurons",
    "linearity",
    "localization",
    "locate_scores",
    "mean_ci",
    "neurgrad_agreement",
    "option_neg",
    "overlap_matrix",
    "reliability",
    "skill_probe",
    "split_overlap",
]
