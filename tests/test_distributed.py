"""Data-parallel training and evaluation under torchrun: 2 processes, gloo, on the CPU.

Every test starts ``torchrun --standalone`` (a free port each time) on tiny models on the
digits. The equivalence runs train the deterministic autoencoder (``--model ae``): its
steps draw nothing but the dynamic binarisation, which vaekit draws per example whatever
the rank, so 2 ranks with a global minibatch B must take the steps 1 process takes with B.
A VAE's reparameterisation noise is keyed by (seed, step, example) (vaekit.noise): it too
trains alike at any world size.

Tolerance, measured on this machine (max |Δw| between the 2-rank and the 1-process run):
6e-8 after 34 steps, 1.8e-7 after 440, 5.4e-7 after 1760 (weights up to 1.5 in size). The
two runs add the same float32 numbers in a different order (each rank sums its share, DDP
adds the two sums), so each step differs by about one rounding (6e-8 relative) and the
differences grow slowly. The tests allow 1e-6 up to 100 steps and 1e-5 beyond.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SRC, run_cli

DRIVER = Path(__file__).resolve().parent / "ddp_driver.py"
AE = ["--data", "digits", "--model", "ae", "--hidden", "16", "--latent-dim", "2", "--binarize", "dynamic",
      "--seed", "0", "--no-figures", "-q"]
VAE = ["--data", "digits", "--hidden", "16", "--latent-dim", "2", "--binarize", "dynamic", "--seed", "0",
       "--no-figures", "-q"]
TIMEOUT = 240


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **extra)


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def _audited(run: Path, log: Path, *cli: str) -> subprocess.CompletedProcess:
    """`vaekit CLI...` in 2 ranks, each recording its accesses to ``run`` in ``log``.<rank>."""
    env = _env(VAEKIT_AUDIT_WATCH=str(run), VAEKIT_AUDIT_LOG=str(log))
    return subprocess.run(_torchrun(str(DRIVER), *cli), env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _accesses(log: Path) -> dict[int, list]:
    return {rank: json.loads(Path(f"{log}.{rank}").read_text()) for rank in (0, 1)}


def _gloo_threads_left(log: Path) -> dict[int, list[str]]:
    """rank -> gloo's threads still running in that rank after the command returned (the
    process group must be gone by then, not at interpreter shutdown)."""
    names = {rank: json.loads(Path(f"{log}.{rank}.threads").read_text()) for rank in (0, 1)}
    return {rank: [name for name in found if "gloo" in name] for rank, found in names.items()}


def _train_in_process(out: Path, epochs: int, batch_size: int) -> None:
    from vaekit.app.cli import main

    assert main(["train", *AE, "--epochs", str(epochs), "--batch-size", str(batch_size), "--out", str(out)]) == 0


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_take_the_steps_one_process_takes_and_only_rank_0_touches_the_run(tmp_path):
    """B = 101 on the 1617 training digits: 51 + 50 examples per step, and a last minibatch of
    one example, so rank 1's share of it is empty (it joins with a zero loss)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _train_in_process(one, epochs=2, batch_size=101)
    done = _audited(two, tmp_path / "audit", "train", *AE, "--epochs", "2", "--batch-size", "101", "--out", str(two))
    assert done.returncode == 0, done.stderr
    assert _max_weight_difference(one, two) < 1e-6  # 34 steps
    for a, b in zip(_metrics(one), _metrics(two), strict=True):
        assert a["train_reconstruction"] == pytest.approx(b["train_reconstruction"], rel=1e-6)
        assert a["validation_reconstruction"] == pytest.approx(b["validation_reconstruction"], rel=1e-6)
        assert a["train_skipped_steps"] == b["train_skipped_steps"] == 0
    info = json.loads((two / "run.json").read_text())
    assert (info["world_size"], info["backend"]) == (2, "gloo")
    evaluation = json.loads((two / "evaluation.json").read_text())
    assert evaluation["n"] == 180 and evaluation["split"] == "validation"
    seen = _accesses(tmp_path / "audit")
    assert seen[1] == [], seen[1][:5]  # rank 1 never touched the run directory, not even to look
    assert _gloo_threads_left(tmp_path / "audit") == {0: [], 1: []}
    written = {Path(path).name for event, path in seen[0] if event == "os.rename"}
    assert {"config.json", "run.json", "checkpoint.safetensors", "model.safetensors", "evaluation.json"} <= written


def test_a_stochastic_vae_on_two_ranks_takes_the_steps_one_process_takes(tmp_path):
    """The reparameterisation noise is keyed by (seed, step, example) and drawn for the whole
    minibatch on every rank (vaekit.noise), so a VAE, not only the deterministic autoencoder,
    trains alike on 2 ranks and in 1 process (before keyed noise: max |Δw| 6e-2 after 3 epochs)."""
    one, two = tmp_path / "one", tmp_path / "two"
    from vaekit.app.cli import main

    cli = [*VAE, "--epochs", "2", "--batch-size", "101"]
    assert main(["train", *cli, "--out", str(one)]) == 0
    done = _audited(two, tmp_path / "audit", "train", *cli, "--out", str(two))
    assert done.returncode == 0, done.stderr
    assert _max_weight_difference(one, two) < 1e-5  # 34 steps
    for a, b in zip(_metrics(one), _metrics(two), strict=True):
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], rel=1e-5)
        assert a["validation_elbo"] == pytest.approx(b["validation_elbo"], rel=1e-5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meeting_over_a_c10d_rendezvous_take_the_steps_one_process_takes(tmp_path):
    """Beyond one node: two torchrun launchers, one rank each, meet at a c10d rendezvous on
    loopback (as two machines would over the network) and train the weights one process does."""
    one, two = tmp_path / "one", tmp_path / "two"
    from vaekit.app.cli import main

    cli = [*VAE, "--epochs", "1", "--batch-size", "101"]
    assert main(["train", *cli, "--out", str(one)]) == 0
    env = _env(VAEKIT_AUDIT_WATCH=str(two), VAEKIT_AUDIT_LOG=str(tmp_path / "audit"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                "--rdzv-id", uuid.uuid4().hex, str(DRIVER), "train", *cli, "--out", str(two)]
    nodes = [subprocess.Popen(launcher, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    info = json.loads((two / "run.json").read_text())
    assert info["world_size"] == 2
    assert _max_weight_difference(one, two) < 1e-5  # 17 steps


def test_resume_at_another_world_size_1_2_1(tmp_path):
    """One process trains epoch 1, two ranks epoch 2 (rank 0 alone reading the checkpoint),
    one process epoch 3: the same weights as 3 epochs in one process, within float error,
    and the run record lists each stretch's world size."""
    whole, run = tmp_path / "whole", tmp_path / "run"
    _train_in_process(whole, epochs=3, batch_size=37)
    _train_in_process(run, epochs=1, batch_size=37)
    done = _audited(run, tmp_path / "audit", "train", "--resume", str(run), "--epochs", "2")
    assert done.returncode == 0, done.stderr
    seen = _accesses(tmp_path / "audit")
    assert seen[1] == [], seen[1][:5]
    assert _gloo_threads_left(tmp_path / "audit") == {0: [], 1: []}
    assert any(Path(path).name == "checkpoint.safetensors" and event == "open" for event, path in seen[0])
    from vaekit.app.cli import main

    assert main(["train", "--resume", str(run), "--epochs", "3", "-q", "--no-figures"]) == 0
    assert _max_weight_difference(whole, run) < 1e-5  # 132 steps
    assert _metrics(whole)[0] == {**_metrics(run)[0], "seconds": _metrics(whole)[0]["seconds"]}  # epoch 1: bit for bit
    info = json.loads((run / "run.json").read_text())
    assert [(s["epoch"], s["world_size"], s["backend"]) for s in info["trained_with"]] == [
        (0, 1, None), (1, 2, "gloo"), (2, 1, None)]


def test_step_budget_schedule_and_patience_agree_across_ranks(tmp_path):
    """--steps with a cosine schedule: 2 ranks take the steps 1 process takes (the last epoch
    cut short at the same step), and a time budget with early stopping ends every rank
    together (rank 0's clock is the budget's), keeping the best epoch's weights."""
    from vaekit.app.cli import main

    one, two, timed = tmp_path / "one", tmp_path / "two", tmp_path / "timed"
    recipe = [*AE, "--steps", "40", "--batch-size", "101", "--lr-schedule", "cosine", "--lr", "3e-3"]
    assert main(["train", *recipe, "--out", str(one)]) == 0
    done = subprocess.run(_torchrun("-m", "vaekit", "train", *recipe, "--out", str(two)), env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert _max_weight_difference(one, two) < 1e-6
    assert [r["steps"] for r in _metrics(two)] == [r["steps"] for r in _metrics(one)] == [17, 34, 40]
    assert _metrics(two)[-1]["lr"] == pytest.approx(_metrics(one)[-1]["lr"], rel=1e-6)
    done = subprocess.run(_torchrun("-m", "vaekit", "train", *VAE, "--time-budget", "2s", "--patience", "2",
                                    "--batch-size", "64", "--out", str(timed)),
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    info = json.loads((timed / "run.json").read_text())
    assert (info["world_size"], info["time_budget"]) == (2, 2.0)
    records = _metrics(timed)
    assert records and all(r["steps"] > 0 for r in records)
    from vaekit import checkpoint

    plan = checkpoint.load(timed).meta["plan"]
    assert plan is not None and plan["budget"] == 2.0


def _worker_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the workers whose environment carries ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(line.split("=", 1) for line in (entry / "environ").read_text().split("\0") if "=" in line)
        except OSError:
            continue
        if env.get("VAEKIT_TEST_JOB") == marker and "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _start_long_run(out: Path, *extra: str, model: list[str] = AE) -> tuple[subprocess.Popen, str]:
    marker = uuid.uuid4().hex
    process = subprocess.Popen(
        _torchrun("-m", "vaekit", "train", *model, "--epochs", "400", "--batch-size", "37", "--out", str(out), *extra),
        env=_env(VAEKIT_TEST_JOB=marker), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (out / "checkpoint.safetensors").exists():  # training is under way in both ranks
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process, marker


def test_a_killed_rank_ends_the_job_with_a_clear_message_and_a_checkpoint_to_resume(tmp_path):
    out = tmp_path / "run"
    process, marker = _start_long_run(out, "--checkpoint-minutes", "0.002")  # checkpoints inside epochs too
    ranks = _worker_pids(marker)
    assert sorted(ranks) == [0, 1]
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    _, err = process.communicate(timeout=60)  # bounded: no hang
    ended = time.monotonic() - killed
    assert process.returncode != 0
    assert "another of the 2 processes of this job is gone" in err or "torchrun stops every process" in err, err
    assert f"vaekit train --resume {out}" in err or "stopped by SIGTERM" in err
    assert ended < 60
    from vaekit import checkpoint
    from vaekit.app.cli import main

    ckpt = checkpoint.load(out)  # complete and checked
    done = ckpt.meta["epoch"] + (ckpt.meta["in_epoch"] is not None)
    assert main(["train", "--resume", str(out), "--epochs", str(done + 1), "-q", "--no-figures"]) == 0
    assert len(_metrics(out)) == done + 1


def test_sigterm_to_torchrun_checkpoints_and_stops_like_one_process_and_resumes_exactly(tmp_path):
    """torchrun passes SIGTERM to every rank; they agree on the step to stop after, rank 0
    writes the checkpoint (every rank's generator in it) and says where it is. A VAE (rank
    1 draws its own reparameterisation noise) resumed with 2 ranks ends bit for bit where
    the uninterrupted 2-rank run does."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    process, _ = _start_long_run(out, model=VAE)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert "stopped by SIGTERM; the checkpoint holds epoch" in err, err
    assert err.count("stopped by SIGTERM; the checkpoint holds") == 1  # rank 0 alone says so
    from vaekit import checkpoint

    ckpt = checkpoint.load(out)
    where = f"epoch {ckpt.meta['epoch']}" if ckpt.meta["in_epoch"] is None else \
        f"epoch {ckpt.meta['epoch'] + 1}, step {ckpt.meta['in_epoch']['step']}"
    assert f"the checkpoint holds {where}." in err
    assert ckpt.meta["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "rng.rank1.torch" in ckpt.tensors and not torch.equal(ckpt.tensors["rng.rank1.torch"],
                                                                  ckpt.tensors["rng.torch"])
    epochs = str(ckpt.meta["epoch"] + 1)
    for command in (["--resume", str(out), "--epochs", epochs],
                    [*VAE, "--batch-size", "37", "--epochs", epochs, "--out", str(whole)]):
        done = subprocess.run(_torchrun("-m", "vaekit", "train", *command), env=_env(), capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
    a, b = load_file(out / "model.safetensors"), load_file(whole / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distributed_evaluation_equals_one_process(tiny_run, tmp_path):
    """180 validation digits in batches of 50 (ranks 0 and 1 take two each): every figure, and
    every example's scores, are those of one process (each batch draws from its own stream)."""
    args = ["evaluate", str(tiny_run), "--importance-samples", "16", "--batch-size", "50", "--no-save",
            "--json", "-q", "--gap-decomposition", "--local-steps", "2"]
    one = run_cli(*args, "--per-example", str(tmp_path / "one.csv"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(_torchrun("-m", "vaekit", *args, "--per-example", str(tmp_path / "two.csv")),
                         env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert two.returncode == 0, two.stderr
    printed = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # rank 0 alone prints
    a, b = json.loads(one.stdout), json.loads(printed[0])
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
        else:
            assert a[key] == b[key], key
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()


def test_dist_backend_outside_torchrun_and_unknown_backends_are_refused(capsys, tmp_path):
    from vaekit.app.cli import main

    assert main(["train", "--data", "digits", "--dist-backend", "nccl", "--out", str(tmp_path / "r")]) == 2
    assert "--dist-backend applies under torchrun" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--dist-backend", "mpi", "--out", str(tmp_path / "r")]) == 2
    assert "--dist-backend must be one of auto, gloo, nccl" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_fit_in_a_script_of_ones_own_on_tensors_datasets_and_lazily_read_arrays(tmp_path):
    """``vaekit.fit`` under a process group the script set up: the same steps as one process
    for a tensor, a Dataset and an array read on demand, each rank reading only its rows; a
    DataLoader must shard (DistributedSampler) and is refused otherwise, on every rank."""
    import ddp_library as script

    done = subprocess.run(_torchrun(str(Path(script.__file__)), str(tmp_path)), env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    expected = script.train(script.data())  # one process, the tensor
    for kind in ("tensor", "dataset", "lazy"):
        got = load_file(tmp_path / f"{kind}.safetensors")
        assert max(float((got[k] - expected[k]).abs().max()) for k in expected) < 1e-6, kind  # 18 steps
    # a few first rows, read by every rank before training: the protocol check (vaekit.protocol), the
    # unused-parameter probe and the example's shape
    probes = 8 + 8 + 1
    reads = {rank: json.loads((tmp_path / f"rows.{rank}").read_text())[probes:] for rank in (0, 1)}
    from collections import Counter

    assert Counter(reads[0] + reads[1]) == {row: script.EPOCHS for row in range(script.N)}
    shares = [sum(len(range(rank, min(script.BATCH, script.N - s), 2)) for s in range(0, script.N, script.BATCH))
              for rank in (0, 1)]
    assert [len(reads[0]), len(reads[1])] == [script.EPOCHS * share for share in shares]
    scans = [json.loads((tmp_path / f"scan.{rank}").read_text()) for rank in (0, 1)]
    assert sorted(scans[0]["rows"] + scans[1]["rows"]) == list(range(script.N))  # each chunk read once
    assert scans[0]["range"] == scans[1]["range"] == [0.0, 1.0, False]
    loader = json.loads((tmp_path / "loader.json").read_text())
    assert "a DataLoader must shard its data" in loader["refused"]
    assert -80 < loader["elbo"] < 0
