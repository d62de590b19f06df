"""circuit_figure: a drawing of a chosen knowledge circuit."""

import pytest

from tests.helpers import CLEAN, CORRUPTED
from tests.models import HAS_BRIDGE
from tl_capability.circuits import knowledge_circuit

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs the TransformerLens bridge")


def test_the_figure_draws_the_circuit(bridge):
    from matplotlib.figure import Figure

    from tl_capability.circuit_figures import circuit_figure

    circuit = knowledge_circuit(bridge, CLEAN, CORRUPTED, n=15)
    figure = circuit_figure(circuit)
    assert isinstance(figure, Figure)
    assert len(figure.axes[0].lines) + len(figure.axes[0].patches) >= 1
