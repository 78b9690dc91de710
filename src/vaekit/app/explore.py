"""``vaekit explore``: a local web app to look at and touch a run's latent space.

The page shows the encoded data (posterior means; for d > 2 in the plane of their first two
principal components) coloured by class; hovering a point shows the example, clicking
anywhere on the plane decodes that point, one slider per latent dimension moves it, two
picked examples are interpolated, the decoded grid can be laid under the points at the
current zoom, and a conditional model gets a class selector.

The server (Starlette under uvicorn) does the model's work: ``representative(model.encode(x))`` once
at start (and once for each other split the page switches to, when it first asks for it; every
split is drawn in the plane of the first, so that switching keeps the axes),
``model.decode_mean(z)`` per request, every request's points decoded in one
batched call and the PNGs of single points kept in an LRU cache. It binds 127.0.0.1 unless
told otherwise, accepts only the Host names it is served under on loopback (no DNS
rebinding), validates every parameter (finite z of the right length and bounded size,
bounded counts, known indices and classes), answers a bad request with a 4xx and a one-line
JSON error, and serves only its own page, script and style plus plotly's JavaScript from
the installed plotly package.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import math
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaekit.errors import VaekitError
from vaekit.model import num_classes
from vaekit.sampling import posterior_means

Z_LIMIT = 50.0  # largest |z_i| accepted: 50 prior standard deviations, far outside the data
MAX_GRID = 32  # grid columns and rows: 32² = 1024 decodes per request at most
MAX_STEPS = 32  # interpolation points
MAX_POINTS = 10_000  # examples shown by default (a seeded random subset of larger data)
SVG_POINTS = 3000  # above this the scatter is drawn with WebGL (plotly's SVG gets slow)
CACHE_SIZE = 4096  # decoded single points kept as PNG bytes
STATIC = Path(__file__).with_name("explore_static")
ASSETS = {"explore.js": "text/javascript", "explore.css": "text/css"}


# ---------------------------------------------------------------------- the model side
@dataclass
class Explorer:
    """A loaded run and its encoded data: everything the app serves, independent of HTTP."""

    model: Any
    name: str
    data_name: str
    split: str
    x: torch.Tensor  # the examples shown, in model space
    labels: torch.Tensor | None  # their class indices, or None
    class_names: list[str] | None
    mu: np.ndarray  # [N, d] posterior means
    center: np.ndarray  # [d]: z = center + u·basis[0] + v·basis[1] for a plane point (u, v)
    basis: np.ndarray  # [2, d], orthonormal rows
    plane: np.ndarray  # [N, 2] the points drawn
    plane_kind: str  # latent | pca | line
    axis_titles: tuple[str, str]
    display: Any = None  # maps model-space values to the data's units (standardised data)
    lo: Any = 0.0  # the range drawn from black to white: one for images, per feature for vectors
    hi: Any = 1.0
    total: int = 0  # examples in the split before subsampling
    splits: list[str] = field(default_factory=list)  # the splits the page may switch to (this one first)
    loader: Any = None  # split name -> Dataset, for the other splits
    max_points: int = MAX_POINTS
    seed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the model, shared by threads
    cache: OrderedDict = field(default_factory=OrderedDict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)
    # The other splits' views, loaded on first use and shared by every view (dataclasses.replace
    # hands each view these same objects), like the model, its lock and the decoded cache.
    views: dict = field(default_factory=dict)
    views_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters(), torch.empty(0)).device

    @property
    def latent_dim(self) -> int:
        return self.mu.shape[1]

    @property
    def classes(self) -> int:
        return num_classes(self.model)

    # -- decoding
    @torch.no_grad()
    def decode(self, z: np.ndarray, label: int | None) -> torch.Tensor:
        """E[x|z] for the rows of ``z`` in one batched call, in display units."""
        zt = torch.as_tensor(z, dtype=torch.float32).reshape(-1, self.latent_dim).to(self.device)
        extra = () if label is None else (torch.full((len(zt),), label, dtype=torch.long, device=self.device),)
        with self.lock:
            images = self.model.decode_mean(zt, *extra).cpu()
        return images if self.display is None else self.display(images)

    def decode_png(self, z: np.ndarray, label: int | None) -> bytes:
        key = (tuple(float(v) for v in z), label)
        with self.cache_lock:
            png = self.cache.get(key)
            if png is not None:
                self.cache.move_to_end(key)
                return png
        png = self.png(self.decode(z[None], label)[0])
        with self.cache_lock:
            self.cache[key] = png
            if len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        return png

    def plane_to_z(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.center + np.outer(u, self.basis[0]) + np.outer(v, self.basis[1])

    def grid_png(self, x0: float, x1: float, y0: float, y1: float, cols: int, rows: int,
                 label: int | None) -> bytes:
        """The cols×rows grid of plane points at cell centres over [x0, x1] × [y0, y1],
        decoded in one call and tiled edge to edge (top row at y1), to lie under the points."""
        u = x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols
        v = y1 - (np.arange(rows) + 0.5) * (y1 - y0) / rows
        uu, vv = np.meshgrid(u, v)
        images = self.decode(self.plane_to_z(uu.ravel(), vv.ravel()), label)
        return self.png(images, rows=rows, cols=cols, pad=0)

    def interpolation_png(self, a: int, b: int, steps: int, method: str, label: int | None) -> bytes:
        """Example a, ``steps`` decoded points from μ(a) to μ(b), example b: one strip."""
        from vaekit.sampling import interpolate

        path = interpolate(torch.as_tensor(self.mu[a]), torch.as_tensor(self.mu[b]), steps, method)
        decoded = self.decode(path.numpy(), label)
        ends = self.examples([a, b])
        return self.png(torch.cat([ends[:1], decoded, ends[1:]]), rows=1, cols=steps + 2, pad=1)

    def examples(self, index: list[int]) -> torch.Tensor:
        x = self.x[index]
        return x if self.display is None else self.display(x)

    # -- images
    def png(self, images: torch.Tensor, rows: int = 1, cols: int = 1, pad: int = 0) -> bytes:
        """One image or a rows×cols tiling of ``images`` as PNG bytes (grey or RGB)."""
        from PIL import Image

        tiles = self._pixels(images.reshape(-1, *images.shape[-len(self.x.shape[1:]):]))
        n, h, w = tiles.shape[:3]
        canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, *tiles.shape[3:]), 255, np.uint8)
        for i in range(min(n, rows * cols)):
            r, c = divmod(i, cols)
            canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tiles[i]
        buffer = io.BytesIO()
        Image.fromarray(canvas).save(buffer, format="PNG")
        return buffer.getvalue()

    def _pixels(self, images: torch.Tensor) -> np.ndarray:
        """[N, *event] values -> [N, H, W] or [N, H, W, 3] uint8 over [lo, hi]."""
        a = images.detach().float().numpy()
        lo, hi = self.lo, self.hi
        scaled = (np.clip(a, lo, hi) - lo) / np.maximum(np.asarray(hi) - lo, 1e-12)
        if scaled.ndim == 2:  # vectors: wrapped into a square-ish block, row by row
            d = scaled.shape[1]
            cols = math.ceil(math.sqrt(d))
            rows = math.ceil(d / cols)
            padded = np.zeros((len(scaled), rows * cols), np.float32)
            padded[:, :d] = scaled
            scaled = padded.reshape(len(scaled), rows, cols)
        elif scaled.ndim == 4:  # [N, C, H, W]
            scaled = scaled.transpose(0, 2, 3, 1) if scaled.shape[1] == 3 else scaled[:, 0]
        return np.rint(scaled * 255).astype(np.uint8)

    # -- the splits
    def view(self, split: str | None) -> Explorer:
        """The explorer of ``split`` (None: the one loaded at start), encoded on first use."""
        if split is None:
            return self
        if split not in self.splits:
            raise VaekitError(f"split must be one of {', '.join(self.splits)}; got '{split}'")
        with self.views_lock:  # one load per split, however many requests ask at once
            if split not in self.views:
                self.views[split] = self._encode_split(split)
            return self.views[split]

    def _encode_split(self, split: str) -> Explorer:
        dataset = self.loader(split)
        from vaekit.app.runs import labels_for

        dataset, x, names, total = _shown_examples(dataset, split, self.max_points, self.seed)
        with self.lock:
            mu = posterior_means(self.model, x, labels_for(self.model, dataset)).double().numpy()
        # the first split's plane: switching splits keeps the axes
        line = self.plane_kind == "line"
        plane = np.c_[mu[:, 0], _jitter(len(mu))] if line else (mu - self.center) @ self.basis.T
        return dataclasses.replace(self, split=split, x=x, labels=dataset.labels, class_names=names, mu=mu,
                                   plane=plane, total=total)

    # -- what the page needs
    def info(self) -> dict[str, Any]:
        ranges = [[float(min(-3.0, self.mu[:, i].min())), float(max(3.0, self.mu[:, i].max()))]
                  for i in range(self.latent_dim)]
        return {
            "run": self.name, "data": self.data_name, "split": self.split, "splits": self.splits or [self.split],
            "n": len(self.mu), "total": self.total, "latent_dim": self.latent_dim,
            "plane": self.plane_kind, "axis_titles": list(self.axis_titles),
            "u": np.round(self.plane[:, 0], 4).tolist(), "v": np.round(self.plane[:, 1], 4).tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "class_names": self.class_names, "classes": self.classes,
            "center": self.center.tolist(), "basis": self.basis.tolist(), "ranges": ranges,
            "z_limit": Z_LIMIT, "max_grid": MAX_GRID, "max_steps": MAX_STEPS,
            "gl": len(self.mu) > SVG_POINTS,
        }


def explorer_data(config, run_dir: Path, data: str | None, split: str | None):
    """(split name, Dataset) to show: the run's default split (test where the data have one,
    else validation), or ``split``, or all of other ``data``; the run's recorded treatment
    (binarisation, standardisation) applied. The one place the explorer reads data."""
    from vaekit.app.data import select_default_split, select_split

    if data is None and split is None:
        return select_default_split(config, run_dir)
    split = split or "all"
    return split, select_split(config, split, data, run_dir=run_dir)


def explorer_splits(config, data: str | None, split: str) -> list[str]:
    """The splits the page offers, ``split`` (the one shown first) first: other data have only
    "all"; the run's own data its training split, its validation split (unless that is the test
    set, offered once, as test), the official test split where the dataset has one, and all."""
    from vaekit.app.data import mnist, same_data

    if not same_data(data, config):
        return [split]
    tested = getattr(config, "validation_split", "fraction") == "test"
    offered = ["train"]
    if not tested and config.validation_fraction > 0:
        offered.append("validation")
    if config.data in mnist.REMOTE:
        offered.append("test")
    offered.append("all")
    return [split, *(name for name in offered if name != split)]


def load_explorer(run_dir: str | Path, data: str | None = None, split: str | None = None,
                  max_points: int = MAX_POINTS, seed: int = 0, device: str = "cpu") -> Explorer:
    """Load the run (onto ``device``), its data (a seeded random subset of ``max_points``
    where larger) and encode them: the state the app serves. The page may switch to the
    other splits of the run's data, loaded when first asked for."""
    from vaekit.app.data import recorded_standardization, select_split
    from vaekit.app.runs import labels_for, load_run

    if max_points < 1:
        raise VaekitError(f"--points must be at least 1, got {max_points}")
    run_dir = Path(run_dir)
    model, config = load_run(run_dir, device=device)
    split, dataset = explorer_data(config, run_dir, data, split)
    if dataset.event_shape != model.event_shape:
        raise VaekitError(f"data shaped {list(dataset.event_shape)} per example, but the model in "
                          f"{run_dir} was trained on {list(model.event_shape)}")
    dataset, x, names, total = _shown_examples(dataset, split, max_points, seed)
    mu = posterior_means(model, x, labels_for(model, dataset)).double().numpy()
    center, basis, plane, kind, titles = _plane(mu)
    st = recorded_standardization(run_dir)
    display = None if st is None else st.invert
    shown = (x if display is None else display(x)).double().numpy()
    if shown.ndim == 2:  # table rows: each feature from its own minimum (black) to maximum (white)
        lo, hi = shown.min(0), shown.max(0)
    else:  # images: one grey scale, [0, 1] unless the data reach beyond it
        lo, hi = min(0.0, float(shown.min())), max(1.0, float(shown.max()))
    explorer = Explorer(model=model, name=run_dir.resolve().name, data_name=config.data if data is None else data,
                        split=split, x=x, labels=dataset.labels, class_names=names, mu=mu, center=center,
                        basis=basis, plane=plane, plane_kind=kind, axis_titles=titles, display=display, lo=lo, hi=hi,
                        total=total, splits=explorer_splits(config, data, split),
                        loader=lambda name: select_split(config, name, None, run_dir=run_dir),
                        max_points=max_points, seed=seed)
    explorer.views[split] = explorer
    return explorer


def _shown_examples(dataset, split: str, max_points: int, seed: int):
    """(the examples shown, their x, class names, examples in the split): a seeded random subset
    of ``max_points`` of a larger split, the same for the same seed."""
    total = len(dataset)
    if total == 0:
        raise VaekitError(f"no examples to show in the {split} split")
    if total > max_points:
        keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_points]
        dataset = dataset.subset(keep.sort().values)
    x = dataset.x[:] if not isinstance(dataset.x, torch.Tensor) else dataset.x
    labels = dataset.labels
    names = None
    if labels is not None:
        names = [str(c) for c in dataset.classes] if dataset.classes else None
        top = int(labels.max()) + 1
        if names is None or len(names) < top:
            names = [str(i) for i in range(top)]
    return dataset, x, names, total


def _plane(mu: np.ndarray):
    """(center, basis, plane coordinates, kind, axis titles): the latent plane itself for
    d = 2, the first two principal components of the means for d > 2 (scikit-learn's PCA,
    whose components are orthonormal, so sliders and plane agree), and for d = 1 the line
    with the points spread vertically by a seeded jitter that decodes to nothing."""
    d = mu.shape[1]
    if d == 1:
        return (np.zeros(1), np.array([[1.0], [0.0]]), np.c_[mu[:, 0], _jitter(len(mu))], "line",
                ("z₁", "(spread, not a coordinate)"))
    if d == 2:
        return np.zeros(2), np.eye(2), mu.copy(), "latent", ("z₁", "z₂")
    from sklearn.decomposition import PCA

    if len(mu) < 2:
        basis = np.eye(d)[:2]
        return mu.mean(0), basis, (mu - mu.mean(0)) @ basis.T, "pca", ("z₁", "z₂")
    pca = PCA(n_components=2).fit(mu)
    share = pca.explained_variance_ratio_
    titles = (f"principal component 1 ({share[0]:.0%} of the variance)",
              f"principal component 2 ({share[1]:.0%})")
    return pca.mean_, pca.components_, pca.transform(mu), "pca", titles


def _jitter(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, n)


# ---------------------------------------------------------------------- HTTP
class BadRequest(Exception):
    """A request parameter that is missing or wrong: answered with 400 and its message."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(explorer: Explorer, loopback: bool = True, hosts: list[str] | None = None):
    """The Starlette app serving ``explorer``; ``loopback`` restricts the Host header to
    loopback names (what a browser on this machine sends), which defeats DNS rebinding:
    ``hosts`` where given (:func:`bind` derives them from the address bound), else the usual
    loopback names."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    def png(data: bytes) -> Response:
        # decodes are a pure function of the request while the server runs
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "explore.html", media_type="text/html")

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name == "plotly.min.js":
            return Response(_plotly_js(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})
        if name not in ASSETS:  # a fixed list: nothing else on disk is reachable
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    def info(request: Request) -> Response:
        q = _only(request, ("split",))
        return JSONResponse(explorer.view(q.get("split")).info())

    def decode(request: Request) -> Response:
        q = _only(request, ("z", "label"))
        z = _latent(q.get("z"), explorer.latent_dim)
        return png(explorer.decode_png(z, _label(q, explorer)))

    def grid(request: Request) -> Response:
        q = _only(request, ("x0", "x1", "y0", "y1", "cols", "rows", "label"))
        x0, x1, y0, y1 = (_number(q, k) for k in ("x0", "x1", "y0", "y1"))
        if not (x0 < x1 and y0 < y1):
            raise BadRequest("the grid needs x0 < x1 and y0 < y1")
        cols, rows = (_integer(q, k, 1, MAX_GRID) for k in ("cols", "rows"))
        return png(explorer.grid_png(x0, x1, y0, y1, cols, rows, _label(q, explorer)))

    def interpolation(request: Request) -> Response:
        q = _only(request, ("a", "b", "steps", "method", "label", "split"))
        shown = explorer.view(q.get("split"))
        a, b = (_integer(q, k, 0, len(shown.mu) - 1) for k in ("a", "b"))
        steps = _integer(q, "steps", 2, MAX_STEPS, default=10)
        method = q.get("method", "linear")
        if method not in ("linear", "spherical"):
            raise BadRequest("method must be linear or spherical")
        # a conditional path keeps the first example's class unless told another
        label = _label(q, shown, default=None if not shown.classes else int(shown.labels[a]))
        return png(shown.interpolation_png(a, b, steps, method, label))

    def example(request: Request) -> Response:
        q = _only(request, ("i", "split"))
        shown = explorer.view(q.get("split"))
        i = _integer(q, "i", 0, len(shown.mu) - 1)
        return png(shown.png(shown.examples([i])))

    async def bad_request(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return JSONResponse({"error": getattr(exc, "detail", "error")}, status_code=status,
                            headers=getattr(exc, "headers", None))

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/api/decode", decode, methods=["GET"]),
        Route("/api/grid", grid, methods=["GET"]),
        Route("/api/interpolate", interpolation, methods=["GET"]),
        Route("/api/example", example, methods=["GET"]),
    ]
    hosts = (list(hosts or LOOPBACK_HOSTS) if loopback else ["*"])
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(_SecurityHeaders)],
        exception_handlers={BadRequest: bad_request, VaekitError: bad_request, HTTPException: http_error},
    )


class _SecurityHeaders:
    """Pure ASGI middleware: the page may load only its own scripts, styles and images
    (plotly needs inline styles and, for WebGL, generated functions), and no other site may
    frame it."""

    CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
           "form-action 'none'")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"content-security-policy", self.CSP.encode()),
                                      (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, with_headers)


def _only(request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query as a dict, refusing unknown or repeated parameters."""
    keys = [k for k, _ in request.query_params.multi_items()]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown parameter '{unknown[0]}'")
    repeated = sorted(k for k in set(keys) if keys.count(k) > 1)
    if repeated:
        raise BadRequest(f"parameter '{repeated[0]}' given more than once")
    return dict(request.query_params)


def _latent(text: str | None, d: int) -> np.ndarray:
    """``z=a,b,...``: exactly d finite numbers with |z_i| ≤ Z_LIMIT."""
    if not text:
        raise BadRequest(f"z is required: {d} comma-separated numbers")
    if len(text) > 40 * d + 40:
        raise BadRequest("z is too long")
    try:
        z = np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError:
        raise BadRequest(f"z must be {d} comma-separated numbers") from None
    if len(z) != d:
        raise BadRequest(f"z must have {d} numbers (the latent dimension), got {len(z)}")
    if not np.isfinite(z).all():
        raise BadRequest("z must be finite")
    if np.abs(z).max() > Z_LIMIT:
        raise BadRequest(f"z must lie within ±{Z_LIMIT:g}")
    return z


def _number(q: dict[str, str], key: str) -> float:
    text = q.get(key)
    if text is None:
        raise BadRequest(f"{key} is required")
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{key} must be a number") from None
    if not math.isfinite(value) or abs(value) > Z_LIMIT:
        raise BadRequest(f"{key} must be finite and within ±{Z_LIMIT:g}")
    return value


def _integer(q: dict[str, str], key: str, lo: int, hi: int, default: int | None = None) -> int:
    text = q.get(key)
    if text is None:
        if default is None:
            raise BadRequest(f"{key} is required")
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise BadRequest(f"{key} must be a whole number from {lo} to {hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise BadRequest(f"{key} must be from {lo} to {hi}, got {value}")
    return value


def _label(q: dict[str, str], explorer: Explorer, default: int | None = None) -> int | None:
    if not explorer.classes:
        if "label" in q:
            raise BadRequest("this model is not conditional: it takes no label")
        return None
    if "label" not in q and default is None:
        raise BadRequest(f"this conditional model needs label (0 to {explorer.classes - 1})")
    return _integer(q, "label", 0, explorer.classes - 1, default=default)


_PLOTLY_JS: list[bytes] = []


def _plotly_js() -> bytes:
    if not _PLOTLY_JS:
        import plotly.offline

        _PLOTLY_JS.append(plotly.offline.get_plotlyjs().encode())
    return _PLOTLY_JS[0]


# ---------------------------------------------------------------------- serving
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int):
    """A TCP socket bound to ``host``:``port`` (0: a free port), listening.

    Made with the protocol named (IPPROTO_TCP), not 0 as ``socket.create_server`` does:
    asyncio sets TCP_NODELAY only on connections whose socket says TCP, and without it every
    small response waited on the client's delayed ACK."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Binding:
    """A listening socket and what follows from the address it is bound to."""

    sock: Any
    address: str  # the address bound, as the system resolved what was asked for
    port: int
    url: str
    loopback: bool  # bound to a loopback address: only this machine can connect
    hosts: list[str]  # Host header values accepted (loopback only): the names this address is reached by


def bind(host: str, port: int) -> Binding:
    """Bind ``host``:``port`` and derive from the address actually bound (``127.1`` is
    127.0.0.1, ``localhost`` one of the loopback addresses) whether only this machine can
    connect and which Host names a browser reaching it sends."""
    import socket

    sock = listening_socket(host, port)
    address, bound = sock.getsockname()[:2]
    v6 = sock.family == socket.AF_INET6
    loopback = is_loopback(address)
    shown = f"[{address}]" if v6 else address
    hosts = list(dict.fromkeys([*LOOPBACK_HOSTS, address, shown, host.strip("[]"), host]))
    return Binding(sock, address, bound, f"http://{shown}:{bound}/", loopback, hosts if loopback else ["*"])


def serve(run_dir: str | Path, *, data: str | None = None, split: str | None = None, host: str = "127.0.0.1",
          port: int = 0, open_browser: bool = True, max_points: int = MAX_POINTS, device: str = "cpu") -> None:
    """Load the run (onto ``device``), print the URL and serve until Ctrl-C (or SIGTERM)."""
    from vaekit.app.report import require_app_packages

    require_app_packages("explore", ("plotly", "starlette", "uvicorn"))
    import uvicorn

    if not 0 <= port <= 65535:
        raise VaekitError(f"--port must be from 0 (any free port) to 65535, got {port}")
    explorer = load_explorer(run_dir, data, split, max_points, device=device)
    binding = bind(host, port)
    sock, url = binding.sock, binding.url
    if not binding.loopback:
        print(f"warning: serving on {binding.address}, not on this machine alone: anyone who can reach it on "
              f"port {binding.port} can use the explorer and see the run's data", file=sys.stderr)
    app = create_app(explorer, loopback=binding.loopback, hosts=binding.hosts)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    shown = f"{len(explorer.mu)} of {explorer.total}" if explorer.total > len(explorer.mu) else str(explorer.total)
    others = [name for name in explorer.splits if name != explorer.split]
    also = f"; the page also shows {', '.join(others)}" if others else ""
    print(f"exploring {run_dir} ({shown} {explorer.split} examples, d = {explorer.latent_dim}{also}) at {url}",
          flush=True)
    print("press Ctrl-C to stop", file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])

