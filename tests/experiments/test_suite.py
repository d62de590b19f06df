"""The localization suite is the experiments it bundles."""

import pytest
import torch

from tl_capability import (
    accuracy,
    attribute,
    select,
    zoo,
)
from tl_capability.experiments import (
    amplify,
    erase,
    split_overlap,
)


def test_localization_is_the_experiments_it_bundles(zoo_model):
    from tl_capability.experiments import (
        LocalizationResult,
        localization_suite,
        overlap_matrix,
    )

    locate = {n: zoo.dataset(n, n=12, split="train") for n in ("sentiment", "sort")}
    evaluate = {n: zoo.dataset(n, n=20, seed=4) for n in ("sentiment", "sort")}
    stages = []
    found = localization_suite(
        zoo_model, locate, evaluate, sigmas=(2.0, 3.0), n_random=2, seed=1, factor=3.0,
        stage=stages.append, method="grad_x_act",
    )  # fmt: skip
    assert isinstance(found, LocalizationResult) and found.sigma == 2.0
    assert stages == ["accuracy", "locate", "split overlap", "erase", "amplify"]
    assert [(r.capability, r.accuracy) for r in found.accuracy.rows] == [
        (n, pytest.approx(100 * accuracy(zoo_model, d))) for n, d in evaluate.items()
    ]
    for name, data in locate.items():
        expected = attribute(zoo_model, data, "grad_x_act", progress=False)
        torch.testing.assert_close(found.scores[name].values, expected.values)
        assert found.masks[name] == select(expected, sigma=2.0)
    kwargs = {"sigmas": (2.0, 3.0), "seed": 1, "method": "grad_x_act"}
    assert found.halves == split_overlap(zoo_model, locate, **kwargs)
    assert found.erased == erase(zoo_model, locate, evaluate, n_random=2, scores=found.scores,
                                 **kwargs)  # fmt: skip
    assert found.amplified == amplify(zoo_model, locate, evaluate, factor=3.0, sigmas=(2.0,),
                                      n_random=1, seed=1, scores=found.scores)  # fmt: skip
    assert found.overlaps == overlap_matrix(found.masks)
    with pytest.raises(ValueError, match="sigmas"):
        localization_suite(zoo_model, locate, evaluate, sigmas=())
