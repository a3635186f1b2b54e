"""See backprop happen: a local web page that shows LeNet-5's forward and backward passes.

    python examples/explain.py                         # runs/lenet5/best.npz, port 8000
    python examples/explain.py --checkpoint runs/classic/best.npz --port 0   # any free port

It serves http://127.0.0.1:PORT/ (this machine only).  Draw a digit or pick an MNIST test
digit (misclassified ones included) and the page shows the ten probabilities, every
layer's output maps, the arithmetic behind any output element you click, and -- in the
backward view -- the gradient arriving at and leaving each layer, the chain-rule sum behind
any element of it, a numerical gradient check of each layer at this very input, and the
saliency map.  docs/explain.md walks through the panels.

Every number on the page is npnet's: each request runs the model under
``npnet.hooks.trace``, which records every layer call's input, output, arriving and leaving
gradient (npnet/hooks.py); the server reads those records and sends them, and the page
(examples/explain/, plain HTML, CSS and JavaScript) only draws them.  Where the page spells
out a sum (a convolution's window times its weights), the server forms its terms from the
recorded input and the layer's weights and sends npnet's own output beside their total,
so the reader sees that they agree.

The model runs in float64, so that the gradient check is precise (a checkpoint's float32
weights are copied into float64).  The model keeps per-call state (its tape, the layers'
caches), so requests use it one at a time, under a lock, though the server is threaded.
A network with batch norm (the ResNet) gets its forward view only: its backward needs a
training-mode forward, which would normalise the one image by its own statistics and so
differentiate a different function from the one that classified it.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

try:
    import npnet
except ValueError as e:                 # e.g. a bad NPNET_NUM_THREADS: one line, not a trace
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
import npnet.hooks
from npnet import data as npdata

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))                 # the sibling examples used below
import backprop_step_by_step as steps         # noqa: E402  (check_here: gradcheck at a point)
import predict                                # noqa: E402  (to_mnist, softmax)

STATIC = HERE / "explain"                     # the page: index.html, explain.js, explain.css
DOCS_DIR = HERE.parent / "docs" / "layers"
DEFAULT_CHECKPOINT = Path("runs/lenet5/best.npz")
MAX_BODY = 64 * 1024          # a 28x28 image as JSON is about 4 kB; nothing needs more
PICKER = 12                   # test digits of each kind (right, misclassified) in the picker
# the derivation page of each kind of layer (docs/layers/)
DOCS = {"Conv2d": "conv.md", "ReLU": "activations.md", "Tanh": "activations.md",
        "LeakyReLU": "activations.md", "MaxPool2d": "maxpool.md", "AvgPool2d": "avgpool.md",
        "Flatten": "flatten.md", "Linear": "linear.md", "BatchNorm2d": "batchnorm.md",
        "BatchNorm1d": "batchnorm.md", "AdaptiveAvgPool2d": "adaptive_avgpool.md",
        "Dropout": "dropout.md"}
ACTIVATIONS = (npnet.ReLU, npnet.Tanh)
# the layers whose elements the page spells out (explain_forward, explain_backward)
EXPLAINED = (npnet.Conv2d, npnet.Linear, npnet.MaxPool2d, npnet.AvgPool2d, npnet.Flatten,
             *ACTIVATIONS)
# layers that compute differently in training mode, where backward needs the model
TRAIN_ONLY_DIFFERENT = (npnet.BatchNorm1d, npnet.BatchNorm2d, npnet.Dropout)


class BadRequest(ValueError):
    """A request the page (or anyone) got wrong: answered 4xx with this message."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# -- the model --------------------------------------------------------------------------------
def load_checkpoint(path):
    """A checkpoint of examples/train_lenet.py -> (model in float64, model name, dataset).

    ``npnet.checkpoint.load_model`` reads and checks it, as for examples/predict.py: a
    regular file, fields as strict as the main job's flags, weights that fit the model and
    are finite (older checkpoints name no model: LeNet-5 on MNIST).

    Raises:
        ValueError: a one-line message naming the path and the fault.  OSError: unreadable.
    """
    model, settings = npnet.checkpoint.load_model(path)
    return model.to(np.float64), settings["model"], settings["dataset"]


class Explainer:
    """The model, the test digits, and the answers to the page's questions.

    Each public method takes a request's fields, runs the model under a trace and returns
    a dict for JSON.  The lock makes each run whole: two requests never interleave on the
    model's tape and caches.
    """

    def __init__(self, model, name="lenet5", dataset="mnist", test_images=None):
        self.model, self.name, self.dataset = model, name, dataset
        self.mean, self.std = npdata.NORMALIZATION[dataset]
        self.classes = list(npdata.CLASSES[dataset])
        self.lock = threading.Lock()
        self.backward_offered = not any(isinstance(m, TRAIN_ONLY_DIFFERENT)
                                        for m in model.modules())
        model.train(self.backward_offered)   # no batch norm: training mode = eval mode
        with self.lock:
            tape = self._trace(np.zeros((28, 28), np.uint8))
        self.layers = [self._describe(name, r) for name, r in tape.records.items()]
        self.digits = self._picker(test_images)

    # what the page asks -----------------------------------------------------------------
    def info(self):
        """The model, its layers (name, type, shapes, docs page), the classes."""
        return {"model": self.name, "dataset": self.dataset, "classes": self.classes,
                "layers": self.layers, "backward": self.backward_offered,
                "why_no_backward": None if self.backward_offered else (
                    "this network has batch norm: backward needs a training-mode forward, "
                    "which would normalise this one image by its own statistics and so "
                    "differentiate another function than the one that classified it")}

    def forward(self, req):
        """The probabilities and every layer's output maps for one image."""
        picture = self._picture(req)
        with self.lock:
            tape = self._trace(picture)
        logits = tape[self.layers[-1]["name"]].output[0]
        return {"input": (picture / 255.0).round(4).tolist(), "logits": logits.tolist(),
                "probs": predict.softmax(logits[None])[0].tolist(),
                "layers": [{"name": n, "output": _maps(r.output[0])}
                           for n, r in tape.records.items()]}

    def element(self, req):
        """How one output element of one layer was computed, with the numbers."""
        picture = self._picture(req)
        with self.lock:
            tape = self._trace(picture)
        name = self._layer_name(req, tape)
        r = tape[name]
        idx = _index(req, r.output[0].shape)
        out = explain_forward(r.layer, r.input[0], idx)
        out.update(layer=name, type=type(r.layer).__name__, index=list(idx),
                   output=float(r.output[0][idx]))
        after = self._next(tape, name)
        if after is not None and isinstance(tape[after].layer, ACTIVATIONS) \
                and tape[after].output[0].shape == r.output[0].shape:
            out["activation"] = {"layer": after, "type": type(tape[after].layer).__name__,
                                 "output": float(tape[after].output[0][idx])}
        return out

    def backward(self, req):
        """Per layer, the gradient arriving (dL/d output) and leaving (dL/d input)."""
        picture, target, of = self._backward_args(req)
        with self.lock:
            tape, value = self._trace_backward(picture, target, of)
        first = self.layers[0]["name"]
        return {"target": target, "of": of, "value": value,
                "saliency": tape[first].grad_in[0, 0].tolist(),
                "layers": [{"name": n, "grad_out": _maps(r.grad_out[0]),
                            "grad_in": _maps(r.grad_in[0])}
                           for n, r in tape.records.items()]}

    def chain(self, req):
        """dL/dx at one input element of one layer as the chain-rule sum of its terms."""
        picture, target, of = self._backward_args(req)
        with self.lock:
            tape, _ = self._trace_backward(picture, target, of)
        name = self._layer_name(req, tape)
        r = tape[name]
        idx = _index(req, r.input[0].shape)
        out = explain_backward(r.layer, r.input[0], r.output[0], r.grad_out[0], idx)
        out.update(layer=name, type=type(r.layer).__name__, index=list(idx),
                   grad_in=float(r.grad_in[0][idx]))
        return out

    def gradcheck(self, req):
        """npnet.gradcheck of one layer, on the input it got and the gradient it received."""
        picture, target, of = self._backward_args(req)
        with self.lock:
            tape, _ = self._trace_backward(picture, target, of)
            name = self._layer_name(req, tape)
            r = tape[name]
            report, mode, left_out = steps.check_here(r.layer, r.input, r.grad_out,
                                                      np.random.default_rng(0))
        return {"layer": name, "mode": mode, "left_out": left_out,
                "tensors": [{"name": t.name, "shape": list(t.shape), "rel_err": t.rel_err,
                             "max_abs_err": t.max_abs_err, "passed": t.passed}
                            for t in report]}

    # running the model ------------------------------------------------------------------
    def _trace(self, picture):
        """One forward of a (28, 28) uint8 picture, recorded layer call by layer call."""
        x = npdata.normalize(picture[None], self.mean, self.std, dtype=np.float64)
        with npnet.hooks.trace(self.model) as tape:
            self.model(x)
        return tape

    def _trace_backward(self, picture, target, of):
        """Forward and backward; L is the class's score z_target or the loss -log p_target."""
        x = npdata.normalize(picture[None], self.mean, self.std, dtype=np.float64)
        self.model.zero_grad()
        with npnet.hooks.trace(self.model) as tape:
            z = self.model(x)
            if of == "score":                       # L = z_target: dL/dz is one-hot
                value, grad = float(z[0, target]), np.eye(z.shape[1])[[target]]
            else:                                   # L = cross-entropy: dL/dz = p - onehot
                crit = npnet.CrossEntropyLoss()
                value = float(crit(z, np.array([target])))
                grad = crit.backward()
            self.model.backward(grad)
        self.model.zero_grad()          # the page reads the records, not the accumulated sums
        return tape, value

    def _picker(self, n):
        """The first PICKER test digits the model gets right and the first it gets wrong.

        ``n`` limits the search to the first n test images (None: all 10,000)."""
        load = npdata.load_fashion_mnist if self.dataset == "fashion-mnist" else npdata.load_mnist
        images, labels = load(split="test")
        images, labels = images[:n], labels[:n]
        predicted = np.empty(len(images), dtype=np.int64)
        with self.lock:
            for i in range(0, len(images), 500):
                x = npdata.normalize(images[i:i + 500], self.mean, self.std, dtype=np.float64)
                predicted[i:i + 500] = np.asarray(self.model(x)).argmax(axis=1)
        right = np.flatnonzero(predicted == labels)[:PICKER]
        wrong = np.flatnonzero(predicted != labels)[:PICKER]
        return [{"index": int(i), "label": int(labels[i]), "predicted": int(predicted[i]),
                 "image": images[i].tolist()} for i in np.concatenate([right, wrong])]

    # reading requests -------------------------------------------------------------------
    def _picture(self, req):
        """The request's image as a (28, 28) uint8 picture, in MNIST's form if asked.

        ``centre`` applies to MNIST checkpoints only: Fashion-MNIST's pictures are the
        whole photograph scaled, neither cropped nor centred (predict.to_fashion_mnist).
        """
        if not isinstance(req, dict):
            raise BadRequest("the request body must be a JSON object")
        image = req.get("image")
        try:
            img = np.array(image, dtype=np.float64)
        except (TypeError, ValueError):
            raise BadRequest("image: expected 28 rows of 28 numbers") from None
        if img.shape != (28, 28):
            raise BadRequest(f"image: expected shape (28, 28), got {img.shape}")
        if not np.all(np.isfinite(img)):
            raise BadRequest("image: holds nan or infinity")
        if img.min() < 0 or img.max() > 1:
            raise BadRequest("image: grey levels must lie in [0, 1] (0 black, 1 ink)")
        if req.get("centre", False) and self.dataset == "mnist":
            try:
                return predict.to_mnist(img)     # cropped, scaled, centred, as MNIST's were
            except ValueError as e:
                raise BadRequest(f"image: {e}") from None
        return np.round(img * 255).astype(np.uint8)

    def _backward_args(self, req):
        if not self.backward_offered:
            raise BadRequest("no backward view for this model: " + self.info()["why_no_backward"],
                             HTTPStatus.CONFLICT)
        picture = self._picture(req)
        target, of = req.get("target"), req.get("of", "loss")
        if not isinstance(target, int) or isinstance(target, bool) \
                or not 0 <= target < len(self.classes):
            raise BadRequest(f"target: expected a class 0..{len(self.classes) - 1}, "
                             f"got {target!r}")
        if of not in ("score", "loss"):
            raise BadRequest(f"of: expected 'score' or 'loss', got {of!r}")
        return picture, target, of

    def _layer_name(self, req, tape):
        name = req.get("layer")
        if name not in tape.records:
            raise BadRequest(f"unknown layer {name!r} (the layers are {', '.join(tape)})")
        return name

    @staticmethod
    def _next(tape, name):
        names = list(tape)
        i = names.index(name)
        return names[i + 1] if i + 1 < len(names) else None

    @staticmethod
    def _describe(name, r):
        kind = type(r.layer).__name__
        return {"name": name, "type": kind, "repr": repr(r.layer),
                "input_shape": list(r.input.shape[1:]), "output_shape": list(r.output.shape[1:]),
                "doc": f"docs/layers/{DOCS[kind]}" if kind in DOCS else None,
                "explained": isinstance(r.layer, EXPLAINED)}


def _maps(a):
    """An array for the page to draw: its shape and its values, flat, to 5 digits."""
    return {"shape": list(a.shape), "data": [float(f"{v:.5g}") for v in a.ravel()]}


def _index(req, shape):
    """The request's 'index' as a tuple inside ``shape`` (the batch axis left out)."""
    idx = req.get("index")
    if not isinstance(idx, list) or len(idx) != len(shape) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n
            for i, n in zip(idx, shape)):
        raise BadRequest(f"index: expected {len(shape)} whole numbers inside the shape "
                         f"{list(shape)}, got {idx!r}")
    return tuple(idx)


# -- the arithmetic of one element, spelled out ------------------------------------------------
def explain_forward(layer, x, idx):
    """The terms behind output element ``idx`` of ``layer`` applied to ``x`` (no batch axis).

    Conv2d: the input window under the filter, the filter, their products, sum and bias.
    Linear: the input row, the weight row, products, sum, bias.  Pooling: the window and
    its maximum or mean.  An activation: its input.  Flatten: where the number came from.
    Only what the layer's docs page derives; the value npnet computed is sent beside it.
    """
    if isinstance(layer, npnet.Conv2d):
        f, i, j = idx
        (sh, sw), (ph, pw) = layer.stride, layer.padding
        w = layer.params["weight"][f]                                   # (C, kh, kw)
        kh, kw = w.shape[1:]
        xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))                    # zero padding
        window = xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw]          # (C, kh, kw)
        return _weighted_sum("conv", window, w, layer.params.get("bias"), f,
                             origin=[i * sh - ph, j * sw - pw])
    if isinstance(layer, npnet.Linear):
        (k,) = idx
        return _weighted_sum("linear", x, layer.params["weight"][k], layer.params.get("bias"), k)
    if isinstance(layer, (npnet.MaxPool2d, npnet.AvgPool2d)):
        c, i, j = idx
        window, origin = _pool_window(layer, x[c], i, j)
        kind = "max" if isinstance(layer, npnet.MaxPool2d) else "mean"
        value = window.max() if kind == "max" else window.mean()
        return {"kind": kind, "window": window.tolist(), "origin": origin,
                "value": float(value)}
    if isinstance(layer, ACTIVATIONS):
        return {"kind": type(layer).__name__.lower(), "input": float(x[idx])}
    if isinstance(layer, npnet.Flatten):             # the same number, at a new place
        return {"kind": "flatten", "input": float(x.ravel()[idx[0]]),
                "from": list(map(int, np.unravel_index(idx[0], x.shape)))}
    raise BadRequest(f"the page explains the elements of conv, pool, linear, activation and "
                     f"flatten layers, not of {type(layer).__name__}")


def _weighted_sum(kind, inputs, weights, bias, k, origin=None):
    products = inputs * weights
    return {"kind": kind, "inputs": inputs.tolist(), "weights": weights.tolist(),
            "products": products.tolist(), "sum": float(products.sum()),
            "bias": 0.0 if bias is None else float(bias[k]), "has_bias": bias is not None,
            "total": float(products.sum() + (0.0 if bias is None else bias[k])),
            "origin": origin}


def _pool_window(layer, plane, i, j):
    """The (kh, kw) window of ``plane`` (H, W) that pooled output (i, j) reads; padding
    shows as -inf for max-pooling, 0 for average pooling (torch's conventions)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    fill = -np.inf if isinstance(layer, npnet.MaxPool2d) else 0.0
    padded = np.pad(plane, ((ph, ph), (pw, pw)), constant_values=fill)
    return padded[i * sh:i * sh + kh, j * sw:j * sw + kw], [i * sh - ph, j * sw - pw]


def explain_backward(layer, x, y, grad_out, idx):
    """dL/dx[idx] as the chain rule's sum over the outputs that x[idx] reaches:

        dL/dx_i = sum_j dL/dy_j * dy_j/dx_i

    Returns the terms (output element j, dL/dy_j, dy_j/dx_i, their product), largest
    first, and their sum; the local derivatives are those the layer's docs page derives.
    """
    terms = []                                      # (j, dL/dy_j, dy_j/dx_i)
    if isinstance(layer, npnet.Conv2d):
        c, h, w = idx
        weight = layer.params["weight"]                                 # (F, C, kh, kw)
        (sh, sw), (ph, pw) = layer.stride, layer.padding
        F, _, kh, kw = weight.shape
        for u in range(kh):                   # x[c, h, w] meets weight[f, c, u, v] in y[f, oh, ow]
            for v in range(kw):               # when oh*sh + u - ph = h and ow*sw + v - pw = w
                oh, ow = h + ph - u, w + pw - v
                if oh % sh or ow % sw:
                    continue
                oh, ow = oh // sh, ow // sw
                if 0 <= oh < grad_out.shape[1] and 0 <= ow < grad_out.shape[2]:
                    terms += [((f, oh, ow), grad_out[f, oh, ow], weight[f, c, u, v])
                              for f in range(F)]
    elif isinstance(layer, npnet.Linear):
        (k,) = idx
        weight = layer.params["weight"]                                 # (out, in)
        terms = [((j,), grad_out[j], weight[j, k]) for j in range(weight.shape[0])]
    elif isinstance(layer, (npnet.MaxPool2d, npnet.AvgPool2d)):
        c, h, w = idx
        for oh in range(grad_out.shape[1]):
            for ow in range(grad_out.shape[2]):
                window, (top, left) = _pool_window(layer, x[c], oh, ow)
                u, v = h - top, w - left
                if not (0 <= u < window.shape[0] and 0 <= v < window.shape[1]):
                    continue
                if isinstance(layer, npnet.MaxPool2d):   # 1 for the window's first maximum
                    d = float(np.argmax(window) == u * window.shape[1] + v)
                else:
                    d = 1.0 / window.size
                terms.append(((c, oh, ow), grad_out[c, oh, ow], d))
    elif isinstance(layer, npnet.ReLU):
        terms = [(idx, grad_out[idx], float(x[idx] > 0))]
    elif isinstance(layer, npnet.Tanh):
        terms = [(idx, grad_out[idx], 1.0 - y[idx] ** 2)]
    elif isinstance(layer, npnet.Flatten):
        j = int(np.ravel_multi_index(idx, x.shape))
        terms = [((j,), grad_out[j], 1.0)]
    else:
        raise BadRequest(f"no chain-rule view for {type(layer).__name__}")
    rows = sorted(({"j": list(map(int, j)), "grad_out": float(g), "local": float(d),
                    "product": float(g * d)} for j, g, d in terms),
                  key=lambda t: -abs(t["product"]))
    return {"terms": rows, "sum": float(sum(t["product"] for t in rows))}


# -- the server -------------------------------------------------------------------------------
ROUTES = {"/api/forward": "forward", "/api/element": "element", "/api/backward": "backward",
          "/api/chain": "chain", "/api/gradcheck": "gradcheck"}
FILES = {"/": "index.html", "/explain.js": "explain.js", "/explain.css": "explain.css"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".md": "text/plain; charset=utf-8"}


class Handler(BaseHTTPRequestHandler):
    """GET the page, its files, the docs pages, /api/info and /api/digits; POST /api/*.

    Every answer is whole: a JSON body with an 'error' on any failure, 4xx for the
    request's faults, 500 (logged) for the server's; a request never stops the server.
    """
    explainer: Explainer = None                 # set by make_server
    server_version = "npnet-explain"
    timeout = 30                                # seconds a client may take to send its request

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def do_PUT(self):
        self._answer(self._not_allowed)

    do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_PUT

    def _get(self, path):
        if path in FILES:
            return self._file(STATIC / FILES[path])
        page = path[len("/docs/layers/"):]
        if path.startswith("/docs/layers/") and page in DOCS.values():
            return self._file(DOCS_DIR / page)
        if path == "/api/info":
            return self._json(HTTPStatus.OK, self.explainer.info())
        if path == "/api/digits":
            return self._json(HTTPStatus.OK, self.explainer.digits)
        if path in ROUTES:
            raise BadRequest(f"{path} answers POST only", HTTPStatus.METHOD_NOT_ALLOWED)
        raise BadRequest(f"no such page: {path}", HTTPStatus.NOT_FOUND)

    def _post(self, path):
        if path not in ROUTES:
            raise BadRequest(f"no such route: POST {path}", HTTPStatus.NOT_FOUND)
        req = self._body()
        self._json(HTTPStatus.OK, getattr(self.explainer, ROUTES[path])(req))

    def _not_allowed(self, path):
        raise BadRequest(f"{self.command} is not served (GET and POST are)",
                         HTTPStatus.METHOD_NOT_ALLOWED)

    def _answer(self, method):
        """Run one method of this handler; a failure becomes a JSON error answer."""
        path = self.path.split("?", 1)[0]
        try:
            method(path)
        except BadRequest as e:
            self._json(e.status, {"error": str(e)})
        except Exception as e:                  # a bug of ours: say so, keep serving
            self.log_error("%s %s: %r", self.command, path, e)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"internal error: {type(e).__name__}: {e}"})

    def _body(self):
        """The request's JSON, read only after its announced length passed the cap."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("a POST needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            raise BadRequest(f"bad Content-Length {length!r}") from None
        if length > MAX_BODY:
            self.close_connection = True        # the unread body must not be parsed next
            raise BadRequest(f"the body may hold at most {MAX_BODY} bytes, not {length}",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise BadRequest(f"the body did not arrive within {self.timeout} s",
                             HTTPStatus.REQUEST_TIMEOUT) from None
        if len(body) < length:
            self.close_connection = True
            raise BadRequest(f"the body ended after {len(body)} of {length} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRequest(f"malformed JSON: {e}") from None

    def _file(self, path):
        self._send(HTTPStatus.OK, path.read_bytes(), TYPES[path.suffix])

    def _json(self, status, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """The HTTP layer's own refusals (a garbled request line, headers too long) in JSON
        too, like every other answer."""
        self.close_connection = True
        self._json(code, {"error": message or HTTPStatus(code).phrase})

    def log_request(self, code="-", size="-"):
        """Log the failures only: a page that redraws as you draw makes many requests."""
        if isinstance(code, int) and code >= 400:
            super().log_request(code, size)


def make_server(explainer, port=8000):
    """A threaded HTTP server on 127.0.0.1:port (0: any free port), not yet serving."""
    handler = type("ExplainHandler", (Handler,), {"explainer": explainer})
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None,
                   help=f"a checkpoint of train_lenet.py (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: any free port")
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="look for the picker's digits among the first N test images "
                        "(default all)")
    args = p.parse_args(argv)
    path = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if args.checkpoint is None and not path.exists():
        print(f"error: no checkpoint at {path}: train one with `make train` (or pass "
              "--checkpoint PATH)", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be in [0, 65535], got {args.port}", file=sys.stderr)
        return 2
    if args.test_images is not None and args.test_images < 1:
        print(f"error: --test-images must be at least 1, got {args.test_images}",
              file=sys.stderr)
        return 2
    try:
        model, name, dataset = load_checkpoint(path)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    npnet.threads.set_num_threads(1)    # one image at a time: nothing for threads to split
    explainer = Explainer(model, name, dataset, test_images=args.test_images)
    try:
        server = make_server(explainer, args.port)
    except OSError as e:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr)
        return 2
    print(f"{name} ({dataset}) from {path}: open http://127.0.0.1:{server.server_port}/ "
          "(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
