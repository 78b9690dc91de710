"""Figures of the variant models: (b) per class for the CVAE, traversals, interpolations,
and the whole set for the two-layer model."""

from __future__ import annotations

import torch

from vaekit import plots
from vaekit.app.config import Config
from vaekit.app.data import run_splits
from vaekit.app.runs import build_model
from vaekit.rundir import FIGURES

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_drawn_for_the_two_layer_and_conditional_models(tmp_path):
    for settings in (dict(model="hvae", kl="mc", latent_dim=4), dict(model="cvae", classes=10)):
        config = Config(data="digits", hidden=[16], binarize="dynamic", **settings)
        model = build_model(config, (1, 8, 8)).eval()
        out = tmp_path / settings["model"]
        out.mkdir()
        splits = run_splits(config)
        train, shown = splits["train"], splits["validation"]
        paths = plots.draw_all(out, model, train.x, train.labels, shown.x, shown.labels, [])
        assert {p.name for p in paths} == set(FIGURES) - {"curves.png"}
        for path in paths:
            assert path.read_bytes()[:8] == PNG


def test_manifold_for_one_class_and_traversal_of_chosen_dimensions(tmp_path):
    model = build_model(Config(model="cvae", classes=3, hidden=[8], latent_dim=3), (1, 8, 8)).eval()
    path = plots.manifold_figure(model, tmp_path / "m.png", n=5, label=2)
    assert path.read_bytes()[:8] == PNG
    x = torch.rand(2, 1, 8, 8)
    path = plots.traversals_figure(model, x, tmp_path / "t.png", labels=torch.tensor([1, 0]),
                                   dims=[0, 2], steps=5)
    assert path.read_bytes()[:8] == PNG
    path = plots.interpolations_figure(model, x[:1], x[1:], tmp_path / "i.png",
                                       labels=torch.tensor([1, 0]), steps=4)
    assert path.read_bytes()[:8] == PNG
