"""Training speed, side by side in one run: vaekit against the pytorch/examples recipe
(DataLoader over a TensorDataset, and the per-item Dataset variant), Pythae's trainer when
installed, and the machine's measured GEMM peak.

    python benchmarks/bench_train.py            # full: MNIST, 5 timed epochs each
    python benchmarks/bench_train.py --quick    # < 1 minute: a slice of MNIST, 2 epochs

Prints a table (median seconds per epoch, ratio to vaekit, % of GEMM peak, contention)
and writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import reference  # noqa: E402

from vaekit.app.config import Config  # noqa: E402
from vaekit.app.data import load_data  # noqa: E402
from vaekit.app.runs import build_model, objective_for  # noqa: E402
from vaekit.devices import cpu_bf16_features  # noqa: E402
from vaekit.objectives import elbo  # noqa: E402
from vaekit.training import fit  # noqa: E402


def step_flops(batch: int, sizes: list[tuple[int, int]]) -> float:
    """FLOPs of one training step's GEMMs: forward 2·B·in·out per layer, backward twice that."""
    return 3 * sum(2 * batch * a * b for a, b in sizes)


def vaekit_setup(config: Config, x: torch.Tensor, precision: str = "fp32"):
    """(model, one epoch of vaekit.fit): each call is a public fit(epochs=1) on the same model
    and optimiser, so its set-up cost is part of what is timed."""
    torch.manual_seed(config.seed)
    model = build_model(config, tuple(x.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    objective = objective_for(config)
    return model, lambda: fit(model, x, epochs=1, batch_size=config.batch_size, objective=objective,
                              optimizer=optimizer, device="cpu", seed=config.seed, precision=precision,
                              dynamic_binarization=config.binarization.dynamic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a slice of the data and fewer epochs (< 1 min)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs per contender")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(common.MNIST_DIR))
    parser.add_argument("--skip-small-batch", action="store_true")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="also time vaekit with bf16 autocast (auto: where the CPU does bf16 in hardware)")
    parser.add_argument("--out", default=str(common.ROOT / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 5)

    splits = load_data("mnist", args.data_dir)
    x, x_test = splits.train.x, splits.test.x
    if args.quick:
        x, x_test = x[:10_000], x_test[:2_000]
    n = len(x)
    print(f"data: MNIST grey levels, {n} training images; {epochs} timed epochs after 1 warm-up; "
          f"{args.threads} threads")

    peak = common.gemm_peak()
    flops_epoch = step_flops(128, [(784, 400), (400, 40), (20, 400), (400, 784)]) * n / 128
    results: dict[str, common.Measurement] = {}

    config = Config(hidden=[400], latent_dim=20, likelihood="bernoulli", binarize="none",
                    batch_size=128, lr=1e-3, seed=0)
    contenders = {"vaekit": vaekit_setup(config, x)[1]}
    with_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and bool(cpu_bf16_features()))
    if with_bf16:
        contenders["vaekit, bf16 autocast"] = vaekit_setup(config, x, "bf16")[1]
    for name, per_item in (("examples: DataLoader(TensorDataset)", False),
                           ("examples: per-item Dataset", True)):
        torch.manual_seed(0)
        model = reference.ExamplesVAE()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = reference.make_loader(x, 128, per_item=per_item)
        contenders[name] = lambda m=model, o=opt, dl=loader: reference.examples_epoch(m, o, dl)
    trainer = pythae_trainer(x)
    if trainer is not None:
        contenders["pythae 0.1.2 trainer"] = trainer
    results = common.interleave(contenders, epochs)

    base = results["vaekit"].median
    rows = []
    for name, m in results.items():
        rows.append([name, f"{m.median:.3f}", f"{m.median / base:.2f}×",
                     f"{100 * flops_epoch / m.median / 1e9 / peak:.0f} %",
                     f"{100 * m.contention:.0f} %" + (" (contended)" if m.contention > common.CONTENDED else "")])
    print(f"\nGEMM peak: {peak:.0f} GFLOP/s; one epoch's GEMMs: {flops_epoch / 1e9:.0f} GFLOP "
          f"(floor {flops_epoch / 1e9 / peak:.2f} s)\n")
    print(common.table(rows, ["784-400-20, batch 128", "s/epoch", "vs vaekit", "% of peak", "others' CPU"]))

    curves = elbo_curves(x, x_test, config, epochs=2 if args.quick else 5, bf16=with_bf16)
    print("\nELBO per epoch on test data (nats), same objective:")
    for epoch, (a, b) in enumerate(zip(curves["vaekit"], curves["examples"], strict=True), 1):
        line = f"  epoch {epoch}: vaekit {a:8.2f}   examples {b:8.2f}   difference {a - b:+.2f}"
        if with_bf16:
            c = curves["vaekit_bf16"][epoch - 1]
            line += f"   vaekit bf16 {c:8.2f} ({c - b:+.2f})"
        print(line)

    small = None if args.skip_small_batch else small_batch(x, 300 if args.quick else 3000, args.threads)
    common.write_json(args.out, {
        "machine": common.machine(), "gemm_peak_gflops": peak, "epoch_gflop": flops_epoch / 1e9,
        "n_train": n, "results": [m.as_dict() for m in results.values()], "elbo_curves": curves,
        "small_batch": small,
    })


def elbo_curves(x, x_test, config, epochs: int, bf16: bool = False) -> dict[str, list[float]]:
    """Test ELBO (fp32) after each epoch for vaekit and the recipe: they optimise the same objective."""
    curves = {}
    for key, precision in (("vaekit", "fp32"), ("vaekit_bf16", "bf16"))[: 1 + bf16]:
        model, epoch = vaekit_setup(config, x, precision)
        torch.manual_seed(1)
        curves[key] = []
        for _ in range(epochs):
            epoch()
            with torch.no_grad():
                model.eval()
                curves[key].append(float(torch.cat([elbo(model, x_test[i:i + 1000])
                                                    for i in range(0, len(x_test), 1000)]).mean()))
                model.train()
    torch.manual_seed(0)
    ref = reference.ExamplesVAE()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    loader = reference.make_loader(x, 128)
    theirs = []
    for _ in range(epochs):
        reference.examples_epoch(ref, opt, loader)
        theirs.append(reference.examples_elbo(ref, x_test))
    return {**curves, "examples": theirs}


def small_batch(x: torch.Tensor, steps: int, threads: int) -> dict:
    """Burda et al.'s 784-200-200-[50] tanh model at batch 20: steps per second, with 1
    thread and with ``threads`` (tiny steps often run faster on one)."""
    config = Config(hidden=[200, 200], activation="tanh", latent_dim=50, batch_size=20, seed=0)
    sub = x[: steps * 20]
    torch.manual_seed(0)
    model = reference.BurdaVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = reference.make_loader(sub, 20)
    contenders = {"vaekit": vaekit_setup(config, sub)[1],
                  "reference": lambda: reference.examples_epoch(model, opt, loader)}
    out = {"steps": steps}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        measured = common.interleave(contenders, 3)
        ours, theirs = measured["vaekit"], measured["reference"]
        print(f"\nsmall batch (784-200-200-[50] tanh, batch 20, {steps} steps, {n} thread(s)): vaekit "
              f"{steps / ours.median:.0f} steps/s, reference loop {steps / theirs.median:.0f} steps/s "
              f"({theirs.median / ours.median:.2f}×); others' CPU ≤ "
              f"{100 * max(ours.contention, theirs.contention):.0f} %")
        out[f"threads_{n}"] = {"vaekit": ours.as_dict(), "reference": theirs.as_dict()}
    torch.set_num_threads(threads)
    return out


def pythae_trainer(x: torch.Tensor):
    """One epoch of Pythae's trainer as a callable, or None when pythae is not installed."""
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed: skipping its trainer (pip install 'vaekit[bench]' to include it)")
        return None
    from pythae_runner import pythae_epoch_runner

    return pythae_epoch_runner(x)


if __name__ == "__main__":
    main()
