"""The one check of a target dataset and the controls to keep beside it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from tl_capability.data.dataset import CapabilityDataset


def check_datasets(
    target: CapabilityDataset, controls: Mapping[str, CapabilityDataset] | None
) -> dict[str, CapabilityDataset]:
    """The one check of a target and its controls, for every localizer that takes both.

    A control that is the target cannot be both erased and kept: the same object, a control
    named as the target (by its key or its ``name``), or the same (prompt, answer) pairs in any
    order (their multiset), whatever its name.

    Returns:
        The controls as a new ``dict`` (empty for ``None``).

    Raises:
        ValueError: For a target that is not a ``CapabilityDataset``, controls that are not a
            non-empty mapping of name -> ``CapabilityDataset``, or a control that is the target.
    """
    if not isinstance(target, CapabilityDataset):
        raise ValueError(f"target must be a CapabilityDataset, got {type(target).__name__}")
    if controls is None:
        return {}
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError(
            "controls must be a non-empty mapping of name -> CapabilityDataset (or None, for "
            f"no controls), got {controls!r:.60}"
        )
    pairs = Counter(zip(target.prompts, target.answers, strict=True))
    for key, data in controls.items():
        if not isinstance(data, CapabilityDataset):
            raise ValueError(f"control {key!r} is not a CapabilityDataset")
        same_name = target.name is not None and target.name in (key, data.name)
        same_pairs = Counter(zip(data.prompts, data.answers, strict=True)) == pairs
        if data is target or same_name or same_pairs:
            raise ValueError(
                f"control {key!r} is the target itself ({target.name!r}): a mask cannot both "
                "erase and keep it"
            )
    return dict(controls)
