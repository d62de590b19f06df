"""demo: each experiment computed once by ``run``, and the flag on sets that break every
capability (the command itself in test_cli.py)."""


def test_demo_computes_each_experiment_once(tmp_path, monkeypatch):
    """The demo used to locate the facts' knowledge neurons twice (fidelity, then
    knowledge_neurons for reliability) and to redo NeurGrad against interventions inline."""
    from collections import Counter

    from tl_capability import demo
    from tl_capability import experiments as experiments_package
    from tl_capability.experiments import kn_decoupling, kn_fidelity, kn_locators

    calls: Counter = Counter()

    def counted(module, name, key=lambda *a, **k: None):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name, key(*args, **kwargs)] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    experiments = ("localization_suite", "fidelity", "reliability", "decoupling",
                   "neurgrad_agreement", "linearity", "skill_probe", "enhancement")  # fmt: skip
    for name in experiments:
        counted(demo, name)
    for module in (kn_fidelity, kn_locators, kn_decoupling):
        counted(module, "attribute", key=lambda model, data, *a, **k: id(data))
    counted(kn_locators, "knowledge_neurons")
    counted(experiments_package, "knowledge_neurons")
    sizes = demo.DemoSizes(locate=8, evaluate=8, n_random=1, facts=2, probe=12, neg_samples=2,
                           n_random_kn=1, pairs=2, enhance_train=8, epochs=(1,),
                           sigmas=(2.0,))  # fmt: skip
    index, _ = demo.run(tmp_path / "report", sizes, progress=False)
    assert {n: c for (n, _), c in calls.items() if n in experiments} == dict.fromkeys(
        experiments, 1
    )
    assert ("knowledge_neurons", None) not in calls
    attributed = [c for (n, _), c in calls.items() if n == "attribute"]
    assert len(attributed) == 2 + 2  # the two facts and decoupling's two sets...
    assert set(attributed) == {1}  # ... each attributed once
    assert not hasattr(demo, "attribute") and not hasattr(demo, "empirical_neg")
    assert (tmp_path / "report" / "neg.png").is_file() and index.is_file()


def test_the_demo_flags_sets_that_break_every_capability():
    """The σ rule's set on SmolLM2 drops every task to 0: the demo must not read that as
    localization."""
    from types import SimpleNamespace

    from tl_capability.experiments.erase import EraseResult

    def _breaks_everything(found, sigma):
        return EraseResult.not_localized(found, sigma)

    def erased(cells):
        rows = [
            SimpleNamespace(located=a, evaluated=b, drop=d, random_drop=r)
            for (a, b), (d, r) in cells.items()
        ]
        return SimpleNamespace(at=lambda sigma: rows)

    critical = {
        ("a", "a"): (100, 10),
        ("a", "b"): (100, 30),
        ("b", "b"): (60, 0),
        ("b", "a"): (5, 0),
    }
    assert _breaks_everything(erased(critical), 2.0) == ["a"]
    local = {("a", "a"): (90, 0), ("a", "b"): (4, 0), ("b", "b"): (80, 2), ("b", "a"): (75, 70)}
    assert _breaks_everything(erased(local), 2.0) == []  # b's other drop is no more than random's
