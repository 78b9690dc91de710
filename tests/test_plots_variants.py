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


def latent_colours(monkeypatch, run) -> tuple[set, list[str]]:
    """Run ``run()`` and return the distinct point colours of every latent.png it draws,
    and the legend's texts (figure (a) is caught before it is saved)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection

    caught = []
    real = plots._save

    def save(fig, path):
        if path.name == "latent.png":
            caught.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    run()
    assert caught, "no latent.png was drawn"
    colours, legend = set(), []
    for fig in caught:
        FigureCanvasAgg(fig).draw()
        ax = fig.axes[0]
        for collection in ax.collections:
            if isinstance(collection, PathCollection) and len(collection.get_offsets()):
                colours |= {tuple(c.round(3)) for c in collection.get_facecolors()}
        if ax.get_legend():
            legend += [t.get_text() for t in ax.get_legend().get_texts()]
    return colours, legend


def test_the_latent_figure_is_coloured_by_class_with_names_in_the_legend(monkeypatch, tmp_path, digits):
    """An unconditional model's figure (a) is coloured by the data's labels."""
    x, labels = digits
    model = make_vae((1, 8, 8), [16]).eval()
    names = [f"digit {c}" for c in range(10)]
    colours, legend = latent_colours(monkeypatch, lambda: plots.latent_figure(
        model, x[:500], labels[:500], tmp_path / "latent.png", names))
    assert len(colours) == 10
    assert legend == names
    colours, legend = latent_colours(monkeypatch, lambda: plots.latent_figure(
        model, x[:500], None, tmp_path / "latent.png"))
    assert len(colours) == 1 and legend == []  # no labels: one colour, and no legend
