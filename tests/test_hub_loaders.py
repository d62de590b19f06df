"""The hub datasets' loaders, on small local files that imitate each dataset's real schema."""

import pytest

from tests.helpers import _jsonl
from tl_capability import hub_loaders

pytestmark = pytest.mark.core


def test_gsm8k(tmp_path):
    f = _jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
            {"question": "Pay 1,200 twice?", "answer": "2*1,200=2,400\n#### 2,400"},
        ],
    )
    ds = hub_loaders.load_gsm8k(f)
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
    ds = hub_loaders.load_emotion(f)
    assert ds.answers == [" joy", " fear"]
    assert ds.is_multiple_choice and ds[1]["label"] == 4 and ds[1]["choices"][4] == " fear"
    assert ds.prompts[0] == "i feel great\nEmotion:"
    csv = tmp_path / "imdb.csv"
    csv.write_text('text,label\n"a dull film",0\n"loved it",1\n')
    assert hub_loaders.load_imdb(csv).answers == [" negative", " positive"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 9}])
    with pytest.raises(ValueError, match="label 9 outside"):
        hub_loaders.load_emotion(bad)


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
    ds = hub_loaders.load_metamathqa(f)
    assert ds.answers == [" 5"] and ds.prompts == ["Question: What is 2+3?\nAnswer:"]


def test_code25k(tmp_path):
    f = _jsonl(
        tmp_path / "code.jsonl",
        [
            {"instruction": "Print hello", "input": "", "output": "print('hello')", "text": "..."},
            {"instruction": "Add", "input": "a and b", "output": "a + b" * 100, "text": "..."},
        ],
    )
    ds = hub_loaders.load_code25k(f, max_answer_chars=50)
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
    ds = hub_loaders.load_mceval8k(f)
    assert ds.answers == [" B", " A", " A"]
    assert ds.prompts[0] == "Which is a fruit?\nA. dog\nB. pear\nAnswer:"
    assert ds[1]["choices"] == [" A", " B", " C"]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"query": "q", "options": ["a"], "answer": "zz"}])
    with pytest.raises(ValueError, match="matches no option"):
        hub_loaders.load_mceval8k(bad)


def test_directory_source_picks_the_split(tmp_path):
    d = tmp_path / "gsm"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"question": "a?", "answer": "#### 1"}])
    _jsonl(
        d / "test.jsonl",
        [{"question": "b?", "answer": "#### 2"}, {"question": "c?", "answer": "#### 3"}],
    )
    assert hub_loaders.load_gsm8k(d, split="test").answers == [" 2", " 3"]
    assert hub_loaders.load_gsm8k(d, split="train", n=1).answers == [" 1"]
