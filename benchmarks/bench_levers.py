"""The CPU hour's levers (issue 26), measured at the `burda2016-vae-1l-cpu60` preset's network
(784-200-200-[50] tanh, Bernoulli, Glorot, output bias from the data) and batch (250):
bf16 autocast, torch.compile, threads, and vaekit's per-step overhead. Contenders are timed in
turns (A B C ... A B C ...) in one process; every region records the CPU share other processes
took meanwhile (/proc/stat, benchmarks/common.py).

    python benchmarks/bench_levers.py gemm                      # GEMM peaks, fp32 and bf16, 1 and 2 threads
    python benchmarks/bench_levers.py speed --threads 1         # steps/s: vaekit and a bare loop, fp32 and bf16
    python benchmarks/bench_levers.py speed --threads 1 --compile   # ... and torch.compile of both steps
    python benchmarks/bench_levers.py threads                   # vaekit fp32 and bf16 at 1 and 2 threads, in turns
    python benchmarks/bench_levers.py quality --steps 4000 --seeds 0 1 2   # quality per step, fp32 against bf16
    python benchmarks/bench_levers.py budget --budget 12m        # fp32 and bf16 side by side, 12 min each
    python benchmarks/bench_levers.py profile --steps 300       # where vaekit's step goes (cProfile, torch.profiler)

`quality` trains the preset through the app (`vaekit.app.runs.train`: the preset's schedule over
--steps instead of an hour, one thread) in both precisions, alternating, and scores each model on
the first --n-test test images with K = --k importance samples (fp32, as evaluation always is).
Results go to benchmarks/results/levers-*.json.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import vaekit  # noqa: E402
from vaekit.app import presets  # noqa: E402
from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import load_data, select_split  # noqa: E402
from vaekit.app.factories import build_model, objective_for  # noqa: E402
from vaekit.app.runs import load_run, train  # noqa: E402
from vaekit.devices import CompiledObjective  # noqa: E402
from vaekit.rundir import read_metrics  # noqa: E402

PRESET = "burda2016-vae-1l-cpu60"
RESULTS = common.ROOT / "benchmarks" / "results"
# the checkout's sibling shared/ folder, or the development machine's one from a worktree
MNIST_DIR = common.MNIST_DIR if common.MNIST_DIR.is_dir() else Path("/work/shared/data/mnist")


def preset_config(data_dir: str) -> Config:
    return presets.load(PRESET).config().override({"data_dir": data_dir})


def use_preset(name: str) -> None:
    """Measure another preset's network and batch (speed: vaekit's contenders only)."""
    global PRESET
    PRESET = name


# ---------------------------------------------------------------------- GEMM peaks
def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.5) -> float:
    return common.gemm_peak(seconds, dtype=dtype, shape=(m, k, n))


def cmd_gemm(args) -> dict:
    shapes = {"250x784 . 784x200": (250, 784, 200), "250x200 . 200x784": (250, 200, 784),
              "2048^3": (2048, 2048, 2048)}
    if args.small_only:  # a CPU without bf16 hardware emulates it at ~2 GFLOP/s: 2048^3 takes minutes
        shapes.pop("2048^3")
    out: dict = {}
    for threads in args.thread_counts:
        torch.set_num_threads(threads)
        rows = {}
        for name, (m, k, n) in shapes.items():
            rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
            others = []
            for _ in range(args.rounds):  # in turns
                for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    with common.timed() as region:
                        rates[label].append(gemm_rate(m, k, n, dtype))
                    others.append(region.others)
            rows[name] = {**{k2: statistics.median(v) for k2, v in rates.items()}, "rounds": rates,
                          "others_max": max(others), "others_median": statistics.median(others)}
            print(f"{threads} thread(s) {name:>20}: fp32 {rows[name]['fp32']:6.1f}  bf16 {rows[name]['bf16']:6.1f} "
                  f"GFLOP/s (bf16/fp32 {rows[name]['bf16'] / rows[name]['fp32']:.2f}×; rounds fp32 "
                  f"{[round(r) for r in rates['fp32']]}, bf16 {[round(r) for r in rates['bf16']]}); others "
                  f"{100 * statistics.median(others):.0f} % (max {100 * max(others):.0f} %)", flush=True)
        out[str(threads)] = rows
    return out


# ---------------------------------------------------------------------- contenders
def bare_step_fn(config: Config, precision: str, compiled: bool):
    """(params, step(b)) of the preset's model in plain PyTorch: the same maths as vaekit's ELBO
    (reparameterised draw, logit Bernoulli, closed-form KL), none of its bookkeeping; with bf16 the
    networks run under autocast and the likelihood and KL in fp32, as vaekit does."""
    torch.manual_seed(config.seed)

    def mlp(width_in: int, hidden: list[int], width_out: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width_in, h), nn.Tanh()]
            width_in = h
        return nn.Sequential(*layers, nn.Linear(width_in, width_out))

    latent = config.latent_dim
    enc, dec = mlp(784, config.hidden, 2 * latent), mlp(latent, config.hidden[::-1], 784)
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, fused=True)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else None

    def loss_fn(b: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if cast is not None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = enc(b)
        else:
            h = enc(b)
        mu, logvar = h.float().chunk(2, -1)
        z = mu + torch.exp(0.5 * logvar) * eps
        if cast is not None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = dec(z)
        else:
            logits = dec(z)
        logits = logits.float()
        kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(-1)
        return (F.softplus(logits).sum(-1) - (b * logits).sum(-1) + kl).mean()

    loss_impl = torch.compile(loss_fn) if compiled else loss_fn

    def step(b: torch.Tensor) -> None:
        eps = torch.randn(len(b), latent)
        loss = loss_impl(b, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return params, step


def epoch_of(step, x: torch.Tensor, batch: int):
    flat = x.reshape(len(x), -1)

    def epoch() -> None:
        order = torch.randperm(len(flat))
        for start in range(0, len(flat) - batch + 1, batch):
            step(torch.bernoulli(flat[order[start: start + batch]]))

    return epoch


def vaekit_epoch(config: Config, x: torch.Tensor, precision: str, compiled: bool = False):
    """One epoch of the public vaekit.fit on a shared model and optimiser (set-up included)."""
    torch.manual_seed(config.seed)
    model = build_model(config, tuple(x.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps, fused=True)
    objective = objective_for(config)
    if compiled:  # as `compile = "on"` runs it
        objective = CompiledObjective(objective)
    return lambda: vaekit.fit(model, x, epochs=1, batch_size=config.batch_size, objective=objective,
                              optimizer=optimizer, device="cpu", seed=config.seed, precision=precision,
                              dynamic_binarization=True)


def measure(contenders: dict, steps: int, rounds: int) -> dict:
    measured = common.interleave(contenders, rounds)
    out = {}
    base = None
    for name, m in measured.items():
        rates = [steps / s for s in m.seconds]
        out[name] = {"steps_per_second": steps / m.median, "rounds": rates, "others": m.others}
        base = base or out[name]["steps_per_second"]
    for name, row in out.items():
        print(f"  {name:<34} {row['steps_per_second']:7.1f} steps/s  (rounds {[round(r) for r in row['rounds']]}; "
              f"{row['steps_per_second'] / base:.2f}× the first; others {[round(100 * o) for o in row['others']]} %)",
              flush=True)
    return out


def ratios(out: dict, a: str, b: str) -> str:
    """b/a per round (the rounds are interleaved, so each ratio pairs neighbours in time)."""
    per = [rb / ra for ra, rb in zip(out[a]["rounds"], out[b]["rounds"], strict=True)]
    return f"{b} / {a}: median {statistics.median(per):.2f}× (rounds {min(per):.2f}–{max(per):.2f})"


def training_images(args) -> torch.Tensor:
    return load_data("mnist", args.data_dir).train.x[: args.batch_steps * preset_config(args.data_dir).batch_size]


def cmd_speed(args) -> dict:
    torch.set_num_threads(args.threads)
    config = preset_config(args.data_dir)
    x = training_images(args)
    # --precisions fp32 on a CPU without bf16 hardware (emulated bf16 GEMMs run at ~2 GFLOP/s)
    contenders = {f"vaekit {p}": vaekit_epoch(config, x, p) for p in args.precisions}
    bare = args.preset == "burda2016-vae-1l-cpu60"  # the bare loop is that preset's model and ELBO
    if bare:
        for p in args.precisions:
            contenders[f"bare {p}"] = epoch_of(bare_step_fn(config, p, False)[1], x, config.batch_size)
    if args.old_gather:  # the minibatch gathered as x[index] (before index_select), side by side
        for p in args.precisions:
            contenders[f"vaekit {p}, x[index] gather"] = old_gather(vaekit_epoch(config, x, p))
    if args.compile:
        compile_seconds = {}
        for name, precision in ((f"bare {p} compiled", p) for p in args.precisions) if bare else ():
            epoch = epoch_of(bare_step_fn(config, precision, True)[1], x[:500], config.batch_size)
            start = time.perf_counter()
            epoch()  # compiles
            compile_seconds[name] = time.perf_counter() - start
            contenders[name] = epoch_of(bare_step_fn(config, precision, True)[1], x, config.batch_size)
        for precision in args.precisions:  # vaekit's own step, its objective compiled (no graph break)
            name = f"vaekit {precision} compiled"
            epoch = vaekit_epoch(config, x[:500], precision, compiled=True)
            start = time.perf_counter()
            epoch()
            compile_seconds[name] = time.perf_counter() - start
            contenders[name] = vaekit_epoch(config, x, precision, compiled=True)
        print(f"compile (first 2 steps, incl. compilation): {compile_seconds}")
        breaks = graph_breaks(config, x)
    print(f"speed: {PRESET} network, batch {config.batch_size}, {args.threads} thread(s), "
          f"{args.batch_steps} steps a round, {args.rounds} rounds in turns")
    out = measure(contenders, args.batch_steps, args.rounds)
    for a, b in (("vaekit fp32", "vaekit bf16"), ("bare fp32", "bare bf16"), ("bare fp32", "vaekit fp32"),
                 ("bare bf16", "vaekit bf16"), ("vaekit fp32, x[index] gather", "vaekit fp32"),
                 ("vaekit bf16, x[index] gather", "vaekit bf16")):
        if a in out and b in out:
            print("  " + ratios(out, a, b))
    if args.compile:
        for a, b in (("bare fp32", "bare fp32 compiled"), ("bare bf16", "bare bf16 compiled"),
                     ("vaekit fp32", "vaekit fp32 compiled"), ("vaekit bf16", "vaekit bf16 compiled"),
                     ("vaekit fp32", "vaekit bf16 compiled")):
            if a in out and b in out:
                print("  " + ratios(out, a, b))
        out.update(compile_seconds=compile_seconds, graph_breaks=breaks)
    return out


def old_gather(epoch):
    """``epoch`` with sources.Source.batches gathering rows as ``x[index]`` (aten::index), as
    vaekit did before it used ``index_select``."""
    from vaekit import sources

    def batches(self, batch_size, order, start_step=0, rank=0, world=1):
        for s in range(start_step * batch_size, len(self), batch_size):
            index = order[s: s + batch_size][rank::world]
            yield self.x[index], None if self.labels is None else self.labels[index], len(order[s: s + batch_size])

    def run():
        saved = sources.Source.batches
        sources.Source.batches = batches
        try:
            epoch()
        finally:
            sources.Source.batches = saved
    return run


def graph_breaks(config: Config, x: torch.Tensor) -> int | None:
    """How many graph breaks torch.compile finds in vaekit's objective (printed with the first reasons)."""
    try:
        import torch._dynamo as dynamo

        model = build_model(config, tuple(x.shape[1:]))
        batch = vaekit.objectives.Batch(torch.bernoulli(x[:250]), None, 0.0)
        explained = dynamo.explain(objective_for(config))(model, batch)
    except Exception as err:  # noqa: BLE001 - a benchmark reports what failed and goes on
        print(f"dynamo.explain failed: {err}")
        return None
    print(f"dynamo: {explained.graph_count} graph(s), {explained.graph_break_count} graph break(s)")
    for reason in explained.break_reasons[:5]:
        print(f"  break: {str(reason.reason)[:200]}")
    return explained.graph_break_count


def cmd_threads(args) -> dict:
    config = preset_config(args.data_dir)
    x = training_images(args)
    out = {}
    names = []
    for threads in (1, 2):
        for precision in args.precisions:
            names.append((f"vaekit {precision}, {threads} thread(s)", threads, vaekit_epoch(config, x, precision)))

    def pinned(threads, fn):
        def run():
            torch.set_num_threads(threads)
            fn()
        return run

    print(f"threads: {PRESET} network, batch {config.batch_size}, {args.batch_steps} steps a round")
    out = measure({n: pinned(t, fn) for n, t, fn in names}, args.batch_steps, args.rounds)
    for p in args.precisions:
        print("  " + ratios(out, f"vaekit {p}, 1 thread(s)", f"vaekit {p}, 2 thread(s)"))
    return out


# ---------------------------------------------------------------------- quality per step
def cmd_quality(args) -> dict:
    base = preset_config(args.data_dir)
    out: dict = {"steps": args.steps, "k": args.k, "n_test": args.n_test, "runs": []}
    print(f"quality: {PRESET} through the app, {args.steps} steps (its schedule over them), 1 thread, "
          f"K = {args.k} on the first {args.n_test} test images")
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            for precision in args.precisions:
                config = dataclasses.replace(base, steps=args.steps, time_budget=None, seed=seed, threads=1,
                                             precision=precision, checkpoint_every=0, checkpoint_minutes=0.0,
                                             save_best=False).validate()
                run_dir = Path(folder) / f"{precision}-{seed}"
                with common.timed() as region:
                    train(config, run_dir, quiet=True, figures=False)
                rows = read_metrics(run_dir)
                seconds = sum(r["seconds"] for r in rows)
                model, cfg = load_run(run_dir)
                test = select_split(cfg, "test", run_dir=run_dir)
                with common.timed() as eval_region:
                    result = vaekit.evaluate(model, test.x[: args.n_test], importance_samples=args.k, seed=0)
                row = {"seed": seed, "precision": precision, "train_seconds": seconds,
                       "steps_per_second": args.steps / seconds, "others_train": region.others,
                       "others_eval": eval_region.others,
                       "validation_elbo": rows[-1].get("validation_elbo"), "train_elbo": rows[-1].get("train_elbo"),
                       "test_elbo": result["elbo"], "test_nll": -result["log_likelihood"],
                       "test_nll_se": result["log_likelihood_se"], "active_units": result.get("active_units")}
                out["runs"].append(row)
                print(f"  seed {seed} {precision}: {row['steps_per_second']:.1f} steps/s (others "
                      f"{100 * region.others:.0f} %), val ELBO {row['validation_elbo']:.2f}, test ELBO "
                      f"{row['test_elbo']:.2f}, NLL {row['test_nll']:.2f} ± {row['test_nll_se']:.2f}, "
                      f"AU {row['active_units']}", flush=True)
    by = {p: [r for r in out["runs"] if r["precision"] == p] for p in args.precisions}
    if len(args.precisions) == 2:
        diffs = [b["test_nll"] - a["test_nll"] for a, b in zip(*by.values(), strict=True)]
        print(f"  NLL {args.precisions[1]} − {args.precisions[0]} per seed: {[round(d, 2) for d in diffs]}")
        out["nll_differences"] = diffs
    return out


# ---------------------------------------------------------------------- equal wall time
def cmd_budget(args) -> dict:
    """The preset under a time budget (`--budget`), fp32 and bf16 trained at the same time, each
    on one thread in its own process: both see the same neighbours. Then K = --k on the first
    --n-test test images. Others' CPU is what processes other than the two took meanwhile."""
    import os
    import subprocess

    from vaekit.app.threads import cpu_jiffies

    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    out: dict = {"budget": args.budget, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        dirs = {p: Path(folder) / p for p in args.precisions}
        before, children0, start = cpu_jiffies(), os.times(), time.perf_counter()
        procs = {p: subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--preset", PRESET, "--data-dir",
                                      args.data_dir, "--time-budget", args.budget, "--threads", "1",
                                      "--precision", p, "--out", str(d), "-q", "--no-figures"], env=env)
                 for p, d in dirs.items()}
        for proc in procs.values():
            proc.wait()
        after, children = cpu_jiffies(), os.times()
        ticks = os.sysconf("SC_CLK_TCK")
        own = ((children.children_user + children.children_system)
               - (children0.children_user + children0.children_system)) * ticks
        others = max(0.0, (after[0] - before[0] - own) / max(after[1] - before[1], 1))
        out["wall_seconds"], out["others"] = time.perf_counter() - start, others
        print(f"trained {list(dirs)} side by side for {args.budget} each; others took {100 * others:.0f} % of the CPU")
        for p, d in dirs.items():
            rows = read_metrics(d)
            model, cfg = load_run(d)
            test = select_split(cfg, "test", run_dir=d)
            result = vaekit.evaluate(model, test.x[: args.n_test], importance_samples=args.k, seed=0)
            steps = rows[-1].get("steps") or 0
            row = {"steps": steps,
                   "epochs": len(rows), "validation_elbo": rows[-1].get("validation_elbo"),
                   "test_nll": -result["log_likelihood"], "test_nll_se": result["log_likelihood_se"],
                   "active_units": result.get("active_units"), "precision": json.loads(
                       (d / "run.json").read_text()).get("precision")}
            out["runs"][p] = row
            print(f"  {p}: {row['epochs']} epochs, steps {row['steps']}, val ELBO {row['validation_elbo']:.2f}, "
                  f"NLL {row['test_nll']:.3f} ± {row['test_nll_se']:.3f}, AU {row['active_units']} "
                  f"(run.json precision {row['precision']})", flush=True)
    return out


# ---------------------------------------------------------------------- profile
def cmd_profile(args) -> dict:
    torch.set_num_threads(args.threads)
    config = preset_config(args.data_dir)
    x = load_data("mnist", args.data_dir).train.x[: args.steps * 250]
    out = {}
    for precision in args.precisions:
        epoch = vaekit_epoch(config, x, precision)
        epoch()  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        epoch()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(f"cProfile, vaekit {precision}, {args.steps} steps, {args.threads} thread(s), sorted by own time:\n"
              + "\n".join(text.getvalue().splitlines()[:45]))
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        print(f"torch.profiler, vaekit {precision}, {args.steps} steps, by self CPU time:\n{table}")
        out[precision] = {"cprofile": text.getvalue(), "torch_profiler": table}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("gemm", "speed", "threads", "quality", "budget", "profile"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default=PRESET, help="another preset's network and batch (speed, threads)")
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small-only", action="store_true", help="gemm: the preset's shapes only, not 2048^3")
    parser.add_argument("--batch-steps", type=int, default=80, help="steps per timed round (speed, threads)")
    parser.add_argument("--compile", action="store_true", help="speed: add torch.compile'd bare steps")
    parser.add_argument("--old-gather", action="store_true", help="speed: add vaekit with the x[index] gather")
    parser.add_argument("--steps", type=int, default=4000, help="quality: training steps; profile: steps profiled")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--budget", default="10m", help="budget: the time budget of each run")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--data-dir", default=str(MNIST_DIR))
    args = parser.parse_args()
    use_preset(args.preset)
    commands = {"gemm": cmd_gemm, "speed": cmd_speed, "threads": cmd_threads,
                "quality": cmd_quality, "budget": cmd_budget, "profile": cmd_profile}
    print(f"machine: {common.machine()}; CPU capability {torch.backends.cpu.get_cpu_capability()}")
    result = commands[args.what](args)
    suffix = "" if args.preset == "burda2016-vae-1l-cpu60" else f"-{args.preset}"
    common.write_json(RESULTS / f"levers-{args.what}{suffix}.json",
                      {"machine": common.machine(), "argv": sys.argv[1:], "result": result})


if __name__ == "__main__":
    main()
