import json

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_capability import CapabilityDataset, batches, tokenize
from tl_capability.data import prepends_bos

pytestmark = pytest.mark.core


def test_from_pairs_and_access():
    ds = CapabilityDataset.from_pairs(["1+1=", "2+2="], ["2", "4"], name="add")
    assert len(ds) == 2 and ds.name == "add"
    assert ds.prompts == ["1+1=", "2+2="] and ds.answers == ["2", "4"]
    assert ds[1] == {"prompt": "2+2=", "answer": "4"}
    assert not ds.is_multiple_choice


def test_bad_datasets_are_refused():
    with pytest.raises(ValueError, match="empty"):
        CapabilityDataset.from_pairs([], [])
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        CapabilityDataset.from_pairs(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="sample 1 .* the answer is empty"):
        CapabilityDataset.from_pairs(["a", "b"], ["c", ""])
    with pytest.raises(ValueError, match="needs a 'answer' column"):
        CapabilityDataset(datasets.Dataset.from_dict({"prompt": ["a"]}))
    with pytest.raises(ValueError, match="is not choices"):
        CapabilityDataset.from_pairs(["q"], ["a"], choices=[["a", "b"]], labels=[1])
    with pytest.raises(ValueError, match="not an index"):
        CapabilityDataset.from_pairs(["q"], ["a"], choices=[["a", "b"]], labels=[2])


def test_multiple_choice_columns():
    ds = CapabilityDataset.from_pairs(
        ["q1", "q2"], ["b", "a"], choices=[["a", "b"]] * 2, labels=[1, 0]
    )
    assert ds.is_multiple_choice


def test_from_file_jsonl_and_csv(tmp_path):
    rows = [{"q": "1+2=", "a": "3"}, {"q": "2+2=", "a": "4"}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    ds = CapabilityDataset.from_file(jsonl, prompt_column="q", answer_column="a")
    assert ds.prompts == ["1+2=", "2+2="] and ds.name == "d"
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,answer\nab,ba\ncd,dc\n")
    assert CapabilityDataset.from_file(csv).answers == ["ba", "dc"]
    out = tmp_path / "round.jsonl"
    ds.to_jsonl(out)
    assert CapabilityDataset.from_file(out).prompts == ds.prompts
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.txt").write_text("a")
        CapabilityDataset.from_file(tmp_path / "x.txt")


def test_split_is_disjoint_and_complete():
    ds = CapabilityDataset.from_pairs([f"p{i}" for i in range(10)], ["a"] * 10)
    a, b = ds.split(0.5, seed=3)
    assert len(a) == 5 and len(b) == 5
    assert set(a.prompts).isdisjoint(b.prompts)
    assert set(a.prompts) | set(b.prompts) == set(ds.prompts)
    assert ds.split(0.5, seed=3)[0].prompts == a.prompts


def test_tokenize_prompt_gets_bos_answer_does_not(model):
    ds = CapabilityDataset.from_pairs(["ab"], ["cd"])
    (s,) = tokenize(model, ds)
    tok = model.tokenizer
    assert prepends_bos(model)
    assert s.prompt == (tok.bos_token_id, *tok("ab", add_special_tokens=False)["input_ids"])
    assert s.answer == tuple(tok("cd", add_special_tokens=False)["input_ids"])
    assert s.input_length == 4


def test_prompt_longer_than_context_names_the_sample(model):
    ds = CapabilityDataset.from_pairs(["ok", "x" * (model.cfg.n_ctx + 5)], ["y", "z"])
    with pytest.raises(ValueError, match=r"sample 1 .* context is"):
        tokenize(model, ds)


def test_answer_that_tokenizes_to_nothing(model):
    class Tok:
        bos_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[] if t == "-" else [5] for t in texts]}

    class Stub:
        cfg = model.cfg
        tokenizer = Tok()

    ds = CapabilityDataset.from_pairs(["a", "b"], ["c", "-"])
    with pytest.raises(ValueError, match=r"sample 1 .* tokenizes to no tokens"):
        tokenize(Stub(), ds)


def test_batch_positions_predict_answer_tokens(model):
    ds = CapabilityDataset.from_pairs(["abc", "d"], ["xy", "zzz"])
    samples = tokenize(model, ds)
    (batch,) = batches(model, ds, batch_size=8)
    for t in range(len(batch.target_row)):
        r = batch.target_row[t].item()
        s = samples[batch.sample_index[r].item()]
        m = batch.target_index[t].item()
        assert batch.target_token[t].item() == s.answer[m]
        # the token at target_pos is the last of z_m = prompt + answer[:m]
        z = s.prompt + s.answer[:m]
        assert batch.target_pos[t].item() == len(z) - 1
        assert batch.tokens[r, : len(z)].tolist() == list(z)
    assert batch.n_targets.tolist() == [len(samples[i].answer) for i in batch.sample_index]
    assert batch.mask.sum(1).tolist() == [samples[i].input_length for i in batch.sample_index]


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text("abc123 ", min_size=1, max_size=8), st.text("xyz9", min_size=1, max_size=4)
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 5),
)
def test_batches_cover_every_sample_once(model, pairs, batch_size):
    ds = CapabilityDataset.from_pairs([p for p, _ in pairs], [a for _, a in pairs])
    seen = torch.cat([b.sample_index for b in batches(model, ds, batch_size)])
    assert sorted(seen.tolist()) == list(range(len(pairs)))


def test_bad_batch_size(model):
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(model, CapabilityDataset.from_pairs(["a"], ["b"]), 0))


def test_model_without_tokenizer_is_refused(model):
    class NoTok:
        cfg = model.cfg
        tokenizer = None

    with pytest.raises(ValueError, match="no tokenizer"):
        tokenize(NoTok(), CapabilityDataset.from_pairs(["a"], ["b"]))


def test_tokenize_reads_each_column_a_constant_number_of_times(model, monkeypatch):
    # Reading dataset.prompts materialises the whole column: once per sample is quadratic.
    reads = {"prompts": 0, "answers": 0}

    def counted(column):
        original = getattr(CapabilityDataset, column)

        def read(self):
            reads[column] += 1
            return original.fget(self)

        return property(read)

    for column in reads:
        monkeypatch.setattr(CapabilityDataset, column, counted(column))
    for n in (3, 40):
        reads.update(prompts=0, answers=0)
        ds = CapabilityDataset.from_pairs([f"p{i}" for i in range(n)], ["a"] * n)
        assert len(tokenize(model, ds)) == n
        assert reads == {"prompts": 1, "answers": 1}


def test_a_dataset_is_tokenized_once_until_what_its_tokens_depend_on_changes(model, monkeypatch):
    from tl_capability.data import tokenization as data_module

    encoded = []
    real = data_module._encode
    monkeypatch.setattr(
        data_module, "_encode", lambda tok, texts: encoded.append(1) or real(tok, texts)
    )
    ds = CapabilityDataset.from_pairs(["ab", "abc"], ["cd", "d"])
    first = tokenize(model, ds)
    first.append("the caller's list is its own")
    again = tokenize(model, ds)
    assert again == first[:-1] and len(encoded) == 3  # prompts, answers and both, once

    class OtherTokenizer:  # same ids, another object: tokenized again
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    class Other:
        cfg = model.cfg
        tokenizer = OtherTokenizer(model.tokenizer)

    assert tokenize(Other(), ds) == again and len(encoded) == 6
    monkeypatch.setattr(model.cfg, "default_prepend_bos", False, raising=False)
    no_bos = tokenize(model, ds)
    assert len(encoded) == 9 and no_bos[0].prompt == again[0].prompt[1:]
    ds.data = ds.data.select([1])
    assert len(tokenize(model, ds)) == 1 and len(encoded) == 12


def test_a_tokenizer_edited_in_place_tokenizes_again(zoo_model):
    """Adding tokens or changing a special token after loading is common; the ids kept from
    before the edit would be silently wrong."""
    import copy

    class Model:  # the zoo model's config with a tokenizer of its own to edit
        cfg = zoo_model.cfg
        tokenizer = copy.deepcopy(zoo_model.tokenizer)

    model = Model()
    ds = CapabilityDataset.from_pairs(["ab"], ["c"])
    before = tokenize(model, ds)[0].prompt
    model.tokenizer.add_tokens(["ab"])
    after = tokenize(model, ds)[0].prompt
    assert after == tokenize(model, CapabilityDataset.from_pairs(["ab"], ["c"]))[0].prompt
    assert len(after) == len(before) - 1  # "ab" is one token now
    model.tokenizer.add_special_tokens({"bos_token": "<s2>"})
    assert tokenize(model, ds)[0].prompt[0] == model.tokenizer.bos_token_id != before[0]


def test_count_batches_matches_batches_for_causal_and_masked_samples():
    """Masked-LM batches hold equal lengths only, so the count is per length run."""
    from tl_capability.data import TokenizedSample, count_batches

    causal = [TokenizedSample((0,) * n, (1,)) for n in (1, 2, 2, 3, 5)]
    masked = [TokenizedSample((0,) * n, (1,), (0,)) for n in (1, 2, 2, 3, 5)]
    assert count_batches(causal, 2) == 3
    assert count_batches(masked, 2) == 4  # runs of lengths 1 | 2 2 | 3 | 5
    with pytest.raises(ValueError, match="positive integer"):
        count_batches(causal, 0)


def test_characters_the_tokenizer_does_not_know_are_refused(model):
    """The zoo's character tokenizer maps unknown characters to <pad> (its unk token); they
    used to be scored silently as padding."""
    ds = CapabilityDataset.from_pairs(["12+34=", "Héllo!"], ["46", " x"])
    with pytest.raises(ValueError, match=r"sample 1 .*prompt.*'!'.*'H'.*'é'"):
        tokenize(model, ds)
    ds = CapabilityDataset.from_pairs(["12+34=", "1+1="], ["46", " 2€"])
    with pytest.raises(ValueError, match=r"sample 1 .*answer.*'€'"):
        tokenize(model, ds)
    # the unk token written out in the text is the text's own business
    literal = model.tokenizer.unk_token
    assert len(tokenize(model, CapabilityDataset.from_pairs([f"a{literal}b"], ["c"]))) == 1


def test_unknown_characters_are_refused_for_masked_lms():
    from types import SimpleNamespace

    from tests.models import masked_lm_tokenizer

    bert = SimpleNamespace(
        cfg=SimpleNamespace(architecture="BertForMaskedLM", n_ctx=64),
        tokenizer=masked_lm_tokenizer(),
    )
    ok = CapabilityDataset.from_pairs(["paris is the capital of [MASK]."], [" france"])
    assert len(tokenize(bert, ok)) == 1
    bad = CapabilityDataset.from_pairs(["Paris is the capital of [MASK]."], [" france"])
    with pytest.raises(ValueError, match=r"sample 0 .*'P'"):
        tokenize(bert, bad)


def test_byte_level_tokenizers_without_an_unk_token_still_work():
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["hello world", "the capital of france"], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    assert tok.unk_token_id is None
    gpt = SimpleNamespace(cfg=SimpleNamespace(n_ctx=64, default_prepend_bos=False), tokenizer=tok)
    ds = CapabilityDataset.from_pairs(["Héllo wörld €"], [" ünïcode"])
    (sample,) = tokenize(gpt, ds)
    assert tok.decode(sample.prompt) == "Héllo wörld €"


def test_tokenize_leaves_the_garbage_collector_as_it_found_it(model):
    """tokenize pauses the collector while it builds samples; an error must not leave it off."""
    import gc

    bad = CapabilityDataset.from_pairs(["12+34=", "Héllo!"], ["46", " x"])
    assert gc.isenabled()
    with pytest.raises(ValueError, match="does not know"):
        tokenize(model, bad)
    assert gc.isenabled()
    gc.disable()
    try:
        tokenize(model, CapabilityDataset.from_pairs(["1+1="], ["2"]))
        assert not gc.isenabled()  # a caller who turned it off keeps it off
    finally:
        gc.enable()
