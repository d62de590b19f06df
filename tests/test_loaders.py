"""The hub loaders, on small local files that imitate each dataset's real schema."""

import json

import pytest

from tl_capability import loaders

pytestmark = pytest.mark.core


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_gsm8k(tmp_path):
    f = _jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
            {"question": "Pay 1,200 twice?", "answer": "2*1,200=2,400\n#### 2,400"},
        ],
    )
    ds = loaders.load_gsm8k(f)
    assert ds.name == "gsm8k"
    assert ds.prompts[0] == "Question: Tom has 3 apples and buys 4. How many?\nAnswer:"
    assert ds.answers == [" 7", " 2400"]


def test_emotion_and_imdb(tmp_path):
    f = _jsonl(
        tmp_path / "emotion.jsonl",
        [
            {"text": "i feel great", "label": 1},
            {"text": "so scared", "label": 4},
        ],
    )
    ds = loaders.load_emotion(f)
    assert ds.answers == [" joy", " fear"]
    assert ds.is_multiple_choice and ds[1]["label"] == 4 and ds[1]["choices"][4] == " fear"
    assert ds.prompts[0] == "i feel great\nEmotion:"
    csv = tmp_path / "imdb.csv"
    csv.write_text('text,label\n"a dull film",0\n"loved it",1\n')
    assert loaders.load_imdb(csv).answers == [" negative", " positive"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 9}])
    with pytest.raises(ValueError, match="label 9 outside"):
        loaders.load_emotion(bad)


def test_metamathqa(tmp_path):
    f = _jsonl(
        tmp_path / "mm.jsonl",
        [
            {
                "query": "What is 2+3?",
                "response": "2+3=5.\nThe answer is: 5",
                "type": "GSM_Rephrased",
                "original_question": "2+3?",
            },
        ],
    )
    ds = loaders.load_metamathqa(f)
    assert ds.answers == [" 5"] and ds.prompts == ["Question: What is 2+3?\nAnswer:"]


def test_code25k(tmp_path):
    f = _jsonl(
        tmp_path / "code.jsonl",
        [
            {"instruction": "Print hello", "input": "", "output": "print('hello')", "text": "..."},
            {"instruction": "Add", "input": "a and b", "output": "a + b" * 100, "text": "..."},
        ],
    )
    ds = loaders.load_code25k(f, max_answer_chars=50)
    assert ds.prompts[0] == "Print hello\n```python\n"
    assert ds.prompts[1] == "Add\na and b\n```python\n"
    assert ds.answers[0] == "print('hello')" and len(ds.answers[1]) == 50


def test_mceval8k_answer_forms(tmp_path):
    f = _jsonl(
        tmp_path / "test.jsonl",
        [
            {"query": "Which is a fruit?", "options": ["dog", "pear"], "answer": 1},
            {"question": "Sky color?", "choices": ["blue", "red", "green"], "answer": "A"},
            {"text": "Opposite of hot?", "options": ["cold", "warm"], "label": "cold"},
        ],
    )
    ds = loaders.load_mceval8k(f)
    assert ds.answers == [" B", " A", " A"]
    assert ds.prompts[0] == "Which is a fruit?\nA. dog\nB. pear\nAnswer:"
    assert ds[1]["choices"] == [" A", " B", " C"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"query": "q", "options": ["a"], "answer": "zz"}])
    with pytest.raises(ValueError, match="matches no option"):
        loaders.load_mceval8k(bad)


def test_directory_source_picks_the_split(tmp_path):
    d = tmp_path / "gsm"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"question": "a?", "answer": "#### 1"}])
    _jsonl(
        d / "test.jsonl",
        [{"question": "b?", "answer": "#### 2"}, {"question": "c?", "answer": "#### 3"}],
    )
    assert loaders.load_gsm8k(d, split="test").answers == [" 2", " 3"]
    assert loaders.load_gsm8k(d, split="train", n=1).answers == [" 1"]


def test_schema_errors_and_registry(tmp_path):
    f = _jsonl(tmp_path / "x.jsonl", [{"q": "a"}])
    with pytest.raises(ValueError, match="lack columns"):
        loaders.load_gsm8k(f)
    with pytest.raises(ValueError, match="unknown dataset"):
        loaders.load("nope")
    g = _jsonl(tmp_path / "g.jsonl", [{"question": "a?", "answer": "#### 1"}])
    assert loaders.load("gsm8k", g).answers == [" 1"]
    assert set(loaders.LOADERS) == {
        "gsm8k",
        "emotion",
        "imdb",
        "metamathqa",
        "code25k",
        "mceval8k",
        "function_vectors",
        "pararel",
    }


def test_hub_names_fail_offline_with_a_clear_error():
    """With HF_DATASETS_OFFLINE=1 a hub name is not fetched (the real code path is taken): the
    error names the dataset and says what to do without a network."""
    with pytest.raises(ConnectionError, match=r"'openai/gsm8k' from the Hugging Face Hub .*local"):
        loaders.load_gsm8k("openai/gsm8k")
    with pytest.raises(ConnectionError, match=r"'someone/prompts' from the Hugging Face Hub"):
        loaders.resolve("someone/prompts", n=2)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_resolve_refuses_a_sample_count_that_is_not_positive(n):
    """n=0 used to mean 200 samples for zoo capabilities."""
    with pytest.raises(ValueError, match="n must be a positive integer"):
        loaders.resolve("addition", n=n)


def test_resolve_refuses_an_unknown_zoo_split():
    """Any split but 'test' used to give training samples silently."""
    with pytest.raises(ValueError, match="validation"):
        loaders.resolve("addition", split="validation", n=4)
    assert len(loaders.resolve("addition", split="train", n=4)) == 4


@pytest.mark.parametrize(
    "spec", ["./missing.jsonl", "data/missing.csv", "emotion:./missing.jsonl", "../x/"]
)
def test_missing_local_files_are_reported_as_missing(tmp_path, monkeypatch, spec):
    """A mistyped path used to be looked up on the Hub ("couldn't reach ...")."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        loaders.resolve(spec, n=2)
