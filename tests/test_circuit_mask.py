"""CircuitMask: a circuit's heads and MLPs, compared by IoU and overlap, its MLPs as neurons."""

import pytest
import torch

from tests.helpers import CLEAN, CORRUPTED
from tests.models import HAS_BRIDGE
from tl_capability.circuits import CircuitMask, knowledge_circuit

pytestmark = pytest.mark.skipif(not HAS_BRIDGE, reason="needs the TransformerLens bridge")


def test_the_mask_holds_the_circuits_heads_and_mlps(bridge):
    circuit = knowledge_circuit(bridge, CLEAN, CORRUPTED, n=12)
    mask = circuit.mask
    heads = {f"a{i}.h{h}" for i, h in mask.heads.nonzero().tolist()}
    mlps = {f"m{i}" for i in mask.mlps.nonzero().flatten().tolist()}
    assert heads | mlps == set(circuit.nodes) - {"input", "logits"}
    assert mask.iou(mask) == 1 and mask.overlap(mask) == 1
    neurons = mask.neuron_mask()
    assert len(neurons) == int(mask.mlps.sum()) * bridge.cfg.d_mlp
    other = circuit.select(n=1).mask
    assert 0 <= mask.iou(other) <= 1
    with pytest.raises(ValueError, match="masks of"):
        mask.iou(CircuitMask(torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)))
