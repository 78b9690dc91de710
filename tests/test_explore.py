"""`vaekit explore`: the app's answers and its checks on every request, without a browser
(test_browser.py drives the page in chromium)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SRC, run_cli
from vaekit.app import explore
from vaekit.app.config import Config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status_code, self.headers, self.content = status, headers, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.content)


class Client:
    """Plain HTTP requests to a real server (uvicorn, as `vaekit explore` runs it)."""

    def __init__(self, base: str):
        self.base = base

    def request(self, method: str, path: str, params: dict | None = None, headers: dict | None = None) -> Reply:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        request = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.headers, err.read())

    def get(self, path: str, **kwargs) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> Reply:
        return self.request("POST", path, **kwargs)


@contextmanager
def serving(explorer, loopback: bool = True, host: str | None = None):
    """The app under uvicorn in a thread, on a free port; stopped on leaving. With ``host``:
    bound there as `vaekit explore --host` binds it."""
    import uvicorn

    if host is None:
        sock, address = explore.listening_socket("127.0.0.1", 0), "127.0.0.1"
        app = explore.create_app(explorer, loopback)
    else:
        binding = explore.bind(host, 0)
        sock, address = binding.sock, binding.address
        app = explore.create_app(explorer, loopback=binding.loopback, hosts=binding.hosts)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server did not start"
    try:
        yield Client(f"http://{address}:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def image(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


@pytest.fixture(scope="module")
def vae(tiny_run):
    return explore.load_explorer(tiny_run)


@pytest.fixture(scope="module")
def client(vae):
    with serving(vae) as client:
        yield client


@pytest.fixture(scope="module")
def cvae(tmp_path_factory):
    run = tmp_path_factory.mktemp("explore") / "cvae"
    shutil.copytree(FIXTURES / "cvae-v0.1", run)
    return explore.load_explorer(run)


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A run with a 3-D latent space: shown in the plane of two principal components."""
    from vaekit.app.runs import train

    config = Config(data="digits", hidden=[16], latent_dim=3, epochs=1, batch_size=256, binarize="dynamic")
    run = train(config, tmp_path_factory.mktemp("explore") / "deep", quiet=True, figures=False)
    return explore.load_explorer(run)


def test_info_describes_the_encoded_data(vae, client):
    info = client.get("/api/info").json()
    assert info["n"] == len(vae.mu) == 180  # digits' validation split, encoded at start
    assert info["plane"] == "latent" and info["latent_dim"] == 2
    assert len(info["u"]) == len(info["v"]) == len(info["labels"]) == 180
    assert info["class_names"] == [str(c) for c in range(10)]
    # the plane of a 2-D latent space is the space itself: the points are the posterior means
    x = vae.x[:5]
    mu = vae.model.encode(x).mean.detach().numpy()
    assert np.allclose(np.c_[info["u"][:5], info["v"][:5]], mu, atol=1e-4)


def test_decode_returns_the_models_mean_image(vae, client):
    z = np.array([0.5, -1.25])
    got = image(client.get("/api/decode", params={"z": "0.5,-1.25"}))
    expected = vae.model.decode_mean(torch.tensor(z[None], dtype=torch.float32))[0, 0].detach().numpy()
    assert got.shape == (8, 8)
    assert np.abs(got / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
    other = image(client.get("/api/decode", params={"z": "-2,2"}))
    assert not np.array_equal(got, other)


def test_decoded_points_are_cached(vae, client):
    vae.cache.clear()
    first = client.get("/api/decode", params={"z": "0.25,0.75"}).content
    assert len(vae.cache) == 1
    assert client.get("/api/decode", params={"z": "0.25,0.75"}).content == first
    assert len(vae.cache) == 1


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "z is required"),
        ("z=1", "must have 2 numbers"),
        ("z=1,2,3", "must have 2 numbers"),
        ("z=1,abc", "comma-separated numbers"),
        ("z=nan,0", "finite"),
        ("z=inf,0", "finite"),
        ("z=1e300,0", "within"),
        ("z=1,2&label=3", "not conditional"),
        ("z=1,2&evil=1", "unknown parameter"),
        ("z=1,2&z=3,4", "more than once"),
        ("z=" + ",".join(["1"] * 5000), "too long"),
    ],
)
def test_a_malformed_decode_gets_400_and_one_line(client, query, message):
    response = client.get(f"/api/decode?{query}")
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    assert client.get("/api/decode?z=0,0").status_code == 200  # and the server carries on


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/grid?x0=-1&x1=1&y0=-1&y1=1&cols=0&rows=2", 400),
        ("/api/grid?x0=-1&x1=1&y0=-1&y1=1&cols=33&rows=2", 400),
        ("/api/grid?x0=1&x1=-1&y0=-1&y1=1&cols=2&rows=2", 400),
        ("/api/grid?x0=-1&x1=1&y0=-1&y1=nan&cols=2&rows=2", 400),
        ("/api/grid?x0=-1&x1=1&y0=-1&y1=1&cols=2.5&rows=2", 400),
        ("/api/interpolate?a=0&b=180", 400),
        ("/api/interpolate?a=-1&b=2", 400),
        ("/api/interpolate?a=0&b=1&steps=1000", 400),
        ("/api/interpolate?a=0&b=1&method=cubic", 400),
        ("/api/example?i=180", 400),
        ("/api/example", 400),
        ("/api/nothing", 404),
        ("/static/explore.py", 404),
        ("/static/..%2Fexplore.py", 404),
        ("/static/../explore.py", 404),
        ("/../../etc/passwd", 404),
    ],
)
def test_every_parameter_is_checked(client, path, status):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert "Traceback" not in response.text


def test_only_get_and_only_loopback_hosts(client, vae):
    assert client.post("/api/decode?z=0,0").status_code == 405
    assert client.get("/api/info", headers={"host": "evil.example:8000"}).status_code == 400
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "explore.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/plotly.min.js").status_code == 200
    assert client.get("/static/explore.js").status_code == 200
    # served on another address on purpose, any Host is accepted
    with serving(vae, loopback=False) as anywhere:
        assert anywhere.get("/api/info", headers={"host": "evil.example:8000"}).status_code == 200


def test_grid_and_interpolation_images(vae, client):
    grid = image(client.get("/api/grid?x0=-2&x1=2&y0=-1&y1=1&cols=6&rows=3"))
    assert grid.shape == (3 * 8, 6 * 8)
    # the top-left cell is the decoded centre of that cell: (-2 + 4/12, 1 - 2/6)
    cell = vae.model.decode_mean(torch.tensor([[-2 + 4 / 12, 1 - 2 / 6]]))[0, 0].detach().numpy()
    assert np.abs(grid[:8, :8] / 255.0 - cell).max() <= 0.5 / 255 + 1e-6
    strip = image(client.get("/api/interpolate?a=0&b=1&steps=5"))
    assert strip.shape == (8, 7 * 8 + 6)  # example, 5 decoded points, example; 1-pixel gaps
    first = image(client.get("/api/example?i=0"))
    assert np.array_equal(strip[:, :8], first)
    spherical = image(client.get("/api/interpolate?a=0&b=1&steps=5&method=spherical"))
    assert spherical.shape == strip.shape


def test_a_conditional_model_needs_and_uses_a_class(cvae):
    with serving(cvae) as client:
        check_conditional(client)


def check_conditional(client):
    info = client.get("/api/info").json()
    assert info["classes"] == 10
    assert client.get("/api/decode?z=0,0").status_code == 400
    assert client.get("/api/decode?z=0,0&label=10").status_code == 400
    three = image(client.get("/api/decode?z=0,0&label=3"))
    seven = image(client.get("/api/decode?z=0,0&label=7"))
    assert not np.array_equal(three, seven)
    assert client.get("/api/grid?x0=-1&x1=1&y0=-1&y1=1&cols=2&rows=2&label=1").status_code == 200
    assert client.get("/api/interpolate?a=0&b=1").status_code == 200  # the first example's class


def test_more_than_two_dimensions_use_the_principal_plane(deep):
    info = deep.info()
    assert info["plane"] == "pca" and info["latent_dim"] == 3
    basis = np.array(info["basis"])
    assert np.allclose(basis @ basis.T, np.eye(2), atol=1e-8)
    # a plane point maps to a z whose projection is that point again
    z = deep.plane_to_z(np.array([0.3]), np.array([-0.2]))[0]
    assert np.allclose(basis @ (z - np.array(info["center"])), [0.3, -0.2])
    assert np.allclose(np.c_[info["u"], info["v"]], (deep.mu - deep.center) @ basis.T, atol=1e-3)
    with serving(deep) as client:
        assert client.get("/api/decode?z=0,0").status_code == 400
        assert client.get("/api/decode?z=0,0,0").status_code == 200


def test_points_cap_takes_a_seeded_subset(tiny_run):
    small = explore.load_explorer(tiny_run, max_points=50)
    again = explore.load_explorer(tiny_run, max_points=50)
    assert len(small.mu) == 50 and small.total == 180
    assert np.array_equal(small.mu, again.mu)


def test_loopback_names():
    assert explore.is_loopback("127.0.0.1") and explore.is_loopback("::1") and explore.is_loopback("localhost")
    assert not explore.is_loopback("0.0.0.0") and not explore.is_loopback("192.168.1.2")


def test_cli_errors_are_one_line(tmp_path, tiny_run):
    done = run_cli("explore", tmp_path / "nowhere", "--no-browser")
    assert done.returncode == 2 and "run directory not found" in done.stderr
    done = run_cli("explore", tiny_run, "--no-browser", "--port", "70000")
    assert done.returncode == 2 and "--port must be" in done.stderr
    assert "Traceback" not in done.stderr


def test_serving_beyond_this_machine_warns(tiny_run):
    """`--host 0.0.0.0` serves (the URL is printed) with a warning on stderr; SIGTERM stops it."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "vaekit", "explore", str(tiny_run), "--host", "0.0.0.0", "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        assert lines and "http://0.0.0.0:" in lines[0], lines
        port = int(lines[0].rsplit(":", 1)[1].split("/")[0])
        assert Client(f"http://127.0.0.1:{port}").get("/api/info").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate(timeout=20)
    assert "warning: serving on 0.0.0.0" in err
    assert "Traceback" not in err


def test_table_rows_are_drawn_in_their_own_units(tmp_path):
    """A standardised table: examples are shown in the data's units, each feature from its
    own minimum (black) to its maximum (white); class names come from the label column."""
    from vaekit.app.runs import train

    rng = np.random.default_rng(0)
    values = rng.normal(size=(120, 5)) * [1, 10, 100, 1000, 5] + 50
    lines = ["a,b,c,d,e,kind"] + [",".join(f"{v:.6f}" for v in row) + f",{'xy'[i % 2]}"
                                  for i, row in enumerate(values)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    config = Config(data=str(tmp_path / "t.csv"), label_column="kind", standardize=True, likelihood="gaussian",
                    hidden=[8], latent_dim=2, epochs=1, validation_fraction=0.25)
    run = train(config, tmp_path / "run", quiet=True, figures=False)
    explorer = explore.load_explorer(run)
    assert explorer.class_names == ["x", "y"]
    with serving(explorer) as client:
        shown = image(client.get("/api/example?i=0"))
    assert shown.shape == (2, 3)  # 5 features wrapped 3 to a row
    # the example in its original units, scaled per feature over the shown examples
    original = explorer.display(explorer.x).double().numpy()
    assert original[:, 3].std() > 300 and abs(original[:, 0].mean() - 50) < 1  # the data's units, not z-scores
    lo, hi = original.min(0), original.max(0)
    expected = np.rint((original[0] - lo) / (hi - lo) * 255)
    assert np.abs(shown.reshape(-1)[:5] - expected).max() <= 1


def test_other_data_are_encoded_and_checked(tiny_run, tmp_path):
    from vaekit.app.data import load_data
    from vaekit.errors import VaekitError

    digits = load_data("digits").train.x[:40].numpy()
    np.save(tmp_path / "some.npy", digits)
    other = explore.load_explorer(tiny_run, data=str(tmp_path / "some.npy"))
    assert (len(other.mu), other.split, other.labels) == (40, "all", None)
    assert other.info()["splits"] == ["all"]  # the run's splits are not these data's
    np.save(tmp_path / "wrong.npy", np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(VaekitError, match="shaped"):
        explore.load_explorer(tiny_run, data=str(tmp_path / "wrong.npy"))


@pytest.mark.parametrize(("host", "address"), [("127.0.0.2", "127.0.0.2"), ("127.1", "127.0.0.1"),
                                               ("localhost", "127.0.0.1")])
def test_any_loopback_address_is_served_and_guarded(vae, host, address):
    """The Host check and the warning follow the address bound: --host 127.0.0.2 answers its
    own Host name; --host 127.1 (127.0.0.1 spelt short) is loopback, so no warning and the
    check stays on."""
    binding = explore.bind(host, 0)
    binding.sock.close()
    assert (binding.address, binding.loopback) == (address, True)
    assert binding.url.startswith(f"http://{address}:") and "*" not in binding.hosts
    with serving(vae, host=host) as client:
        port = client.base.rsplit(":", 1)[1]
        assert client.get("/api/info").status_code == 200  # Host: the address in the printed URL
        assert client.get("/api/info", headers={"host": f"{host}:{port}"}).status_code == 200
        assert client.get("/api/info", headers={"host": f"localhost:{port}"}).status_code == 200
        assert client.get("/api/info", headers={"host": f"evil.example:{port}"}).status_code == 400


def test_a_non_loopback_address_accepts_any_host():
    binding = explore.bind("0.0.0.0", 0)
    binding.sock.close()
    assert (binding.loopback, binding.hosts) == (False, ["*"])


# ---------------------------------------------------------------------- the other splits, --threads, --device
def test_the_page_offers_every_split_and_loads_each_on_first_use(vae, client):
    info = client.get("/api/info").json()
    assert (info["split"], info["splits"]) == ("validation", ["validation", "train", "all"])  # digits: no test
    train = client.get("/api/info?split=train").json()
    assert (train["split"], train["n"], train["total"]) == ("train", 1617, 1617)
    assert "train" in vae.views  # loaded now, kept for the next request
    # the same plane (a 2-D latent space: the posterior means themselves)
    view = vae.view("train")
    mu = vae.model.encode(view.x[:5]).mean.detach().numpy()
    assert np.allclose(np.c_[train["u"][:5], train["v"][:5]], mu, atol=1e-4)
    assert view.x.shape[0] == 1617 and not torch.equal(view.x[:180], vae.x)
    # indices are the split's own: #1000 exists in train only
    assert client.get("/api/example?i=1000").status_code == 400
    expected = view.png(view.examples([1000]))
    assert client.get("/api/example?i=1000&split=train").content == expected
    assert client.get("/api/interpolate?a=0&b=1500&steps=3&split=train").status_code == 200
    whole = client.get("/api/info?split=all").json()
    assert whole["n"] == 1797
    for bad, message in (("test", "split must be one of validation, train, all; got 'test'"),
                         ("nope", "split must be one of")):
        reply = client.get(f"/api/info?split={bad}")
        assert reply.status_code == 400 and message in reply.json()["error"]


def test_other_splits_keep_the_first_splits_principal_plane(deep):
    train = deep.view("train")
    assert np.array_equal(train.center, deep.center) and np.array_equal(train.basis, deep.basis)
    assert np.allclose(train.plane, (train.mu - deep.center) @ deep.basis.T)
    assert train.info()["axis_titles"] == deep.info()["axis_titles"]


def test_explore_takes_threads_and_device(tiny_run, capsys, monkeypatch):
    from data.helpers import cli

    seen = {}

    def serve(run_dir, **options):
        seen.update(options, threads=torch.get_num_threads())

    monkeypatch.setattr(explore, "serve", serve)
    before = torch.get_num_threads()
    status, _, err = cli(capsys, "explore", tiny_run, "--no-browser", "--threads", "2", "--device", "cpu")
    assert status == 0, err
    assert (seen["device"], seen["threads"]) == ("cpu", 2)  # set while serving, restored afterwards
    assert torch.get_num_threads() == before
    status, _, err = cli(capsys, "explore", tiny_run, "--threads", "-1")
    assert status == 2 and "--threads must be 0 (auto) or more" in err


def test_the_explorer_runs_the_model_on_the_device_asked_for(tiny_run, monkeypatch):
    """--device reaches load_run, and inputs follow the model to its device."""
    from vaekit.app import runs

    asked = []
    real = runs.load_run

    def load_run(run_dir, weights="last", device="cpu"):
        asked.append(device)
        return real(run_dir, weights, device="cpu")

    monkeypatch.setattr(runs, "load_run", load_run)
    shown = explore.load_explorer(tiny_run, max_points=20, device="meta-device-name")
    assert asked == ["meta-device-name"] and shown.device == torch.device("cpu")
