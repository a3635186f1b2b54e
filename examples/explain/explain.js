// The page of examples/explain.py.  It draws what the server sends and computes nothing
// about the network: every value shown is npnet's (read from npnet.hooks.trace's records).
"use strict";

const state = {
  info: null,          // /api/info: the model, its layers, the classes
  image: null,         // 28 rows of 28 grey levels in [0, 1], ink bright; null: nothing drawn
  centre: false,       // a drawing is cropped and centred as MNIST's digits were
  mode: "forward",     // or "backward"
  forward: null,       // the last /api/forward answer
  backward: null,      // the last /api/backward answer
  selected: null,      // {layer, role, index}: the element whose numbers are shown
};

// -- talking to the server -------------------------------------------------------------------
let pending = 0;
function busy(delta) {
  pending += delta;
  document.body.dataset.pending = String(pending);
}

async function api(path, body) {
  busy(+1);
  try {
    const r = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    return answer;
  } finally {
    busy(-1);
  }
}

function request(extra) {
  const req = {image: state.image, centre: state.centre, ...extra};
  if (state.mode === "backward") {
    req.target = Number(document.getElementById("target").value);
    req.of = document.getElementById("of").value;
  }
  return req;
}

// -- numbers and colours ----------------------------------------------------------------------
function fmt(v, digits = 4) {
  if (v === 0) return "0";
  if (!isFinite(v)) return v > 0 ? "+inf" : "-inf";
  const a = Math.abs(v);
  return (a < 1e-3 || a >= 1e4) ? v.toExponential(digits - 1) : v.toPrecision(digits);
}

// zero is dark; positive values turn orange-yellow, negative ones blue, by |v| / scale
function colour(v, scale) {
  const t = Math.min(1, Math.abs(v) / (scale || 1));
  return v >= 0 ? [255 * t, 190 * t, 40 * t] : [40 * t, 140 * t, 255 * t];
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// -- the drawing canvas -------------------------------------------------------------------------
const canvas = document.getElementById("draw");
const pen = canvas.getContext("2d");
const SCALE = canvas.width / 28;

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, canvas.width, canvas.height);
}

function canvasImage() {
  // the 280x280 drawing averaged over 10x10 blocks: 28x28 grey levels in [0, 1]
  const data = pen.getImageData(0, 0, canvas.width, canvas.height).data;
  const img = [];
  let ink = 0;
  for (let i = 0; i < 28; i++) {
    const row = [];
    for (let j = 0; j < 28; j++) {
      let s = 0;
      for (let u = 0; u < SCALE; u++)
        for (let v = 0; v < SCALE; v++)
          s += data[((i * SCALE + u) * canvas.width + j * SCALE + v) * 4];
      const g = s / (SCALE * SCALE * 255);
      ink += g;
      row.push(Math.round(g * 1000) / 1000);
    }
    img.push(row);
  }
  return ink > 0 ? img : null;
}

let last = null;
function penAt(ev) {
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}
canvas.addEventListener("pointerdown", ev => {
  canvas.setPointerCapture(ev.pointerId);
  last = penAt(ev);
  stroke(last);
});
canvas.addEventListener("pointermove", ev => { if (last) stroke(penAt(ev)); });
for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => { last = null; });

function stroke(to) {
  pen.strokeStyle = "#fff";
  pen.lineWidth = 2.2 * SCALE;             // about MNIST's pen: strokes 2-3 pixels wide
  pen.lineCap = pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(last[0], last[1]);
  pen.lineTo(to[0], to[1]);
  pen.stroke();
  last = to;
  state.image = canvasImage();
  state.centre = true;
  schedule();
}

document.getElementById("clear").addEventListener("click", () => {
  clearCanvas();
  state.image = null;
  schedule();
});

function showDigit(image) {
  // a picked test digit: its 28x28 grey levels, drawn as they are
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const g = small.getContext("2d"), pic = g.createImageData(28, 28);
  image.flat().forEach((v, i) => { pic.data.set([v, v, v, 255], 4 * i); });
  g.putImageData(pic, 0, 0);
  pen.imageSmoothingEnabled = false;
  pen.drawImage(small, 0, 0, canvas.width, canvas.height);
}

// -- updating: one request at a time, the newest image wins ----------------------------------
let running = false, again = false;
function schedule() {
  if (running) { again = true; return; }
  running = true;
  refresh().catch(showError).finally(() => {
    running = false;
    if (again) { again = false; schedule(); }
  });
}

async function refresh() {
  if (state.image === null) {
    state.forward = state.backward = null;
    render();
    return;
  }
  state.forward = await api("/api/forward", request());
  state.backward = state.mode === "backward" ? await api("/api/backward", request()) : null;
  render();
  if (state.selected) await explain(state.selected);
}

function showError(e) {
  document.getElementById("detail-body").replaceChildren(el("p", {class: "error", text: String(e.message || e)}));
}

// -- the prediction ---------------------------------------------------------------------------
function renderBars() {
  const box = document.getElementById("bars");
  box.replaceChildren();
  const probs = state.forward ? state.forward.probs : null;
  const best = probs ? probs.indexOf(Math.max(...probs)) : -1;
  state.info.classes.forEach((name, k) => {
    const p = probs ? probs[k] : 0;
    box.append(el("div", {class: "bar" + (k === best ? " best" : ""), "data-class": k},
      el("span", {class: "name", text: name}),
      el("span", {class: "track"}, el("span", {class: "fill", style: `width:${100 * p}%`})),
      el("span", {class: "p", text: probs ? p.toFixed(3) : "-"})));
  });
}

// -- the layers --------------------------------------------------------------------------------
function renderLayers() {
  const box = document.getElementById("layers");
  box.replaceChildren();
  const outputs = state.forward ? Object.fromEntries(state.forward.layers.map(l => [l.name, l.output])) : {};
  const grads = state.backward ? Object.fromEntries(state.backward.layers.map(l => [l.name, l])) : {};
  for (const layer of state.info.layers) {
    const head = el("div", {class: "layer-head"},
      el("b", {text: layer.name}), " ", el("code", {text: layer.repr}));
    if (layer.doc) head.append(" ", el("a", {href: "/" + layer.doc, target: "_blank", text: "derivation"}));
    const panel = el("div", {class: "layer", "data-layer": layer.name}, head);
    if (state.mode === "backward") {
      const check = el("button", {class: "check", text: "check numerically"});
      check.addEventListener("click", () => gradcheck(layer.name));
      head.append(check);
    }
    if (state.mode === "forward") {
      panel.append(mapsRow(layer, "output", "output", layer.output_shape, outputs[layer.name]));
    } else {
      const g = grads[layer.name];
      panel.append(mapsRow(layer, "grad_out", "arriving dL/dy", layer.output_shape, g && g.grad_out),
                   mapsRow(layer, "grad_in", "leaving dL/dx", layer.input_shape, g && g.grad_in));
    }
    box.append(panel);
  }
}

function mapsRow(layer, role, label, shape, maps) {
  const row = el("div", {class: "maps-row"},
    el("div", {class: "maps-label", text: `${label}  ${shape.join("\u00d7")}`}));
  const cells = el("div", {class: "maps"});
  row.append(cells);
  if (!maps) return row;
  const data = maps.data, scale = Math.max(...data.map(Math.abs));
  row.firstChild.append(el("span", {class: "hint", text: `  |max| ${fmt(scale, 3)}`}));
  if (shape.length === 3 && shape[1] * shape[2] > 1) {
    const [C, H, W] = shape, zoom = Math.max(2, Math.floor(64 / H));
    for (let c = 0; c < C; c++)
      cells.append(heat(layer, role, data.slice(c * H * W, (c + 1) * H * W), H, W, zoom, scale,
                        (i, j) => [c, i, j], `channel ${c}`));
  } else {                          // a vector, or C maps of 1x1: a grid of cells
    const n = data.length, cols = Math.min(n, 30), rows = Math.ceil(n / cols);
    const padded = data.concat(Array(rows * cols - n).fill(NaN));
    cells.append(heat(layer, role, padded, rows, cols, 14, scale, (i, j) => {
      const k = i * cols + j;
      return k >= n ? null : (shape.length === 3 ? [k, 0, 0] : [k]);
    }, `${n} values`));
  }
  return row;
}

function heat(layer, role, values, H, W, zoom, scale, indexOf, title) {
  const c = el("canvas", {class: "map", width: W * zoom, height: H * zoom, title,
                          "data-role": role, "data-zoom": zoom});
  const g = c.getContext("2d");
  values.forEach((v, k) => {
    if (Number.isNaN(v)) return;
    const [r, gr, b] = colour(v, scale);
    g.fillStyle = `rgb(${r | 0},${gr | 0},${b | 0})`;
    g.fillRect((k % W) * zoom, Math.floor(k / W) * zoom, zoom, zoom);
  });
  const sel = state.selected;
  c.addEventListener("click", ev => {
    const r = c.getBoundingClientRect();
    const i = Math.floor((ev.clientY - r.top) / r.height * H), j = Math.floor((ev.clientX - r.left) / r.width * W);
    const index = indexOf(i, j);
    if (!index) return;
    state.selected = {layer: layer.name, role, index};
    render();
    explain(state.selected).catch(showError);
  });
  // mark the selected element
  if (sel && sel.layer === layer.name && sel.role === role) {
    for (let i = 0; i < H; i++) for (let j = 0; j < W; j++) {
      const idx = indexOf(i, j);
      if (idx && idx.join() === sel.index.join()) {
        g.strokeStyle = "#0f0"; g.lineWidth = 2;
        g.strokeRect(j * zoom + 1, i * zoom + 1, zoom - 2, zoom - 2);
      }
    }
  }
  return c;
}

function renderSaliency() {
  const box = document.getElementById("saliency-box");
  box.hidden = !state.backward;
  if (!state.backward) return;
  const s = state.backward.saliency.flat(), scale = Math.max(...s.map(Math.abs));
  const c = document.getElementById("saliency"), g = c.getContext("2d"), z = c.width / 28;
  s.forEach((v, k) => {
    const [r, gr, b] = colour(v, scale);
    g.fillStyle = `rgb(${r | 0},${gr | 0},${b | 0})`;
    g.fillRect((k % 28) * z, Math.floor(k / 28) * z, z, z);
  });
}

function render() {
  renderBars();
  renderLayers();
  renderSaliency();
  const b = state.backward;
  document.getElementById("L-value").textContent = b ?
    `L = ${b.of === "score" ? "z" : "\u2212log p"}[${state.info.classes[b.target]}] = ${fmt(b.value, 6)}` : "";
  document.getElementById("mode-help").textContent = state.mode === "forward" ?
    "Each layer's output maps (orange positive, blue negative, black 0). Click an element to see how it was computed." :
    "Per layer: the gradient arriving from above, and the one leaving towards the input. Click an element of either to see its chain-rule sum.";
}

// -- the numbers behind one element ------------------------------------------------------------
async function explain(sel) {
  const body = document.getElementById("detail-body");
  const names = state.info.layers.map(l => l.name);
  const explained = layer => state.info.layers.find(l => l.name === layer).explained;
  const unexplained = layer => [el("p", {text: `The page spells out the elements of convolution, pooling, linear, ` +
    `activation and flatten layers; ${layer} is not one of them: its derivation page explains it.`})];
  if (sel.role === "output") {
    if (!explained(sel.layer)) { body.replaceChildren(...unexplained(sel.layer)); return; }
    const e = await api("/api/element", request({layer: sel.layer, index: sel.index}));
    body.replaceChildren(...forwardView(e));
  } else {
    // the gradient arriving at a layer is the one leaving the layer after it
    let layer = sel.layer;
    if (sel.role === "grad_out") {
      const next = names[names.indexOf(sel.layer) + 1];
      if (!next) { body.replaceChildren(...lossView(sel)); return; }
      layer = next;
    }
    if (!explained(layer)) { body.replaceChildren(...unexplained(layer)); return; }
    const e = await api("/api/chain", request({layer, index: sel.index}));
    body.replaceChildren(...chainView(e, sel));
  }
}

function grid(values, cls = "") {
  // a 2-D array of numbers as a small table
  const t = el("table", {class: "grid " + cls});
  for (const row of values) t.append(el("tr", {}, ...row.map(v => el("td", {text: fmt(v, 3)}))));
  return t;
}

function at(index) { return "[" + index.join(", ") + "]"; }

function forwardView(e) {
  const title = el("h3", {text: `${e.layer} (${e.type}) output ${at(e.index)}`});
  const out = [title];
  const summary = [];
  if (e.kind === "conv") {
    out.push(el("p", {text: `y = \u03a3 x\u00b7w + b over the ${e.inputs.length}\u00d7${e.inputs[0].length}\u00d7${e.inputs[0][0].length} window ` +
      `whose top-left input pixel is ${at(e.origin)} (zero padding outside the image), then + bias.`}));
    e.inputs.forEach((chan, c) => {
      const partial = e.products[c].flat().reduce((a, b) => a + b, 0);
      out.push(el("div", {class: "channel"},
        el("div", {class: "hint", text: `input channel ${c}`}),
        el("div", {class: "triple"},
          el("figure", {}, el("figcaption", {text: "window x"}), grid(chan)),
          el("figure", {}, el("figcaption", {text: "weights w"}), grid(e.weights[c])),
          el("figure", {}, el("figcaption", {text: "products x\u00b7w"}), grid(e.products[c], "products"))),
        el("div", {class: "hint", text: `sum of this channel's products: ${fmt(partial, 6)}`})));
    });
  } else if (e.kind === "linear") {
    out.push(el("p", {text: `y = \u03a3\u2096 x\u2096\u00b7W[${e.index[0]}, k] + b: the input row times the weight row, summed, plus the bias.`}));
    const t = el("table", {class: "rows"}, el("tr", {}, ...["k", "x\u2096", "W[j,k]", "product"].map(h => el("th", {text: h}))));
    e.inputs.forEach((x, k) => t.append(el("tr", {}, el("td", {text: k}), el("td", {text: fmt(x)}),
      el("td", {text: fmt(e.weights[k])}), el("td", {text: fmt(e.products[k])}))));
    out.push(el("div", {class: "scroll"}, t));
  } else if (e.kind === "max" || e.kind === "mean") {
    out.push(el("p", {text: `The ${e.kind} of the ${e.window.length}\u00d7${e.window[0].length} window at ${at(e.origin)} of channel ${e.index[0]}:`}),
             grid(e.window), el("p", {text: `${e.kind} = ${fmt(e.value, 6)}`}));
  } else if (e.kind === "flatten") {
    out.push(el("p", {text: `The same number as the input at ${at(e.from)}: flatten only lays the maps out as one vector.`}));
  } else {
    out.push(el("p", {text: `${e.type}(x) with x = ${fmt(e.input, 6)}` +
      (e.kind === "relu" ? ": max(0, x)" : e.kind === "tanh" ? ": (e\u02e3 \u2212 e\u207b\u02e3) / (e\u02e3 + e\u207b\u02e3)" : "")}));
  }
  if (e.kind === "conv" || e.kind === "linear")
    summary.push(el("table", {class: "sum"},
      el("tr", {}, el("td", {text: "sum of the products"}), el("td", {id: "fwd-sum", text: fmt(e.sum, 6)})),
      el("tr", {}, el("td", {text: e.has_bias ? "+ bias" : "+ bias (this layer has none)"}), el("td", {id: "fwd-bias", text: fmt(e.bias, 6)})),
      el("tr", {class: "total"}, el("td", {text: "= y"}), el("td", {id: "fwd-total", text: fmt(e.total, 6)}))));
  summary.push(el("p", {class: "npnet"}, "npnet's output there: ",
    el("b", {id: "fwd-npnet", text: fmt(e.output, 6)})));
  if (e.activation)
    summary.push(el("p", {}, `then ${e.activation.layer} (${e.activation.type}): `,
      el("b", {id: "fwd-activation", text: fmt(e.activation.output, 6)})));
  // the result first, then the terms it sums (a window of conv3 has 400 of them)
  out.splice(2, 0, ...summary);
  return out;
}

function chainView(e, sel) {
  const names = {grad_in: "leaving", grad_out: "arriving"};
  const out = [el("h3", {text: `dL/dx of ${e.layer} (${e.type}) at ${at(e.index)}`})];
  if (sel.role === "grad_out")
    out.push(el("p", {class: "hint", text: `(the gradient ${names[sel.role]} at ${sel.layer} is the one leaving ${e.layer}, the layer above it)`}));
  out.push(el("p", {text: `Chain rule: dL/dx\u1d62 = \u03a3\u2c7c dL/dy\u2c7c \u00b7 \u2202y\u2c7c/\u2202x\u1d62 over the ${e.terms.length} outputs y\u2c7c of ${e.layer} that x\u1d62 feeds, largest terms first:`}));
  const shown = e.terms.slice(0, 16);
  const t = el("table", {class: "rows"}, el("tr", {}, ...["output j", "dL/dy\u2c7c (arriving)", "\u2202y\u2c7c/\u2202x\u1d62", "product"].map(h => el("th", {text: h}))));
  for (const term of shown)
    t.append(el("tr", {}, el("td", {text: at(term.j)}), el("td", {text: fmt(term.grad_out)}),
      el("td", {text: fmt(term.local)}), el("td", {text: fmt(term.product)})));
  if (e.terms.length > shown.length) {
    const rest = e.terms.slice(16).reduce((a, b) => a + b.product, 0);
    t.append(el("tr", {class: "hint"}, el("td", {colspan: 3, text: `... ${e.terms.length - 16} more terms, summing to`}), el("td", {text: fmt(rest)})));
  }
  out.push(t, el("table", {class: "sum"},
    el("tr", {class: "total"}, el("td", {text: "sum of the terms"}), el("td", {id: "chain-sum", text: fmt(e.sum, 6)}))),
    el("p", {class: "npnet"}, "npnet's dL/dx there: ", el("b", {id: "chain-npnet", text: fmt(e.grad_in, 6)})));
  return out;
}

function lossView(sel) {
  const b = state.backward, k = sel.index[0];
  const v = b.layers[b.layers.length - 1].grad_out.data[k];
  const what = b.of === "score" ?
    `L = z[${b.target}], so dL/dz\u2096 is 1 for k = ${b.target} and 0 otherwise` :
    `L = \u2212log softmax(z)[${b.target}], so dL/dz\u2096 = p\u2096 \u2212 [k = ${b.target}] (docs/layers/cross_entropy.md)`;
  return [el("h3", {text: `dL/dz at ${at(sel.index)}: the start of the backward pass`}),
          el("p", {text: what}), el("p", {class: "npnet"}, "npnet's value: ", el("b", {id: "loss-grad", text: fmt(v, 6)}))];
}

async function gradcheck(layer) {
  const body = document.getElementById("detail-body");
  body.replaceChildren(el("p", {class: "hint", text: `checking ${layer} numerically...`}));
  try {
    const r = await api("/api/gradcheck", request({layer}));
    const t = el("table", {class: "rows", id: "gradcheck"}, el("tr", {}, ...["dL/d", "shape", "relative error", ""].map(h => el("th", {text: h}))));
    for (const x of r.tensors)
      t.append(el("tr", {}, el("td", {text: x.name}), el("td", {text: x.shape.join("\u00d7")}),
        el("td", {class: "rel-err", text: x.rel_err.toExponential(1)}), el("td", {text: x.passed ? "ok" : "MISMATCH"})));
    body.replaceChildren(el("h3", {text: `Numerical check of ${layer} at this input`}),
      el("p", {text: "npnet.gradcheck runs the layer alone on the input it received here, with the gradient that arrived here, " +
        (r.mode === "full" ? "nudging every number by \u00b11e-6" : "along 12 random directions (too many numbers to nudge one by one)") +
        ", and compares backward's answer with the central differences (float64):"}),
      t, ...(r.left_out ? [el("p", {class: "hint", text: r.left_out})] : []),
      el("p", {class: "hint", text: "about 1e-7 or less: backward is right; 1e-2 or more would be a bug."}));
  } catch (e) { showError(e); }
}

// -- start ----------------------------------------------------------------------------------------
function setMode(mode) {
  state.mode = mode;
  state.selected = null;
  document.getElementById("mode-forward").classList.toggle("on", mode === "forward");
  document.getElementById("mode-backward").classList.toggle("on", mode === "backward");
  document.getElementById("backward-controls").hidden = mode !== "backward";
  document.getElementById("detail-body").replaceChildren(el("p", {class: "hint", text: "Click any element of a layer's maps."}));
  schedule();
}

async function start() {
  clearCanvas();
  state.info = await api("/api/info");
  const info = state.info;
  document.getElementById("model").textContent =
    `${info.model} on ${info.dataset}: ${info.layers.length} layer calls, run by npnet in float64`;
  const target = document.getElementById("target");
  info.classes.forEach((name, k) => target.append(el("option", {value: k, text: name})));
  for (const id of ["target", "of"]) document.getElementById(id).addEventListener("change", schedule);
  document.getElementById("mode-forward").addEventListener("click", () => setMode("forward"));
  const back = document.getElementById("mode-backward");
  if (info.backward) back.addEventListener("click", () => setMode("backward"));
  else {
    back.disabled = true;
    const note = document.getElementById("no-backward");
    note.hidden = false;
    note.textContent = "No backward view: " + info.why_no_backward + ".";
  }
  const digits = await api("/api/digits");
  const picker = document.getElementById("picker");
  for (const d of digits) {
    const b = el("button", {class: "digit" + (d.label === d.predicted ? "" : " wrong"), "data-index": d.index,
                            title: `test image ${d.index}: label ${info.classes[d.label]}, predicted ${info.classes[d.predicted]}`});
    const c = el("canvas", {width: 28, height: 28}), g = c.getContext("2d"), pic = g.createImageData(28, 28);
    d.image.flat().forEach((v, i) => { pic.data.set([v, v, v, 255], 4 * i); });
    g.putImageData(pic, 0, 0);
    b.append(c, el("span", {text: d.label === d.predicted ? info.classes[d.label] : `${info.classes[d.label]}\u2192${info.classes[d.predicted]}`}));
    b.addEventListener("click", () => {
      showDigit(d.image);
      state.image = d.image.map(row => row.map(v => v / 255));
      state.centre = false;
      document.getElementById("target").value = d.label;
      schedule();
    });
    picker.append(b);
  }
  render();
}

start().catch(showError);
