// vaekit explore: the page. The server decodes; this file only draws and asks.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, z: null, v: 0, label: null, pair: [],
  busy: false, again: false, // one decode request in flight; a newer z waits for it
  gridBusy: false, gridAgain: false, lastMs: null,
};

async function fetchImage(url) {
  const started = performance.now();
  const response = await fetch(url);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  const blob = await response.blob();
  // The request's own round trip, from the browser's resource timing: what the page measures
  // around fetch also holds any time the page's thread spent drawing meanwhile.
  const entry = performance.getEntriesByName(response.url).pop();
  performance.clearResourceTimings();
  // a data URL, not an object URL: nothing to revoke, and equal images compare equal
  const dataUrl = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  const ms = performance.now() - started;
  return { dataUrl, ms, network: entry ? entry.responseEnd - entry.startTime : ms };
}

function splitParam() {
  return `&split=${encodeURIComponent(state.info.split)}`;
}

function labelParam() {
  return state.info.classes ? `&label=${state.label}` : "";
}

function planeToZ(u, v) {
  const { center, basis, z_limit: limit } = state.info;
  return center.map((c, i) => Math.max(-limit, Math.min(limit, c + u * basis[0][i] + v * basis[1][i])));
}

function zToPlane(z) {
  const { center, basis } = state.info;
  let u = 0, v = 0;
  z.forEach((value, i) => { u += (value - center[i]) * basis[0][i]; v += (value - center[i]) * basis[1][i]; });
  return state.info.plane === "line" ? [u, state.v] : [u, v];
}

// A name shown as itself in a plotly label: plotly reads labels as a small HTML (<a href>
// makes a link) and hover templates substitute %{...}; it decodes entities after both.
function plotlyText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/%/g, "&#37;");
}

function showError(message) { $("status").textContent = message || ""; }

// ---------------------------------------------------------------- decoding z
async function decode() {
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    do {
      state.again = false;
      const z = state.z.map((v) => Number(v.toPrecision(7)));
      try {
        const { dataUrl, ms, network } = await fetchImage(`/api/decode?z=${z.join(",")}${labelParam()}`);
        const img = $("decoded");
        img.src = dataUrl;
        img.hidden = false;
        img.dataset.z = z.join(",");
        state.lastMs = ms;
        state.lastNetworkMs = network;
        $("roundtrip").textContent =
          `z = (${z.map((v) => v.toFixed(2)).join(", ")}); round trip ${network.toFixed(0)} ms`;
        showError("");
      } catch (err) {
        showError(err.message);
      }
    } while (state.again);
  } finally {
    state.busy = false;
  }
}

function setZ(z, fromSlider) {
  state.z = z;
  if (!fromSlider) {
    z.forEach((value, i) => {
      const slider = $(`slider-${i}`);
      slider.value = value;
      $(`value-${i}`).textContent = value.toFixed(2);
    });
  }
  decode(); // the request first: drawing the marker must not delay it
  drawMarker(...zToPlane(z));
}

// The decoded point as a cross of two layout shapes: moving shapes redraws no trace (a
// marker trace would redraw every point, slow for a large WebGL scatter).
function drawMarker(u, v) {
  const plane = $("plane");
  const xa = plane._fullLayout.xaxis, ya = plane._fullLayout.yaxis;
  const du = 8 / Math.abs(xa._m), dv = 8 / Math.abs(ya._m); // 8 pixels each way
  // black on a white halo: visible on points of any colour and on the decoded grid
  const cross = (line) => [
    { type: "line", x0: u - du, x1: u + du, y0: v - dv, y1: v + dv, line },
    { type: "line", x0: u - du, x1: u + du, y0: v + dv, y1: v - dv, line },
  ];
  Plotly.relayout(plane, { shapes: [...cross({ color: "#fff", width: 6 }), ...cross({ color: "#000", width: 3 })] });
}

function buildSliders() {
  const box = $("sliders");
  state.info.ranges.forEach(([lo, hi], i) => {
    const name = document.createElement("label");
    name.htmlFor = `slider-${i}`;
    name.textContent = `z${i + 1}`;
    const slider = document.createElement("input");
    Object.assign(slider, { type: "range", id: `slider-${i}`, min: lo, max: hi, step: 0.01, value: 0 });
    slider.dataset.dim = i;
    const out = document.createElement("output");
    out.id = `value-${i}`;
    slider.addEventListener("input", () => {
      const z = state.z.slice();
      z[i] = Number(slider.value);
      out.textContent = z[i].toFixed(2);
      setZ(z, true);
    });
    box.append(name, slider, out);
  });
}

// ---------------------------------------------------------------- the plane
function pointTraces(info) {
  const type = info.gl ? "scattergl" : "scatter";
  const traces = [];
  const groups = new Map();
  info.u.forEach((_, i) => {
    const key = info.labels ? info.labels[i] : -1;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  });
  [...groups.keys()].sort((a, b) => a - b).forEach((key) => {
    const index = groups.get(key);
    const name = plotlyText(key < 0 ? "examples" : info.class_names[key]);
    traces.push({
      type, mode: "markers", name, customdata: index,
      x: index.map((i) => info.u[i]), y: index.map((i) => info.v[i]),
      marker: { size: info.gl ? 4 : 6, opacity: 0.75 },
      hovertemplate: `#%{customdata} · ${key < 0 ? "" : "class "}${name}<extra></extra>`,
    });
  });
  return traces;
}

function buildPlot() {
  const info = state.info;
  const traces = pointTraces(info);
  const layout = {
    // category10 without its grey, which vanishes on the grey of the decoded grid
    colorway: ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#111111",
      "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
      "#dbdb8d", "#9edae5", "#393b79"],
    margin: { l: 60, r: 10, t: 10, b: 50 }, hovermode: "closest", dragmode: "zoom",
    xaxis: { title: { text: plotlyText(info.axis_titles[0]) }, zeroline: false },
    yaxis: { title: { text: plotlyText(info.axis_titles[1]) }, zeroline: false },
    legend: { title: { text: info.labels ? "class" : "" }, itemsizing: "constant", y: 0.93, yanchor: "top" },
  };
  if (info.plane !== "line") layout.yaxis.scaleanchor = "x";
  const plane = $("plane");
  // Double-click does not zoom out here: clicks are how points get decoded, and two of them
  // in quick succession would reset the zoom (and redraw every point). The toolbar's home
  // button zooms out.
  const config = { displaylogo: false, responsive: true, doubleClick: false };
  return Plotly.newPlot(plane, traces, layout, config).then(() => {
    plane.on("plotly_hover", (event) => {
      const point = event.points[0];
      if (point.customdata !== undefined) showExample(point.customdata);
    });
    plane.on("plotly_click", (event) => {
      const point = event.points[0];
      if (point.customdata !== undefined) pick(point.customdata);
    });
    plane.on("plotly_relayout", (change) => {
      if (Object.keys(change).some((k) => k.startsWith("xaxis") || k.startsWith("yaxis"))) {
        drawMarker(...zToPlane(state.z)); // the cross keeps its size in pixels
        refreshGrid();
      }
    });
    // A click without a drag anywhere in the plot area decodes that point. Plotly takes the
    // mouse for zooming, so press and release are watched in the capture phase.
    let down = null;
    plane.addEventListener("mousedown", (e) => { down = { x: e.clientX, y: e.clientY }; }, true);
    window.addEventListener("mouseup", (e) => {
      if (!down) return;
      const moved = Math.hypot(e.clientX - down.x, e.clientY - down.y);
      down = null;
      if (moved < 4) clickPlane(e.clientX, e.clientY);
    }, true);
  });
}

function clickPlane(clientX, clientY) {
  const area = $("plane").querySelector(".nsewdrag");
  if (!area) return;
  const box = area.getBoundingClientRect();
  const px = clientX - box.left, py = clientY - box.top;
  if (px < 0 || py < 0 || px > box.width || py > box.height) return;
  const layout = $("plane")._fullLayout;
  const u = layout.xaxis.p2l(px), v = layout.yaxis.p2l(py);
  state.v = v;
  setZ(planeToZ(u, v), false);
}

async function showExample(i) {
  try {
    const { dataUrl } = await fetchImage(`/api/example?i=${i}${splitParam()}`);
    $("hovered").src = dataUrl;
    $("hovered").hidden = false; // hidden until the first hover: no broken-image icon
    const info = state.info;
    $("hovered-caption").textContent = `#${i}` + (info.labels ? `, class ${info.class_names[info.labels[i]]}` : "");
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------- interpolation
function describe(i) {
  const info = state.info;
  return `#${i}` + (info.labels ? ` (${info.class_names[info.labels[i]]})` : "");
}

function pick(i) {
  state.pair.push(i);
  if (state.pair.length > 2) state.pair.shift();
  refreshInterpolation();
}

async function refreshInterpolation() {
  const [a, b] = state.pair;
  const img = $("interpolation");
  if (state.pair.length < 2) {
    $("pair").textContent = state.pair.length ? `A: ${describe(a)}; now click a second point` : "click two data points";
    img.hidden = true;
    return;
  }
  $("pair").textContent = `from A: ${describe(a)} to B: ${describe(b)}`;
  const method = $("spherical").checked ? "spherical" : "linear";
  try {
    const url = `/api/interpolate?a=${a}&b=${b}&steps=10&method=${method}${labelParam()}${splitParam()}`;
    const { dataUrl } = await fetchImage(url);
    img.src = dataUrl;
    img.hidden = false;
  } catch (err) {
    showError(err.message);
  }
}

// ---------------------------------------------------------------- the decoded grid
async function refreshGrid() {
  const plane = $("plane");
  if (!$("grid-toggle").checked) {
    if ((plane.layout.images || []).length) Plotly.relayout(plane, { images: [] });
    return;
  }
  if (state.gridBusy) { state.gridAgain = true; return; }
  state.gridBusy = true;
  try {
    do {
      state.gridAgain = false;
      const limit = state.info.z_limit;
      const clamp = (v) => Math.max(-limit, Math.min(limit, v));
      const [x0, x1] = plane._fullLayout.xaxis.range.map(clamp);
      const [y0, y1] = plane._fullLayout.yaxis.range.map(clamp);
      // square cells in plane units: as many rows as the visible height holds
      const maxGrid = state.info.max_grid;
      const cols = Math.max(2, Math.min(maxGrid, Math.round(Number($("grid-n").value)) || 15));
      const rows = Math.max(1, Math.min(maxGrid, Math.round(cols * (y1 - y0) / (x1 - x0))));
      try {
        const query = `x0=${x0}&x1=${x1}&y0=${y0}&y1=${y1}&cols=${cols}&rows=${rows}${labelParam()}`;
        const { dataUrl } = await fetchImage(`/api/grid?${query}`);
        await Plotly.relayout(plane, {
          images: [{
            source: dataUrl, xref: "x", yref: "y", x: x0, y: y1, sizex: x1 - x0, sizey: y1 - y0,
            // full contrast, drawn pixel-exact by the stylesheet (#plane image)
            xanchor: "left", yanchor: "top", sizing: "stretch", layer: "below", opacity: 1,
          }],
        });
        showError("");
      } catch (err) {
        showError(err.message);
      }
    } while (state.gridAgain);
  } finally {
    state.gridBusy = false;
  }
}

// ---------------------------------------------------------------- the split shown
function describeShown(info) {
  const shown = info.n < info.total ? `${info.n} of ${info.total}` : `${info.n}`;
  const plane = { latent: "the latent plane", pca: "the means' first two principal components",
    line: "the latent line" }[info.plane];
  $("subtitle").textContent =
    `${info.data}, ${info.split} split: ${shown} examples; posterior means in ${plane}; d = ${info.latent_dim}`;
}

async function fetchInfo(split) {
  const response = await fetch(split ? `/api/info?split=${encodeURIComponent(split)}` : "/api/info");
  const info = await response.json();
  if (!response.ok) throw new Error(`${response.status}: ${info.error}`);
  return info;
}

// Another split's points in the same plane (the axes, zoom, decoded point and grid stay);
// the picked pair and the hovered example belonged to the old points and are cleared.
async function switchSplit(split) {
  const select = $("split");
  select.disabled = true;
  $("subtitle").textContent = `loading the ${split} split…`;
  try {
    const info = await fetchInfo(split);
    state.info = info;
    state.pair = [];
    refreshInterpolation();
    $("hovered").hidden = true;
    $("hovered-caption").textContent = "hover a point";
    const plane = $("plane");
    await Plotly.react(plane, pointTraces(info), plane.layout);
    describeShown(info);
    showError("");
  } catch (err) {
    select.value = state.info.split;
    describeShown(state.info);
    showError(`could not show the ${split} split: ${err.message}`);
  } finally {
    select.disabled = false;
  }
}

// ---------------------------------------------------------------- start
async function start() {
  const info = await fetchInfo(null);
  state.info = info;
  window.vaekitExplorer = state; // for the browser tests and the curious
  $("title").textContent = `vaekit explore: ${info.run}`;
  describeShown(info);
  if (info.splits.length > 1) {
    const select = $("split");
    info.splits.forEach((name) => select.add(new Option(name, name)));
    select.value = info.split;
    $("split-row").hidden = false;
    select.addEventListener("change", () => switchSplit(select.value));
  }
  if (info.classes) {
    const select = $("label");
    info.class_names.slice(0, info.classes).forEach((name, c) => select.add(new Option(name, c)));
    while (select.options.length < info.classes) select.add(new Option(String(select.options.length), select.options.length));
    state.label = 0;
    $("class-row").hidden = false;
    select.addEventListener("change", () => {
      state.label = Number(select.value);
      decode();
      refreshGrid();
      refreshInterpolation();
    });
  }
  buildSliders();
  await buildPlot();
  $("spherical").addEventListener("change", refreshInterpolation);
  $("clear-pair").addEventListener("click", () => { state.pair = []; refreshInterpolation(); });
  $("grid-toggle").addEventListener("change", refreshGrid);
  $("grid-n").addEventListener("change", refreshGrid);
  setZ(info.center.slice(), false);
  document.body.dataset.ready = "true";
}

start().catch((err) => showError(`could not start: ${err.message}`));
