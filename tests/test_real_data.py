"""The shipped real data (Function Vectors tasks, PARAREL facts), its loaders, subjects, and the
check for answers a tokenizer splits unexpectedly."""

import json
from types import SimpleNamespace

import pytest

from tl_capability import loaders
from tl_capability.data import CapabilityDataset, answer_token_mismatches, check_answer_tokens
from tl_capability.evaluate import answer_correct, correct_subset
from tl_capability.zoo import real

pytestmark = pytest.mark.core

SHIPPED_TASKS = {
    "capitalize",
    "present-past",
    "singular-plural",
    "country-capital",
    "antonym",
    "english-french",
    "landmark-country",
    "person-occupation",
    "next_item",
}


# ---------------------------------------------------------------------- shipped files


def test_every_task_and_relation_ships_with_licences_and_readmes():
    assert set(real.task_names()) == SHIPPED_TASKS
    for task in real.task_names():
        assert (real.FV_DIR / f"{task}.json").is_file()
    for relation in real.relation_names():
        assert (real.PARAREL_DIR / "trex" / f"{relation}.jsonl").is_file()
        assert (real.PARAREL_DIR / "patterns" / f"{relation}.jsonl").is_file()
    for folder in (real.FV_DIR, real.PARAREL_DIR):
        assert "MIT License" in (folder / "LICENSE").read_text()
        assert "cite" in (folder / "README.md").read_text().lower()
    size = sum(f.stat().st_size for f in real.DATA_DIR.rglob("*") if f.is_file())
    assert size < 2_000_000


def test_at_least_five_formats_per_task_and_templates_per_relation():
    for task in real.task_names():
        formats = real.task_formats(task)
        assert len(formats) >= 5
        assert len({f.template for f in formats}) == len(formats)
        assert any(f.shots == 0 for f in formats) and any(f.shots > 0 for f in formats)
    for relation in real.relation_names():
        templates = real.relation_templates(relation)
        assert len(templates) >= 5 and len(set(templates)) == len(templates)
        assert real.causal_templates(templates) == templates


def test_answers_get_the_space_the_format_puts_before_them():
    for task in real.task_names():
        for fmt in range(len(real.task_formats(task))):
            data = real.task_dataset(task, n=5, fmt=fmt)
            for prompt, answer in zip(data.prompts, data.answers, strict=True):
                assert not prompt.endswith(" ") and not answer.startswith("  ")
                # A space before the answer, unless the format opens a quote for it.
                assert answer.startswith(" ") != prompt.endswith('"')
    fmt = real.PromptFormat("([X]:[Y])")
    assert fmt.query("a") == "(a:" and fmt.answer("b") == "b" and fmt.example("a", "b") == "(a:b)"


# ---------------------------------------------------------------------- splits and determinism


@pytest.mark.parametrize("task", sorted(SHIPPED_TASKS))
def test_splits_are_disjoint_and_demonstrations_come_from_train(task):
    test = dict(real.task_pairs(task, "test"))
    train = dict(real.task_pairs(task, "train"))
    assert test and train and not set(test) & set(train)
    assert len(test) >= 100  # the accuracy tables use 100 test samples
    data = real.task_dataset(task, n=30, fmt=real.ARROW)
    for prompt, answer in zip(data.prompts, data.answers, strict=True):
        *demos, query = prompt.split("\n")
        x = query.removesuffix(" ->")
        assert test[x] == answer[1:]
        assert len(demos) == real.ARROW.shots
        for demo in demos:
            dx, dy = demo.split(" -> ")
            assert train[dx] == dy and dx != x
    on_train = real.task_dataset(task, n=20, split="train", fmt=real.ARROW)
    for prompt in on_train.prompts:
        *demos, query = prompt.split("\n")
        assert query.removesuffix(" ->") not in [d.split(" -> ")[0] for d in demos]


def test_inputs_with_two_answers_are_in_no_split():
    pairs = [("i", "ii"), ("i", "j"), ("a", "b"), ("a", "b")]
    both = real.split_pairs(pairs, "test") + real.split_pairs(pairs, "train")
    assert both == [("a", "b")]
    with pytest.raises(ValueError, match="split"):
        real.split_pairs(pairs, "validation")


def test_task_samples_are_deterministic_under_a_seed():
    a = real.task_dataset("antonym", n=40, fmt=3, seed=1)
    b = real.task_dataset("antonym", n=40, fmt=3, seed=1)
    assert a.prompts == b.prompts and a.answers == b.answers and a.name == "antonym"
    assert real.task_dataset("antonym", n=40, fmt=3, seed=2).prompts != a.prompts
    # Every format of a task shows the same samples in the same order.
    zero = real.task_dataset("antonym", n=40, fmt=1, seed=1)
    assert zero.answers == a.answers


def test_shots_and_bad_arguments():
    zero = real.PromptFormat("The past tense of [X] is [Y]")
    data = real.task_dataset("present-past", n=3, fmt=zero, shots=2)
    assert all(p.count("\n") == 2 and p.endswith(" is") for p in data.prompts)
    bare = real.task_dataset("present-past", n=3, fmt=real.ARROW, shots=0)
    assert all("\n" not in p and p.endswith(" ->") for p in bare.prompts)
    with pytest.raises(ValueError, match="unknown task"):
        real.task_dataset("nope")
    with pytest.raises(ValueError, match="fmt"):
        real.task_dataset("antonym", fmt=99)
    with pytest.raises(ValueError, match="fewer than n"):
        real.task_dataset("country-capital", n=1000)
    with pytest.raises(ValueError, match="split"):
        real.task_dataset("antonym", split="dev")
    with pytest.raises(ValueError, match=r"\[Y\]"):
        real.PromptFormat("[Y] is the past of [X]")


# ---------------------------------------------------------------------- facts


def test_fact_dataset_has_every_fact_and_paraphrase_with_its_subject():
    data = real.fact_dataset("P36", n_facts=4)
    n_templates = len(real.relation_templates("P36"))
    assert len(data) == 4 * n_templates and data.name == "P36"
    assert {"subject", "fact", "template"} <= set(data.data.column_names)
    for row in data:
        assert row["subject"] in row["prompt"] and row["answer"].startswith(" ")
        assert "[X]" not in row["prompt"] and "[Y]" not in row["prompt"]
    per_fact = real.facts("P36", n=4)
    assert [d.name for d in per_fact] == list(dict.fromkeys(data.subjects))
    for d in per_fact:
        assert len(d) == n_templates and len(set(d.prompts)) == n_templates
        assert set(d.subjects) == {d.name} and len(set(d.answers)) == 1
    two = real.fact_dataset("P36", n_facts=3, templates=[0, real.relation_templates("P36")[2]])
    assert len(two) == 6 and set(two.data["template"]) == {0, 2}
    with pytest.raises(ValueError, match="unknown relation"):
        real.fact_dataset("P999")
    with pytest.raises(ValueError, match="templates"):
        real.fact_dataset("P36", templates=[42])


def test_subjects_with_two_objects_are_dropped():
    facts = [("Europe", "French"), ("Europe", "German"), ("Haiti", "French"), ("Haiti", "French")]
    assert real.unique_facts(facts) == [("Haiti", "French")]
    subjects = [s for s, _ in real.relation_facts("P37")]
    assert len(subjects) == len(set(subjects))


# ---------------------------------------------------------------------- loaders


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


def test_pararel_patterns_whose_answer_is_not_last_are_skipped():
    patterns = real.pararel_patterns("P36")
    usable = real.causal_templates(patterns)
    assert 0 < len(usable) < len(patterns)
    assert "[Y] is the capital of [X]." in patterns and "[Y] is the capital of [X]." not in usable
    data = loaders.load_pararel(
        real.PARAREL_DIR / "trex" / "P36.jsonl",
        real.PARAREL_DIR / "patterns" / "P36.jsonl",
        n_facts=3,
    )
    assert len(data) == 3 * len(usable)
    assert data[0] == {
        "prompt": "The capital of Cook County is",
        "answer": " Chicago",
        "subject": "Cook County",
        "fact": 0,
        "template": 0,
    }
    assert "Cook County's capital," in data.prompts  # "[X]'s capital, [Y]."


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


# ---------------------------------------------------------------------- subjects


def test_subjects_are_validated_and_survive_every_copy(tmp_path):
    prompts = ["The capital of France is", "Rome is in"]
    data = CapabilityDataset.from_pairs(prompts, [" Paris", " Italy"], subjects=["France", "Rome"])
    assert data.subjects == ["France", "Rome"]
    assert CapabilityDataset.from_pairs(prompts, [" a", " b"]).subjects is None
    with pytest.raises(ValueError, match=r"sample 1 \('Rome is in'\).*'Paris'"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["France", "Paris"])
    with pytest.raises(ValueError, match="sample 0"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["", "Rome"])
    with pytest.raises(ValueError, match="1 subject for 2 prompts"):
        CapabilityDataset.from_pairs(prompts, [" a", " b"], subjects=["France"])
    assert data.select([1]).subjects == ["Rome"]
    assert sorted(data.shuffle(3).subjects) == ["France", "Rome"]
    first, second = data.split(0.5)
    assert first.subjects + second.subjects in (["France", "Rome"], ["Rome", "France"])
    data.to_jsonl(tmp_path / "d.jsonl")
    back = CapabilityDataset.from_file(tmp_path / "d.jsonl")
    assert back.subjects == ["France", "Rome"] and back.prompts == prompts


# ---------------------------------------------------------------------- answer tokens


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer that knows "hello" and " world" as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_answers_split_across_the_prompt_boundary_are_named(bpe):
    ok = CapabilityDataset.from_pairs(["hello", "say hello"], [" world", " world"], name="greet")
    assert answer_token_mismatches(bpe, ok) == []
    check_answer_tokens(bpe, ok)
    model = SimpleNamespace(cfg=SimpleNamespace(), tokenizer=bpe)
    check_answer_tokens(model, ok)
    bad = CapabilityDataset.from_pairs(["hello", "hel"], [" world", "lo"], name="greet")
    assert answer_token_mismatches(bpe, bad) == [1]
    with pytest.raises(ValueError, match=r"sample 1 \(prompt 'hel', answer 'lo'\) of greet"):
        check_answer_tokens(model, bad)


def test_shipped_data_has_no_split_answers_for_a_character_tokenizer():
    from tests.models import char_tokenizer

    tok = char_tokenizer()
    check_answer_tokens(tok, real.task_dataset("present-past", n=20))
    assert len(real.fact_dataset("P1376", n_facts=3, model=tok)) == 15


# ---------------------------------------------------------------------- correct subset


def test_correct_subset_keeps_what_the_model_answers(zoo_model):
    from tl_capability import zoo

    data = zoo.dataset("addition", n=60)
    correct = answer_correct(zoo_model, data)
    kept, n = correct_subset(zoo_model, data)
    assert n == int(correct.sum()) == len(kept) and kept.name == "addition"
    assert kept.prompts == [p for p, c in zip(data.prompts, correct.tolist(), strict=True) if c]
    wrong = CapabilityDataset.from_pairs(["1+1="], ["7"], name="wrong")
    with pytest.raises(ValueError, match="none of the 1 samples of wrong"):
        correct_subset(zoo_model, wrong)
