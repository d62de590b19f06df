"""The papers' experiments, on any model and dataset, each against random-neuron controls.

Every experiment returns a frozen result dataclass derived from
[`Table`][tl_capability.tables.Table] (``.title``, ``.rows``, ``.to_frame()``,
``.to_markdown()``, plus what its figures need), whose rows are typed records (``row.drop``;
``row["drop"]`` still works). Random controls come from
[`tl_capability.masks.random_controls`][tl_capability.masks.random_controls], seeded explicitly.

Capability localization: [`split_overlap`][tl_capability.experiments.overlap.split_overlap],
[`erase`][tl_capability.experiments.erase.erase],
[`amplify`][tl_capability.experiments.erase.amplify],
[`overlap_matrix`][tl_capability.experiments.overlap.overlap_matrix],
[`enhancement`][tl_capability.experiments.enhancement.enhancement], and
[`localization`][tl_capability.experiments.suite.localization_suite] (all of them at once, for
[`tl_capability.report.add_localization`][tl_capability.report.add_localization]) (see
[`overlap`][tl_capability.experiments.overlap]). Knowledge neurons:
[`fidelity`][tl_capability.experiments.kn_fidelity.fidelity],
[`reliability`][tl_capability.experiments.kn_reliability.reliability],
[`decoupling`][tl_capability.experiments.kn_decoupling.decoupling],
[`fact_edits`][tl_capability.experiments.kn_fact_edits.fact_edits] (the localizers they share:
[`kn_locators`][tl_capability.experiments.kn_locators]).
Neuron empirical gradients:
[`neurgrad_agreement`][tl_capability.experiments.neurgrad.neurgrad_agreement],
[`linearity`][tl_capability.experiments.neurgrad.linearity],
[`skill_probe`][tl_capability.experiments.neurgrad.skill_probe] (see
[`neg`][tl_capability.experiments.neurgrad]).
"""

from tl_capability.experiments.enhancement import EnhancementResult, EnhancementRow, enhancement
from tl_capability.experiments.erase import (
    AmplifyResult,
    AmplifyRow,
    EraseResult,
    EraseRow,
    amplify,
    erase,
)
from tl_capability.experiments.kn_decoupling import DecouplingResult, DecouplingRow, decoupling
from tl_capability.experiments.kn_fact_edits import FactEditResult, FactEditRow, fact_edits
from tl_capability.experiments.kn_fidelity import FidelityResult, FidelityRow, fidelity
from tl_capability.experiments.kn_locators import (
    corrupt_subjects,
    knowledge_neurons,
    trace_window,
)
from tl_capability.experiments.kn_reliability import ReliabilityResult, ReliabilityRow, reliability
from tl_capability.experiments.neurgrad import (
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
from tl_capability.experiments.overlap import (
    SIGMAS,
    OverlapMatrixResult,
    OverlapRow,
    SplitOverlapResult,
    SplitOverlapRow,
    locate_scores,
    overlap_matrix,
    split_overlap,
)
from tl_capability.experiments.rome_edit import RomeEdit, rome_edit
from tl_capability.experiments.suite import (
    AccuracyResult,
    AccuracyRow,
    LocalizationResult,
    localization_suite,
)
from tl_capability.tables import Row, Table, mean_ci

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
    "FactEditResult",
    "FactEditRow",
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
    "RomeEdit",
    "Row",
    "SkillProbeResult",
    "SkillProbeRow",
    "SplitOverlapResult",
    "SplitOverlapRow",
    "Table",
    "amplify",
    "corrupt_subjects",
    "decoupling",
    "enhancement",
    "erase",
    "fact_edits",
    "fidelity",
    "knowledge_neurons",
    "linearity",
    "localization_suite",
    "locate_scores",
    "mean_ci",
    "neurgrad_agreement",
    "option_neg",
    "overlap_matrix",
    "reliability",
    "rome_edit",
    "skill_probe",
    "split_overlap",
    "trace_window",
]
