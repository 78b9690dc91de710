"""Figures of the variant models: (b) per class for the CVAE, traversals, interpolations,
and the whole set for the two-layer model."""

from __future__ import annotations

import torch

from conftest import make_vae
from vaekit import plots
from vaekit.rundir import FIGURES

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_figure_is_drawn_for_the_two_layer_and_conditional_models(tmp_path, digits):
    x, labels = digits
    for name, settings in (("hvae", dict(model="hvae", latent_dim=4)), ("cvae", dict(num_classes=10))):
        model = make_vae((1, 8, 8), [16], **settings).eval()
        out = tmp_path / name
        out.mkdir()
        paths = plots.draw_all(out, model, x[:1600], labels[:1600], x[1600:], labels[1600:], [])
        assert {p.name for p in paths} == set(FIGURES) - {"curves.png"}
        for path in paths:
            assert path.read_bytes()[:8] == PNG


def test_manifold_for_one_class_and_traversal_of_chosen_dimensions(tmp_path):
    model = make_vae((1, 8, 8), [8], 3, num_classes=3).eval()
    path = plots.manifold_figure(model, tmp_path / "m.png", n=5, label=2)
    assert path.read_bytes()[:8] == PNG
    x = torch.rand(2, 1, 8, 8)
    path = plots.traversals_figure(model, x, tmp_path / "t.png", labels=torch.tensor([1, 0]),
                                   dims=[0, 2], steps=5)
    assert path.read_bytes()[:8] == PNG
    path = plots.interpolations_figure(model, x[:1], x[1:], tmp_path / "i.png",
                                       labels=torch.tensor([1, 0]), steps=4)
    assert path.read_bytes()[:8] == PNG
