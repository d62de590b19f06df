"""The Function Vectors and PARAREL file readers, as loaders and the zoo use them."""

import json

import pytest

from tl_capability import loaders
from tl_capability.zoo import real

pytestmark = pytest.mark.core


def test_loaders_read_the_shipped_files_as_the_zoo_does(tmp_path):
    for fmt in (0, 1, 4):
        loaded = loaders.load_function_vectors(real.FV_DIR / "antonym.json", fmt, n=25, seed=3)
        shipped = real.task_dataset("antonym", n=25, fmt=fmt, seed=3)
        assert loaded.prompts == shipped.prompts and loaded.answers == shipped.answers
    by_name = loaders.load("function_vectors", "next_item", n=5, fmt=2)
    assert by_name.prompts == real.task_dataset("next_item", n=5, fmt=2).prompts
    facts = loaders.load_pararel(real.PARAREL_DIR / "trex" / "P17.jsonl", n_facts=5)
    assert facts.prompts == real.fact_dataset("P17", n_facts=5).prompts
    assert loaders.resolve("pararel:P17", n=7).prompts == facts.prompts[:7]
    # A word keeps its split in a larger or smaller file: the split hashes the input.
    pairs = json.loads((real.FV_DIR / "country-capital.json").read_text())
    (tmp_path / "country-capital.json").write_text(json.dumps(pairs[::3]))
    part = loaders.load_function_vectors(tmp_path / "country-capital.json", 1)
    full_test = {f" {y}" for _, y in real.task_pairs("country-capital", "test")}
    assert set(part.answers) <= full_test
    # Another task's file gets the generic layouts.
    (tmp_path / "my-task.json").write_text(json.dumps(pairs))
    generic = loaders.load_function_vectors(tmp_path / "my-task.json", 2, n=3)
    assert generic.name == "my-task" and generic.prompts[0].startswith("Q: ")
    with pytest.raises(ValueError, match="fmt"):
        loaders.load_function_vectors(tmp_path / "my-task.json", 4)


def test_files_in_the_wrong_format_are_refused_by_name(tmp_path):
    trex = real.PARAREL_DIR / "trex" / "P36.jsonl"
    fv = real.FV_DIR / "antonym.json"
    patterns = real.PARAREL_DIR / "patterns" / "P36.jsonl"
    with pytest.raises(ValueError, match=r"P36\.jsonl.*Function Vectors"):
        loaders.load_function_vectors(trex)
    with pytest.raises(ValueError, match=r"antonym\.json.*sub_label"):
        loaders.load_pararel(fv)
    with pytest.raises(ValueError, match=r"P36\.jsonl, line 1.*sub_label"):
        loaders.load_pararel(patterns)
    with pytest.raises(ValueError, match=r"P36\.jsonl, line 1.*pattern"):
        loaders.load_pararel(trex, trex)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"input": "a", "output": "b"}, {"input": "c"}]')
    with pytest.raises(ValueError, match=r"bad\.json: entry 1"):
        loaders.load_function_vectors(bad)
    bad.write_text('{"input": "a"}')
    with pytest.raises(ValueError, match=r"bad\.json holds a dict"):
        loaders.load_function_vectors(bad)
    only_front = tmp_path / "P1.jsonl"
    only_front.write_text('{"pattern": "[Y] is the capital of [X]."}\n')
    with pytest.raises(ValueError, match="no pattern ends with"):
        loaders.load_pararel(trex, only_front)
    with pytest.raises(ValueError, match="no templates for relation"):
        loaders.load_pararel(trex, relation="P1")
    with pytest.raises(FileNotFoundError):
        loaders.load_function_vectors(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="function_vectors:antonym"):
        loaders.resolve("function_vectors")
    with pytest.raises(ValueError, match="pararel:P36"):
        loaders.resolve("pararel")
