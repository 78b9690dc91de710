"""Learning-rate schedules, step and time budgets in fit: the rates against their formulas
(and torch's schedulers), bit-exact resume with a schedule, and the time budget's plan."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit import schedules
from vaekit.checkpoint import load as load_checkpoint
from vaekit.errors import VaekitError
from vaekit.nets import MLP


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:300], dtype=torch.float32) / 16.0
    return x[:240], x[240:]


def _model() -> vaekit.VAE:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return vaekit.VAE(MLP(64, [32], 8), MLP(4, [32], 64), "bernoulli", latent_dim=4)


class Rates(vaekit.Callback):
    """The learning rate each step used (read after the step)."""

    def __init__(self):
        self.rates: list[float] = []

    def on_step_end(self, loop, loss):
        self.rates.append(loop.optimizer.param_groups[0]["lr"])


class Boom(Exception):
    pass


class StopAt(vaekit.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, loop, loss):
        if loop.steps_done == self.step:
            raise Boom


def _fit(schedule=None, out=None, resume=False, callbacks=(), **kw):
    train, val = _data()
    model = _model()
    budget = vaekit.Budget(kw.pop("epochs", 6), kw.pop("steps", None), kw.pop("time_budget", None))
    history = vaekit.fit(model, train, validation=val, budget=budget, batch_size=32, schedule=schedule, seed=1,
                         device="cpu", dynamic_binarization=True, out=out, resume=resume,
                         checkpointing=vaekit.Checkpointing(minutes=1e-9), callbacks=list(callbacks), **kw)
    return model, history


# ---------------------------------------------------------------------- the rates
def test_burda_schedule_is_3_to_the_i_passes_at_the_published_rates():
    # Burda et al.'s code: stage i (0..7) runs 3^i passes at 1e-4 * round(10 ** (1 - i / 7), 1)
    published = [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4]
    start = 0
    for i, rate in enumerate(published):
        length = 3**i
        for passes in (start, start + length / 2, start + length - 1e-6):
            assert 1e-3 * schedules.burda_factor(passes) == pytest.approx(rate, rel=1e-12), (i, passes)
        start += length
    assert start == schedules.BURDA_PASSES == 3280
    assert 1e-3 * schedules.burda_factor(10_000) == pytest.approx(1e-4)


def test_burda_schedule_in_fit_changes_rate_at_pass_boundaries():
    rates = Rates()
    _fit(schedules.Burda(), epochs=5, callbacks=[rates])
    per_epoch = len(rates.rates) // 5  # 240 examples at batch 32: 8 steps a pass
    assert per_epoch == 8
    want = [1e-3] * 8 + [7.2e-4] * 24 + [5.2e-4] * 8  # passes 0 | 1-3 | 4
    assert rates.rates == pytest.approx(want, rel=1e-12)


def test_cosine_and_geometric_follow_the_planned_steps():
    for schedule, formula in (
        (schedules.Cosine(final=0.1), lambda p: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))),
        (schedules.Geometric(hold=0.25, final=0.05), lambda p: 1.0 if p <= 0.25 else 0.05 ** ((p - 0.25) / 0.75)),
    ):
        rates = Rates()
        _, history = _fit(schedule, steps=20, callbacks=[rates])
        assert len(rates.rates) == 20 and history[-1]["steps"] == 20
        want = [1e-3 * formula(s / 20) for s in range(20)]  # step s (0-based) sees s steps done
        assert rates.rates == pytest.approx(want, rel=1e-12)


def test_step_and_exponential_decay_per_epoch_like_torch():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    for ours, theirs in ((schedules.StepDecay(2, 0.5), torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)),):
        rates = Rates()
        _fit(ours, epochs=5, callbacks=[rates])
        torch_rates = []
        for _ in range(5):
            torch_rates += [optimizer.param_groups[0]["lr"]] * 8
            optimizer.step()
            theirs.step()
        assert rates.rates == pytest.approx(torch_rates, rel=1e-12)
    rates = Rates()
    _fit(schedules.Exponential(0.9), epochs=3, callbacks=[rates])
    assert rates.rates == pytest.approx([1e-3] * 8 + [9e-4] * 8 + [8.1e-4] * 8, rel=1e-12)


def test_plateau_reduces_like_torch_reduce_on_plateau():
    values = [-100, -90, -91, -92, -89, -89.5, -95, -96, -97, -88, -88, -88, -88]
    ours = schedules.Plateau(patience=2, factor=0.5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2,
                                                        threshold=0.0, threshold_mode="abs")
    for v in values:
        ours.on_epoch_end(None, {"validation_elbo": v})
        theirs.step(v)
        assert ours.factor(None) == pytest.approx(optimizer.param_groups[0]["lr"]), v
    assert ours.factor(None) < 1  # it did reduce


def test_a_torch_scheduler_is_stepped_per_epoch():
    rates = Rates()
    _fit(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, 0.1), epochs=5, callbacks=[rates])
    assert rates.rates == pytest.approx([1e-3] * 16 + [1e-4] * 16 + [1e-5] * 8, rel=1e-9)


def test_epoch_records_carry_steps_and_lr():
    _, history = _fit(schedules.Exponential(0.5), epochs=3)
    assert [r["steps"] for r in history.epochs] == [8, 16, 24]
    assert [r["lr"] for r in history.epochs] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_schedules_refuse_nonsense():
    for make in (lambda: schedules.StepDecay(0, 0.5), lambda: schedules.Exponential(1.5),
                 lambda: schedules.Geometric(hold=1.0), lambda: schedules.Cosine(final=-1),
                 lambda: schedules.as_schedule("cosine")):
        with pytest.raises(VaekitError):
            make()
    with pytest.raises(VaekitError, match="not both"):
        _fit(steps=10, time_budget=5.0)


# ---------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("make", [lambda: schedules.Cosine(0.01), lambda: schedules.Plateau(patience=0, factor=0.5),
                                  lambda: (lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.7))],
                         ids=["cosine", "plateau", "torch-steplr"])
def test_a_run_with_a_schedule_resumes_bit_for_bit(tmp_path, make):
    torch.set_num_threads(1)
    reference, ref_history = _fit(make(), out=tmp_path / "ref", steps=44)
    with pytest.raises(Boom):
        _fit(make(), out=tmp_path / "cut", steps=44, callbacks=[StopAt(19)])  # mid-epoch 3
    ckpt = load_checkpoint(tmp_path / "cut")
    assert ckpt.meta["steps"] == 18 and ckpt.meta["in_epoch"]["step"] == 2
    resumed, history = _fit(make(), out=tmp_path / "cut", steps=44, resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(history.epochs) == strip(ref_history.epochs)
    assert history[-1]["steps"] == 44 and len(history) == 6  # 5 whole epochs and 4 steps of the 6th


def test_steps_budget_stops_mid_epoch_and_resume_with_more_steps_goes_on(tmp_path):
    _, history = _fit(out=tmp_path / "run", steps=12)
    assert [r["steps"] for r in history.epochs] == [8, 12]
    _, history = _fit(out=tmp_path / "run", steps=20, resume=True)
    assert [r["steps"] for r in history.epochs] == [8, 12, 20]


# ---------------------------------------------------------------------- time budget
def test_time_budget_plans_from_the_pace_and_replans_continuously():
    budget = schedules.TimeBudget(100.0, measure=10, check_every=5, window=10.0, tolerance=0.02)
    for step in range(1, 11):  # 0.1 s a step
        budget.update(step, 0.1 * step)
    assert budget.total_steps == 1000 and budget.progress(10) == pytest.approx(0.01)
    t = 1.0
    for step in range(11, 400):  # the machine gets twice as slow
        t += 0.2
        before = budget.progress(step)
        budget.update(step, t)
        assert budget.progress(step) == pytest.approx(before, abs=1e-12)  # no jump at a re-plan
    plan = budget.state_dict()
    assert len(plan["replans"]) >= 2
    # at 0.2 s a step, what is left of 100 s fits (100 - t) / 0.2 more steps
    assert budget.total_steps == pytest.approx(399 + (100 - t) / 0.2, abs=60)
    assert not budget.done(399, t) and budget.done(399, 100.0) and budget.done(budget.total_steps, 50.0)
    again = schedules.TimeBudget(100.0)
    again.load_state_dict(plan)
    assert again.total_steps == budget.total_steps and again.progress(399) == budget.progress(399)


def test_fit_with_a_time_budget_ends_by_its_plan_and_a_resume_keeps_it(tmp_path):
    _, history = _fit(schedules.Geometric(), out=tmp_path / "run", epochs=None, time_budget=1.0)
    meta = load_checkpoint(tmp_path / "run").meta
    plan = meta["plan"]
    assert plan is not None and plan["budget"] == 1.0 and plan["replans"]
    done = history[-1]["steps"]
    assert done == meta["steps"]
    assert done == plan["total_steps"] or meta["seconds"] >= 1.0  # ended by the plan, or by the clock
    _, again = _fit(schedules.Geometric(), out=tmp_path / "run", epochs=None, time_budget=1.0, resume=True)
    assert again[-1]["steps"] == done  # nothing left to do: the stored plan is the plan
    assert load_checkpoint(tmp_path / "run").meta["plan"]["replans"] == plan["replans"]


def test_parse_duration():
    assert schedules.parse_duration("60m") == 3600
    assert schedules.parse_duration("1.5h") == 5400
    assert schedules.parse_duration("90s") == 90 and schedules.parse_duration("45") == 45
    for bad in ("", "m", "-5m", "1d", "nan"):
        with pytest.raises(VaekitError):
            schedules.parse_duration(bad)
