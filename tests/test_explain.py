"""examples/explain.py without a browser: its routes answer with npnet's own numbers, and
bad requests get a 4xx with a message while the server keeps serving.

The checkpoints are untrained models drawn from fixed seeds and saved in the main job's
format (examples/train_lenet.py ``checkpoint``): the page shows any weights, and every
assertion compares the server's answer with npnet run here directly.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import npnet
import npnet.hooks

ROOT = Path(__file__).resolve().parents[1]
# The server formats the maps it sends for drawing to 5 significant digits (explain._maps)
MAPS_RTOL = 5e-5
# Values a route computes as a sum of terms in float64 and npnet's own value of the same
# quantity: two float64 sums of at most 400 terms of size <= ~10 differ by a few 1e-13
SUM_ATOL = 1e-11


@pytest.fixture(scope="module")
def explain(load_example):
    return load_example("explain")


@pytest.fixture(scope="module")
def images():
    return npnet.data.load_mnist(split="test")


def start(explain, path, test_images=300):
    model, name, dataset = explain.load_checkpoint(path)
    server = explain.make_server(explain.Explainer(model, name, dataset, test_images), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def lenet(explain, tmp_path_factory, save_untrained_checkpoint):
    path = save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "lenet5.npz", "lenet5", 0)
    server = start(explain, path)
    yield server, path
    server.shutdown()
    server.server_close()


def reference(path):
    """The checkpoint's model in float64, as npnet builds it, for the expected values."""
    ckpt = npnet.load(path)
    model = getattr(npnet.models, ckpt["args"]["model"])(dtype=np.float64)
    model.load_state_dict(ckpt["model"])
    return model


def x_of(picture):
    return npnet.data.normalize(picture[None], npnet.data.MNIST_MEAN, npnet.data.MNIST_STD,
                                dtype=np.float64)


def ask(server, method, path, body=None, raw=None, headers=None):
    """(status, decoded JSON or text) of one request to the server."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    kind = r.getheader("Content-Type", "")
    return r.status, (json.loads(text) if kind.startswith("application/json") else text)


def post(server, path, body):
    status, answer = ask(server, "POST", path, body)
    assert status == 200, answer
    return answer


def traced(model, picture, target=None, of="loss"):
    """npnet's own records of one forward (and, given a target, backward)."""
    model.train()
    with npnet.hooks.trace(model) as tape:
        z = model(x_of(picture))
        if target is not None:
            if of == "score":
                model.backward(np.eye(10)[[target]])
            else:
                crit = npnet.CrossEntropyLoss()
                crit(z, np.array([target]))
                model.backward(crit.backward())
    model.zero_grad()
    return tape


# -- the command line -------------------------------------------------------------------------
def test_without_a_checkpoint_it_says_how_to_make_one(explain, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                         # no runs/lenet5/best.npz here
    assert explain.main([]) == 2
    err = capsys.readouterr().err
    assert "runs/lenet5/best.npz" in err and "make train" in err and err.count("\n") == 1


def test_a_safetensors_export_is_served_as_its_checkpoint(explain, tmp_path,
                                                          save_untrained_checkpoint):
    """--checkpoint takes the model.safetensors of --export-safetensors too (both go
    through npnet.checkpoint.load_model): same model, same weights, in float64."""
    path = save_untrained_checkpoint(tmp_path / "c.npz", "lenet5_classic", 4)
    model, _ = npnet.checkpoint.load_model(path)
    weights = tmp_path / "model.safetensors"
    npnet.save_weights(model.state_dict(), weights,
                       metadata={"model": "lenet5_classic", "dataset": "mnist"})
    from_npz, from_st = explain.load_checkpoint(path), explain.load_checkpoint(weights)
    assert from_npz[1:] == from_st[1:] == ("lenet5_classic", "mnist")
    a, b = from_npz[0].state_dict(), from_st[0].state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == np.float64 and np.array_equal(a[k], b[k]), k


def test_a_bad_checkpoint_exits_2_with_one_line(explain, tmp_path, capsys,
                                                 save_untrained_checkpoint):
    bad = tmp_path / "bad.npz"
    npnet.save({"weights": np.zeros(3)}, bad)
    assert explain.main(["--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and err.count("\n") == 1
    unknown = save_untrained_checkpoint(tmp_path / "u.npz", "lenet5", 0)
    ckpt = npnet.load(unknown)
    ckpt["args"]["model"] = "vgg"
    npnet.save(ckpt, unknown)
    assert explain.main(["--checkpoint", str(unknown)]) == 2
    assert "setting 'model' must be one of lenet5, lenet5_classic, resnet, got 'vgg'" in \
        capsys.readouterr().err
    good = save_untrained_checkpoint(tmp_path / "g.npz", "lenet5", 0)
    for flags, message in [(["--port", "70000"], "--port must be in [0, 65535], got 70000"),
                           (["--test-images", "0"], "--test-images must be at least 1")]:
        assert explain.main(["--checkpoint", str(good), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_the_script_serves_on_localhost_and_prints_its_url(lenet):
    _, path = lenet
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "explain.py"),
                             "--checkpoint", str(path), "--port", "0", "--test-images", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and b'<canvas id="draw"' in r.read()
        conn.close()
        # bound to the loopback interface only: /proc/net/tcp lists listening sockets
        # (state 0A) as hex address:port, 127.0.0.1 being 0100007F
        port = f"{int(m.group(1)):04X}"
        listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if line.split()[1].endswith(":" + port) and line.split()[3] == "0A"]
        assert listening == ["0100007F:" + port], listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- the routes ---------------------------------------------------------------------------------
def test_static_files_and_docs_pages_are_served(lenet):
    server, _ = lenet
    for path, kind in [("/", "text/html"), ("/explain.js", "text/javascript"),
                       ("/explain.css", "text/css")]:
        status, text = ask(server, "GET", path)
        assert status == 200 and text == (ROOT / "examples" / "explain" /
                                          (path[1:] or "index.html")).read_text(), path
    status, text = ask(server, "GET", "/docs/layers/conv.md")
    assert status == 200 and text == (ROOT / "docs" / "layers" / "conv.md").read_text()
    # nothing outside the page and docs/layers is served
    for path in ["/../README.md", "/docs/layers/../../README.md", "/examples/explain.py"]:
        assert ask(server, "GET", path)[0] == 404


def test_info_lists_the_layer_calls_with_shapes_and_pages(lenet):
    server, path = lenet
    status, info = ask(server, "GET", "/api/info")
    assert status == 200 and info["model"] == "lenet5" and info["backward"] is True
    tape = traced(reference(path), np.zeros((28, 28), np.uint8))
    assert [l["name"] for l in info["layers"]] == list(tape)
    for layer in info["layers"]:
        r = tape[layer["name"]]
        assert layer["input_shape"] == list(r.input.shape[1:])
        assert layer["output_shape"] == list(r.output.shape[1:])
        assert (ROOT / layer["doc"]).is_file()
        assert layer["explained"] is True                 # every layer of LeNet-5


def test_the_picker_holds_right_and_misclassified_digits(lenet, images):
    server, path = lenet
    _, digits = ask(server, "GET", "/api/digits")
    model = reference(path)
    imgs, labels = images
    wrong = [d for d in digits if d["label"] != d["predicted"]]
    assert wrong and len(wrong) < len(digits)
    for d in digits:
        i = d["index"]
        assert np.array_equal(d["image"], imgs[i]) and d["label"] == labels[i]
        assert d["predicted"] == int(np.argmax(model(x_of(imgs[i]))))


def test_forward_sends_npnet_probabilities_and_maps(lenet, images):
    server, path = lenet
    picture = images[0][7]
    answer = post(server, "/api/forward", {"image": (picture / 255).tolist()})
    tape = traced(reference(path), picture)
    z = tape["fc2"].output[0]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(answer["probs"], p, rtol=1e-12)
    assert [l["name"] for l in answer["layers"]] == list(tape)
    for layer in answer["layers"]:
        out = tape[layer["name"]].output[0]
        assert layer["output"]["shape"] == list(out.shape)
        np.testing.assert_allclose(layer["output"]["data"], out.ravel(), rtol=MAPS_RTOL,
                                   atol=1e-300)


def test_a_drawing_is_centred_as_mnist_digits_are(lenet, explain, load_example):
    server, _ = lenet
    drawing = np.zeros((28, 28))
    drawing[2:12, 3:6] = 1.0                             # a stroke in the top-left corner
    answer = post(server, "/api/forward", {"image": drawing.tolist(), "centre": True})
    expected = load_example("predict").to_mnist(drawing) / 255
    np.testing.assert_allclose(answer["input"], expected, atol=5e-5)   # sent to 4 decimals
    raw = post(server, "/api/forward", {"image": drawing.tolist()})
    np.testing.assert_array_equal(raw["input"], drawing)


@pytest.mark.parametrize("layer,index", [("conv1", [2, 0, 27]), ("conv2", [5, 4, 6]),
                                         ("conv3", [17, 0, 0]), ("fc1", [40]), ("fc2", [3]),
                                         ("pool1", [1, 7, 8]), ("pool2", [9, 2, 3]),
                                         ("act2", [4, 4, 4]), ("flatten", [77])])
def test_an_element_is_spelled_out_and_sums_to_npnets_output(lenet, images, layer, index):
    server, path = lenet
    picture = images[0][11]
    e = post(server, "/api/element", {"image": (picture / 255).tolist(), "layer": layer,
                                      "index": index})
    tape = traced(reference(path), picture)
    r = tape[layer]
    y = r.output[0][tuple(index)]
    assert e["output"] == y                              # npnet's value, as recorded
    if e["kind"] in ("conv", "linear"):
        np.testing.assert_allclose(np.multiply(e["inputs"], e["weights"]), e["products"],
                                   rtol=1e-15)
        w = r.layer.params["weight"][index[0]]
        np.testing.assert_array_equal(e["weights"], w)
        assert e["bias"] == r.layer.params["bias"][index[0]] and e["has_bias"] is True
        assert abs(e["total"] - y) <= SUM_ATOL
    elif e["kind"] == "max":
        assert e["value"] == y and np.max(e["window"]) == y
    elif e["kind"] == "flatten":
        assert e["from"] == [77, 0, 0] and e["input"] == y == r.input[0][77, 0, 0]
    else:
        assert e["kind"] == "relu" and e["input"] == r.input[0][tuple(index)]
    if layer == "conv2":                                 # and the ReLU after it
        assert e["activation"] == {"layer": "act2", "type": "ReLU",
                                   "output": tape["act2"].output[0][tuple(index)]}
    if layer == "conv1":                                 # a window over the zero padding
        assert e["origin"] == [-2, 25] and np.all(np.array(e["inputs"])[:, :2, :] == 0)


@pytest.mark.parametrize("of", ["loss", "score"])
def test_backward_sends_npnets_gradients_and_saliency(lenet, images, of):
    server, path = lenet
    picture, target = images[0][3], int(images[1][3])
    b = post(server, "/api/backward", {"image": (picture / 255).tolist(), "target": target,
                                       "of": of})
    tape = traced(reference(path), picture, target, of)
    np.testing.assert_allclose(b["saliency"], tape["conv1"].grad_in[0, 0], rtol=1e-15)
    for layer in b["layers"]:
        r = tape[layer["name"]]
        for key in ("grad_out", "grad_in"):
            np.testing.assert_allclose(layer[key]["data"], getattr(r, key)[0].ravel(),
                                       rtol=MAPS_RTOL, atol=1e-300)
    z = tape["fc2"].output[0]
    log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())         # log softmax
    expected = z[target] if of == "score" else -log_p[target]
    assert b["value"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("layer,index", [("conv1", [0, 13, 9]), ("act1", [2, 13, 9]),
                                         ("pool1", [3, 12, 15]), ("conv2", [1, 6, 6]),
                                         ("conv3", [7, 2, 1]), ("flatten", [33, 0, 0]),
                                         ("fc1", [50]), ("fc2", [11])])
def test_the_chain_rule_sum_equals_npnets_gradient(lenet, images, layer, index):
    server, path = lenet
    picture, target = images[0][5], int(images[1][5])
    c = post(server, "/api/chain", {"image": (picture / 255).tolist(), "target": target,
                                    "layer": layer, "index": index})
    tape = traced(reference(path), picture, target)
    r = tape[layer]
    assert c["grad_in"] == r.grad_in[0][tuple(index)]
    assert abs(c["sum"] - c["grad_in"]) <= SUM_ATOL
    for t in c["terms"]:                               # each term reads npnet's dL/dy
        assert t["grad_out"] == r.grad_out[0][tuple(t["j"])]
    expected_terms = {"conv1": 6 * 25, "act1": 1, "pool1": 1, "conv2": 16 * 25,
                      "conv3": 120, "flatten": 1, "fc1": 84, "fc2": 10}
    assert len(c["terms"]) == expected_terms[layer]


def test_gradcheck_passes_at_every_layer(lenet, images):
    server, _ = lenet
    picture, target = images[0][9], int(images[1][9])
    _, info = ask(server, "GET", "/api/info")
    for layer in info["layers"]:
        g = post(server, "/api/gradcheck", {"image": (picture / 255).tolist(),
                                            "target": target, "layer": layer["name"]})
        names = [t["name"] for t in g["tensors"]]
        assert names[0] == "input" and g["mode"] in ("full", "random")
        # float64 central differences of a correct backward: about 1e-9 (gradcheck.py)
        assert all(t["passed"] and t["rel_err"] < 1e-6 for t in g["tensors"]), g


def test_lenet5_classic_is_served_fully(explain, tmp_path, images,
                                        save_untrained_checkpoint):
    path = save_untrained_checkpoint(tmp_path / "classic.npz", "lenet5_classic", 1)
    server = start(explain, path, test_images=50)
    try:
        picture, target = images[0][2], int(images[1][2])
        req = {"image": (picture / 255).tolist(), "target": target}
        tape = traced(reference(path), picture, target)
        e = post(server, "/api/element", {**req, "layer": "pool1", "index": [0, 5, 5]})
        assert e["kind"] == "mean" and e["output"] == tape["pool1"].output[0, 0, 5, 5]
        assert e["value"] == pytest.approx(e["output"], rel=1e-14)
        for layer, index in [("pool2", [3, 4, 5]), ("act1", [1, 9, 9])]:   # AvgPool, Tanh
            c = post(server, "/api/chain", {**req, "layer": layer, "index": index})
            assert abs(c["sum"] - tape[layer].grad_in[0][tuple(index)]) <= SUM_ATOL
        g = post(server, "/api/gradcheck", {**req, "layer": "act3"})
        assert all(t["passed"] for t in g["tensors"])
    finally:
        server.shutdown()
        server.server_close()


def test_the_resnet_gets_its_forward_view_and_a_reason_for_no_backward(
        explain, tmp_path, images, save_untrained_checkpoint):
    # MNIST: `make test` fetches only MNIST (the ResNet trains on either)
    path = save_untrained_checkpoint(tmp_path / "resnet.npz", "resnet", 2)
    server = start(explain, path, test_images=20)
    try:
        status, info = ask(server, "GET", "/api/info")
        assert info["backward"] is False and "batch norm" in info["why_no_backward"]
        explained = {l["name"]: l["explained"] for l in info["layers"]}
        assert explained["conv1"] and explained["layer1.0.relu"] and explained["fc"]
        assert not explained["bn1"] and not explained["avgpool"]
        picture = images[0][4]
        answer = post(server, "/api/forward", {"image": (picture / 255).tolist()})
        model = reference(path).eval()
        z = model(x_of(picture))[0]
        np.testing.assert_allclose(answer["logits"], z, rtol=1e-12)
        e = post(server, "/api/element", {"image": (picture / 255).tolist(),
                                          "layer": "layer1.0.conv1", "index": [3, 5, 5]})
        assert abs(e["total"] - e["output"]) <= SUM_ATOL
        assert e["bias"] == 0.0 and e["has_bias"] is False        # bias=False: none
        status, err = ask(server, "POST", "/api/element", {"image": (picture / 255).tolist(),
                                                           "layer": "bn1", "index": [0, 0, 0]})
        assert status == 400 and "not of BatchNorm2d" in err["error"]
        status, err = ask(server, "POST", "/api/backward",
                          {"image": (picture / 255).tolist(), "target": 0})
        assert status == 409 and "batch norm" in err["error"]
    finally:
        server.shutdown()
        server.server_close()


# -- bad requests -------------------------------------------------------------------------------
def test_bad_requests_get_a_4xx_and_a_message_and_the_server_lives_on(lenet, images):
    server, _ = lenet
    good = {"image": (images[0][0] / 255).tolist()}
    row = [0.0] * 28
    cases = [
        ("POST", "/api/forward", b"{not json", {}, 400, "malformed JSON"),
        ("POST", "/api/forward", b"\xff\xfe", {}, 400, "malformed JSON"),
        ("POST", "/api/forward", b"[1, 2]", {}, 400, "JSON object"),
        ("POST", "/api/forward", json.dumps({"image": [row] * 27}).encode(), {}, 400,
         "(28, 28)"),
        ("POST", "/api/forward", json.dumps({"image": [row[:-1]] * 28}).encode(), {}, 400,
         "(28, 28)"),
        ("POST", "/api/forward", json.dumps({"image": "cat"}).encode(), {}, 400, "image"),
        ("POST", "/api/forward", json.dumps({"image": [[[0]] * 28] * 28}).encode(), {}, 400,
         "(28, 28)"),
        ("POST", "/api/forward", b'{"image": [' + b",".join(
            [b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}", {}, 400, "nan"),
        ("POST", "/api/forward", json.dumps({"image": [[float("inf")] * 28] * 28}).encode(),
         {}, 400, "nan or infinity"),
        ("POST", "/api/forward", json.dumps({"image": [[3.0] * 28] * 28}).encode(), {}, 400,
         "[0, 1]"),
        ("POST", "/api/forward", json.dumps({"image": [row] * 28, "centre": True}).encode(),
         {}, 400, "blank"),
        ("POST", "/api/element", json.dumps({**good, "layer": "conv9", "index": [0]}).encode(),
         {}, 400, "unknown layer 'conv9'"),
        ("POST", "/api/element", json.dumps({**good, "layer": "conv1",
                                             "index": [6, 0, 0]}).encode(), {}, 400, "index"),
        ("POST", "/api/chain", json.dumps({**good, "target": 10, "layer": "fc2",
                                           "index": [0]}).encode(), {}, 400, "target"),
        ("POST", "/api/chain", json.dumps({**good, "target": True, "layer": "fc2",
                                           "index": [0]}).encode(), {}, 400, "target"),
        ("POST", "/api/backward", json.dumps({**good, "target": 1, "of": "acc"}).encode(), {},
         400, "of"),
        ("POST", "/api/gradcheck", json.dumps({**good, "target": 1}).encode(), {}, 400,
         "unknown layer None"),
        ("POST", "/api/nothing", b"{}", {}, 404, "no such route"),
        ("GET", "/api/nothing", None, {}, 404, "no such page"),
        ("GET", "/api/forward", None, {}, 405, "POST only"),
        ("PUT", "/api/forward", b"{}", {}, 405, "PUT is not served"),
        ("DELETE", "/", None, {}, 405, "DELETE is not served"),
        # a huge body is refused from its announced length: none of it is sent, and the
        # answer comes without the server waiting for it
        ("POST", "/api/forward", None, {"Content-Length": str(10 ** 9)}, 413, "at most"),
        ("POST", "/api/forward", None, {"Content-Length": "-5"}, 400, "Content-Length"),
        ("POST", "/api/forward", None, {"Content-Length": "lots"}, 400, "Content-Length"),
    ]
    for method, path, raw, headers, status, message in cases:
        got, answer = ask(server, method, path, raw=raw, headers=headers)
        assert got == status and message in answer["error"], (path, raw, answer)
    # no Content-Length at all
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
    conn.putrequest("POST", "/api/forward")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
    conn.close()
    # a body shorter than announced, the client then gone quiet; and garbage for a request
    for raw, message in [
            (b"POST /api/forward HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"image\"",
             "the body ended after 8 of 100 bytes"),
            (b"\x00\x01 GARBAGE \xff\r\n\r\n", "Bad request version")]:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.makefile("rb").read()
        # the garbled request is answered as HTTP/0.9 is: a body without a status line
        assert json.loads(answer.split(b"\r\n\r\n")[-1])["error"].startswith(message), answer
    assert len(post(server, "/api/forward", good)["probs"]) == 10


def test_concurrent_requests_see_the_model_one_at_a_time(lenet, images):
    """Threaded server, one model: the lock keeps each request's run whole, so answers to
    requests racing one another equal the answers given one by one."""
    server, _ = lenet
    reqs = [{"image": (images[0][i] / 255).tolist(), "target": int(images[1][i])}
            for i in range(6)]
    alone = [post(server, "/api/backward", r)["saliency"] for r in reqs]
    with ThreadPoolExecutor(6) as pool:
        raced = list(pool.map(lambda r: post(server, "/api/backward", r)["saliency"],
                              reqs * 3))
    assert raced == alone * 3
