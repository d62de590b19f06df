"""Helpers shared by the tests of this folder."""

import ast
import contextlib
import io
import tokenize
from pathlib import Path
from types import SimpleNamespace

import torch


def _has_hooks(model) -> bool:
    return any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


def _capture(model, names, tokens):
    seen = {}
    hooks = [(n, lambda a, hook, n=n: seen.__setitem__(n, a.detach())) for n in names]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
    return logits, seen


TOKENS = torch.tensor([[0, 5, 6, 7], [0, 9, 10, 11]])


class _Probed:
    """A bridge-shaped stand-in over a real Hugging Face model whose forward pass does what it
    is told: raise, or return a given cache; it records every call."""

    def __init__(self, outcome, original_model=None):
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_positions=8, n_embd=8, n_layer=1, n_head=2, vocab_size=11)
        self.original_model = original_model or GPT2LMHeadModel(config)
        self.cfg = SimpleNamespace(
            architecture="GPT2LMHeadModel", is_encoder_decoder=False, d_vocab=11, n_layers=1
        )
        self.outcome, self.calls, self.fwd_hooks = outcome, [], []

    def parameters(self):
        return self.original_model.parameters()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks):
        self.fwd_hooks = list(fwd_hooks)
        try:
            yield
        finally:
            self.fwd_hooks = []

    def _output(self, tokens, kwargs, width):
        return torch.zeros(*tokens.shape, width)

    def __call__(self, tokens, **kwargs):
        self.calls.append(kwargs)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        for name, hook in self.fwd_hooks:  # the residual leaving the (only) block
            if name == "blocks.0.hook_resid_post":
                hook(self._output(tokens, kwargs, 8), None)
        logits = self._output(tokens, kwargs, 11)
        return (logits, self.outcome) if kwargs.get("return_type") == "logits_and_cache" else logits


def _filled_cache(n_tokens=2):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, n_tokens, 4), torch.zeros(1, 2, n_tokens, 4), 0)
    return cache


PACKAGE = Path(__file__).parent.parent.parent / "tl_capability"


SURFACE = (
    "hook_resid",
    "hook_post",
    "hook_pre",
    "hook_in",
    "hook_dict",
    '"blocks.',
    ".blocks[",
    "W_U",
    "b_U",
    "W_out",
    ".ln_final",
    ".unembed(",
    "original_model",
    "logits_and_cache",
)


def _code(source: str) -> list[str]:
    """The source's lines without comments and docstrings (string statements)."""
    prose: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            prose.update(range(node.lineno, node.end_lineno + 1))
    lines: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or tok.start[0] in prose:
            continue
        lines[tok.start[0]] = lines.get(tok.start[0], "") + tok.string
    return list(lines.values())


def _surface_uses(source: str) -> list[str]:
    return [word for line in _code(source) for word in SURFACE if word in line]
