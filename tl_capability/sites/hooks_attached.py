"""Which hooks are attached to a model, and facts kept until they change: the hook signature
([`hook_signature`][tl_capability.sites.hook_signature]) that probe memos
([`kept_until_hooks_change`][tl_capability.sites.kept_until_hooks_change]) key on, hooks marked
[`position_free`][tl_capability.sites.position_free], and whether the head or any hook point
carries a user's hook. Part of [`tl_capability.sites`][tl_capability.sites]."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

#: Probe answers kept per model, then per key: ``{key: (hook signature, answer)}``.
ProbeMemo = WeakKeyDictionary[Any, dict[Any, tuple[tuple[int, ...], bool]]]


def kept_until_hooks_change(
    memo: ProbeMemo, model: Any, key: Any, probe: Callable[[], bool]
) -> bool:
    """``probe()``, kept in ``memo`` per model and ``key`` until the hooks attached to the model
    change ([`hook_signature`][tl_capability.sites.hook_signature])."""
    answer = known_until_hooks_change(memo, model, key)
    if answer is None:
        signature = hook_signature(model)
        answer = probe()
        memo.setdefault(model, {})[key] = (signature, answer)
    return answer


def known_until_hooks_change(memo: ProbeMemo, model: Any, key: Any) -> bool | None:
    """The answer ``memo`` keeps for the model and ``key`` while the hooks attached to it are
    those it was found under; ``None`` where it is still to be found."""
    signature, answer = memo.get(model, {}).get(key, (None, None))
    return answer if signature == hook_signature(model) else None


def record_until_hooks_change(
    memo: ProbeMemo, model: Any, key: Any, answer: bool, signature: tuple[int, ...]
) -> None:
    """Keeps ``answer`` in ``memo`` for the model and ``key``, found while the hooks attached
    to it had ``signature`` ([`hook_signature`][tl_capability.sites.hook_signature], taken
    once the finding passes are done and their own temporary hooks removed: a model's first
    pass may attach framework hooks of its own)."""
    memo.setdefault(model, {})[key] = (signature, answer)


def hook_signature(model: Any) -> tuple[int, ...]:
    """The ids of every forward and forward-pre hook registered on the model's modules: facts
    probed once per model are probed again when they change. Ids are unique per registration,
    so swapping one hook for another (same count, other function) is seen too."""
    return tuple(
        key
        for module in model.modules()
        for hooks in (module._forward_pre_hooks, module._forward_hooks)
        for key in hooks
    )


_POSITION_FREE = "__tl_capability_position_free__"
HookFn = TypeVar("HookFn", bound=Callable[..., Any])


def position_free(hook: HookFn) -> HookFn:
    """Marks a hook function as acting on every position alike (it never indexes positions),
    so that attribution and NEG keep their fast cached rows while it is attached (see
    [`resolve_use_cache`][tl_capability.sites.resolve_use_cache]). The library's own
    [`NeuronMask.hooks`][tl_capability.masks.NeuronMask.hooks] without ``positions`` are
    marked. A bound method is marked through its function (for every instance of its class).
    Returns the function itself.

    Raises:
        TypeError: For a callable that takes no attributes (``__slots__``): wrap it in a
            function.
    """
    try:
        setattr(hook, _POSITION_FREE, True)
    except AttributeError:
        function = getattr(hook, "__func__", None)  # a bound method
        if function is None:
            raise TypeError(
                f"cannot mark {hook!r} (it takes no attributes): wrap it in a function"
            ) from None
        setattr(function, _POSITION_FREE, True)
    return hook


def hooks_are_position_free(model: Any) -> bool:
    """Whether every hook of the user's on the model is marked
    [`position_free`][tl_capability.sites.position_free]: the hooks on its hook points
    (temporary or permanent; TransformerLens 4 keeps the user's function on each handle as
    ``user_hook``, and where it does not they count as positional) and plain PyTorch hooks on
    any of its modules (as other steering libraries attach). The frameworks' own hooks do not
    count: TransformerLens's (the hook points' wrappers, the permanent ones it wires some
    bridges with), and those transformers installs to capture its layers' outputs."""
    for handle in _hook_point_handles(model.modules()):
        fn = getattr(handle, "user_hook", None)
        if handle.is_permanent and (fn is None or _is_framework(fn)):
            continue
        if not getattr(fn, _POSITION_FREE, False):
            return False
    for module in model.modules():
        for hooks in (
            module._forward_pre_hooks,
            module._forward_hooks,
            module._backward_pre_hooks,
            module._backward_hooks,
        ):
            for fn in hooks.values():
                if not _is_framework(fn) and not getattr(fn, _POSITION_FREE, False):
                    return False
    return True


# Packages whose hooks are machinery, not the user's: TransformerLens's hook points and wiring,
# the output-capturing hooks transformers installs on a model's layers, accelerate, torch.
_FRAMEWORKS = ("transformer_lens", "transformers", "accelerate", "torch")


def _is_framework(fn: Any) -> bool:
    """Whether ``fn`` is defined in one of the ``_FRAMEWORKS``."""
    module = getattr(getattr(fn, "func", fn), "__module__", None) or ""
    return module.split(".")[0] in _FRAMEWORKS


def _hook_point_handles(modules: Any) -> Iterator[Any]:
    """The TransformerLens hook handles (forward and backward) of the hook points among
    ``modules``."""
    for m in modules:
        # From the instance's own attributes: a module without them would otherwise go through
        # nn.Module.__getattr__ and an AttributeError each (most of a model's modules).
        attributes = vars(m)
        yield from attributes.get("fwd_hooks", ())
        yield from attributes.get("bwd_hooks", ())


def head_has_hooks(model: Any) -> bool:
    """Whether a hook point of ``ln_final`` or the unembedding carries a hook (forward or
    backward): what a pass that unembeds chosen rows only would run differently from the
    model's own. Hooks on the embedding or inside the blocks run the same way in both. Only
    hook points count: TransformerLens puts module hooks of its own on some models' modules."""
    heads = [getattr(model, name, None) for name in ("ln_final", "unembed")]
    modules = (m for head in heads if head is not None for m in head.modules())
    return any(True for _ in _hook_point_handles(modules))


def hook_points_in_use(model: Any) -> bool:
    """Whether any TransformerLens hook point of the model carries a temporary hook (forward or
    backward): the hooks users attach, through ``model.hooks`` or ``add_hook``. Permanent ones
    do not count: TransformerLens 4 wires some bridges' hook points (BERT, OPT) with permanent
    hooks of its own."""
    return any(not h.is_permanent for h in _hook_point_handles(model.modules()))
