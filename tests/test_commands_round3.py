"""Commands as a new user meets them (issue 24, round three) and per-step sizes that cannot fit
in memory (issue 25 item 5): each test fails on the behaviour the issue reported."""

from __future__ import annotations

from data.helpers import cli


# ---------------------------------------------------------------------- 24.8 plot -o NEWDIR
def test_plot_creates_its_output_folder(tiny_run, tmp_path, capsys):
    folder = tmp_path / "new" / "figures"
    status, out, err = cli(capsys, "plot", tiny_run, "-o", folder, "--threads", "1")
    assert status == 0, err
    assert (folder / "latent.png").is_file() and f"wrote {folder / 'latent.png'}" in out


def test_plot_refuses_a_file_as_its_output_folder(tiny_run, tmp_path, capsys):
    target = tmp_path / "figures"
    target.write_text("mine")
    status, _, err = cli(capsys, "plot", tiny_run, "-o", target)
    assert status == 2 and err.strip() == f"error: --output {target} is a file, not a folder"
    assert target.read_text() == "mine"
