"""Run by tests/test_distributed.py under torchrun: ``vaekit.fit`` in a script that sets up
its own process group, on a tensor, a Dataset and a lazily read array of the same 300
digits; rank 0 saves each model's weights in OUT, every rank counts the rows its lazy
array read (OUT/rows.<rank>; OUT/scan.<rank> for the app's check of such data), and the
DataLoader rules are tried.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_library.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import vaekit
from vaekit.app.config import Config
from vaekit.app.data import lazy
from vaekit.app.data.lazy import LazyArray, memmap_reader, scan
from vaekit.app.runs import build_model
from vaekit.errors import VaekitError

N, EPOCHS, BATCH = 300, 2, 37


def data() -> torch.Tensor:
    return vaekit.load_data("digits").train.x[:N].reshape(N, -1).contiguous()


def model() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model(Config(model="ae", hidden=[16], latent_dim=2), (64,))


def train(x) -> dict[str, torch.Tensor]:
    m = model()
    vaekit.fit(m, x, epochs=EPOCHS, batch_size=BATCH, dynamic_binarization=True, seed=0, device="cpu")
    return m.state_dict()


def main(out: Path) -> None:
    import torch.distributed.nn  # noqa: F401  (before the group: docs/distributed.md)

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    x = data()
    np.save(out / f"x.{rank}.npy", x.numpy())
    read = memmap_reader(np.load(out / f"x.{rank}.npy", mmap_mode="r"))
    rows = []

    def counted(positions: np.ndarray) -> np.ndarray:
        rows.extend(int(p) for p in positions)
        return read(positions)

    lazy.SCAN_ROWS_BYTES = 50 * 64 * 4  # chunks of 50 rows: 6 to share out
    scanned = LazyArray(counted, N, (64,))
    scan(scanned, "digits", quiet=True)  # the app's check of data read on demand: shared out too
    checked, rows[:] = {"rows": list(rows), "range": scanned.value_range}, []
    weights = {"tensor": train(x), "dataset": train(TensorDataset(x)),
               "lazy": train(LazyArray(counted, N, (64,)))}
    (out / f"rows.{rank}").write_text(json.dumps(rows))
    (out / f"scan.{rank}").write_text(json.dumps(checked))
    refused = ""
    try:
        train(DataLoader(TensorDataset(x), batch_size=BATCH))
    except VaekitError as err:
        refused = str(err)
    sampler = DistributedSampler(TensorDataset(x), seed=0)
    history = vaekit.fit(model(), DataLoader(TensorDataset(x), batch_size=19, sampler=sampler), epochs=1,
                         dynamic_binarization=True, seed=0, device="cpu")
    if rank == 0:
        for kind, state in weights.items():
            save_file(state, out / f"{kind}.safetensors")
        (out / "loader.json").write_text(json.dumps({"refused": refused, "elbo": history[0]["train_elbo"]}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
