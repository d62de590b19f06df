"""tracing_figures: the heatmap of one fact's trace and the AIE curves of several traces."""

import pytest
from matplotlib.figure import Figure

import tl_capability as tlc
from tests.helpers import KINDS, traced_facts_fixture, traced_model_fixture, traces_fixture  # noqa: F401 (fixtures used by name)
from tl_capability.tracing_figures import aie_curves, trace_heatmap

pytestmark = pytest.mark.core


def test_figures(traces):
    for kind in KINDS:
        assert isinstance(trace_heatmap(traces[kind], 1), Figure)
    assert isinstance(aie_curves(*traces.values()), Figure)
    assert tlc.trace_heatmap is trace_heatmap
    with pytest.raises(ValueError):
        aie_curves()
