"""The automatic thread count follows other processes' load; explicit counts are kept."""

from __future__ import annotations

import pytest
import torch

from vaekit.app import threads


@pytest.mark.parametrize(("others", "cores", "expected"), [
    (0.0, 2, 2), (0.4, 2, 2), (1.0, 2, 1), (1.9, 2, 1), (5.0, 2, 1), (2.0, 8, 6), (0.0, 1, 1),
])
def test_threads_for_leaves_the_busy_cores_to_their_owners(others, cores, expected):
    assert threads.threads_for(others, cores) == expected


def test_omp_num_threads_caps_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.available_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert threads.available_cores() >= 1


class FakeMachine:
    """/proc/stat and our own CPU time, advanced by hand: jiffies at 100 per second."""

    def __init__(self, monkeypatch):
        self.busy = self.total = 0
        self.own = 0.0
        self.clock = 1000.0
        monkeypatch.setattr(threads, "cpu_jiffies", lambda: (self.busy, self.total))
        monkeypatch.setattr(threads, "own_jiffies", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(threads, "available_cores", lambda: 2)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))

    def run(self, seconds: float, ours: float, others: float) -> None:
        """``seconds`` pass with us on ``ours`` cores and other processes on ``others``."""
        self.clock += seconds
        self.total += int(200 * seconds)
        self.own += 100 * seconds * ours
        self.busy += int(100 * seconds * (ours + others))


def test_auto_mode_steps_down_while_others_are_busy_and_back_up(monkeypatch, capsys):
    machine = FakeMachine(monkeypatch)
    before = torch.get_num_threads()
    try:
        policy = threads.ThreadPolicy(0)
        assert policy.threads == 2 and torch.get_num_threads() == 2
        machine.run(0.1, ours=2, others=1)
        assert policy.check() == 2  # too soon to look again
        machine.run(0.5, ours=1, others=1)
        assert policy.check() == 1 and torch.get_num_threads() == 1
        assert "other processes are using 1.0 of 2 cores" in capsys.readouterr().err
        machine.run(3, ours=1, others=0)
        assert policy.check() == 2 and torch.get_num_threads() == 2
        machine.run(3, ours=2, others=1)
        assert policy.check() == 1
        assert capsys.readouterr().err == ""  # said once per run
    finally:
        torch.set_num_threads(before)


def test_an_explicit_count_is_never_changed(monkeypatch):
    machine = FakeMachine(monkeypatch)
    before = torch.get_num_threads()
    try:
        policy = threads.ThreadPolicy(2, quiet=True)
        machine.run(5, ours=1, others=2)
        assert policy.check() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_without_proc_stat_auto_mode_keeps_its_choice(monkeypatch):
    FakeMachine(monkeypatch)
    monkeypatch.setattr(threads, "cpu_jiffies", lambda: None)
    before = torch.get_num_threads()
    try:
        policy = threads.ThreadPolicy(0)
        policy._last -= 10  # the fake clock stands still: open the check window by hand
        assert policy.check() == 2
    finally:
        torch.set_num_threads(before)


def _gemm_depends_on_threads() -> bool:
    """Whether this machine's BLAS itself gives other bits on 2 threads than on 1 for a GEMM
    of the shape an MLP step does (some builds split the inner sum across threads)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 784, generator=g), torch.randn(784, 400, generator=g)
    before = torch.get_num_threads()
    try:
        products = []
        for n in (1, 2):
            torch.set_num_threads(n)
            products.append(a @ b)
    finally:
        torch.set_num_threads(before)
    return not torch.equal(*products)


def test_thread_count_does_not_change_the_numbers():
    from vaekit.app.config import Config
    from vaekit.app.runs import build_model, objective_for
    from vaekit.training import fit

    if _gemm_depends_on_threads():
        pytest.skip("this machine's BLAS sums a GEMM differently on 1 and 2 threads, so no code on "
                    "top of it can give bit-identical weights (docs/performance.md measured an AMD EPYC)")
    x = (torch.rand(512, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    before = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            config = Config(hidden=[400], latent_dim=20, batch_size=128, seed=0)
            torch.manual_seed(0)
            model = build_model(config, (784,))
            fit(model, x, epochs=1, batch_size=config.batch_size, objective=objective_for(config),
                lr=config.lr, device="cpu", seed=config.seed)
            weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])


def test_the_policy_gives_back_the_thread_count_it_found(monkeypatch):
    FakeMachine(monkeypatch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threads.ThreadPolicy(2, quiet=True) as policy:
            assert policy.threads == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError), threads.ThreadPolicy(0):
            assert torch.get_num_threads() == 2
            raise RuntimeError("a failed run")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_tune_allocator_runs_once_and_reports_what_it_did():
    import sys

    first = threads.tune_allocator()
    assert threads.tune_allocator() is first  # a second call changes nothing
    if sys.platform.startswith("linux") and threads.ctypes.util.find_library("c"):
        assert first is True


def test_tiny_steps_stay_on_one_thread_in_auto_mode(monkeypatch):
    from vaekit.app.config import Config
    from vaekit.app.runs import build_model, step_flops

    FakeMachine(monkeypatch)
    burda = Config(hidden=[200, 200], activation="tanh", latent_dim=50, batch_size=20)
    recipe = Config(hidden=[400], latent_dim=20, batch_size=128)
    # 6 FLOPs per weight and example: 784·400 + 400·40 + 20·400 + 400·784 weights
    assert step_flops(build_model(recipe, (784,)), recipe) == 6 * 128 * (2 * 784 * 400 + 400 * 40 + 20 * 400)
    conv = Config(architecture="conv", channels=[8], latent_dim=2)
    assert step_flops(build_model(conv, (1, 8, 8)), conv) is None
    before = torch.get_num_threads()
    try:
        small = step_flops(build_model(burda, (784,)), burda)
        assert threads.ThreadPolicy(0, step_flops=small).threads == 1
        assert threads.ThreadPolicy(0, step_flops=step_flops(build_model(recipe, (784,)), recipe)).threads == 2
        assert threads.ThreadPolicy(2, quiet=True, step_flops=small).threads == 2  # explicit wins
        # the app decides once the model is built: tune() re-decides for its step size
        policy = threads.ThreadPolicy(0)
        assert policy.threads == 2
        policy.tune(small, quiet=True)
        assert policy.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_without_load_average_or_sysconf_auto_mode_still_works(monkeypatch):
    def missing(*args):
        raise AttributeError("not on this platform")

    monkeypatch.setattr(threads.os, "getloadavg", missing)
    monkeypatch.setattr(threads.os, "sysconf", missing)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert threads.ThreadPolicy(0).threads == 2
        assert threads.ThreadPolicy(2).threads == 2
    finally:
        torch.set_num_threads(before)
