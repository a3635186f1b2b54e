"""examples/explain.py in a real browser: Debian's chromium, headless, driven by Playwright.

`make test` installs chromium when /usr/bin/chromium is missing (Makefile), so these tests
never skip: without the browser they fail.  Playwright's own browser download is not used
(it cannot work offline); the page fetches nothing but its own server's files.

What the page shows is read back from the page and compared with npnet run here directly:
the page's numbers are npnet's, or these fail.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

import npnet
import npnet.hooks

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# The page shows sums and npnet's values to 6 significant digits (explain.js fmt): two
# values equal in float64 may differ by one unit in the 6th digit after rounding
SHOWN_RTOL = 1e-5


@pytest.fixture(scope="module")
def explain(load_example):
    return load_example("explain")


@pytest.fixture(scope="module")
def site(explain, tmp_path_factory, save_untrained_checkpoint):
    """The page's server on a free port, for an untrained LeNet-5 of seed 3."""
    path = save_untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "lenet5.npz",
                                     "lenet5", 3)
    model, name, dataset = explain.load_checkpoint(path)
    server = explain.make_server(explain.Explainer(model, name, dataset, test_images=300), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", path
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, site):
    """A fresh page of the site; fails the test on any JavaScript error or failed load."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
    # nothing but the page's own server: no CDN, no font, no outside request
    page.on("request", lambda r: None if r.url.startswith((site[0], "data:"))
            else problems.append(f"outside request: {r.url}"))
    page.goto(site[0])
    page.wait_for_selector("#picker .digit")
    yield page
    context.close()
    assert not problems, problems


def settle(page):
    """Wait until the page has no request in flight and has drawn the layers."""
    page.wait_for_function("document.body.dataset.pending === '0' && "
                           "document.querySelectorAll('#layers canvas.map').length > 0")


def reference(path):
    model = npnet.lenet5(dtype=np.float64)
    model.load_state_dict(npnet.load(path)["model"])
    return model


def traced(path, picture, target=None):
    """npnet's records of one forward (and backward of the loss for ``target``)."""
    model = reference(path)
    x = npnet.data.normalize(picture[None], npnet.data.MNIST_MEAN, npnet.data.MNIST_STD,
                             dtype=np.float64)
    with npnet.hooks.trace(model) as tape:
        z = model(x)
        if target is not None:
            crit = npnet.CrossEntropyLoss()
            crit(z, np.array([target]))
            model.backward(crit.backward())
    return tape


def shown(page, selector) -> float:
    return float(page.inner_text(selector))


def click_element(page, layer, role, map_no, i, j):
    """Click element (i, j) of the map_no-th map of a layer's row ('output', 'grad_in')."""
    canvas = page.locator(f".layer[data-layer='{layer}'] canvas.map[data-role='{role}']"
                          ).nth(map_no)
    zoom = int(canvas.get_attribute("data-zoom"))
    canvas.click(position={"x": j * zoom + zoom / 2, "y": i * zoom + zoom / 2})


def test_drawing_updates_the_prediction_and_the_layers(page, site, load_example):
    assert page.inner_text("#bars .bar[data-class='0'] .p") == "-"      # nothing drawn yet
    assert page.locator("#layers canvas.map").count() == 0
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 140, box["y"] + 50)
    page.mouse.down()
    for k in range(1, 21):                                  # a vertical stroke: a "1"
        page.mouse.move(box["x"] + 145, box["y"] + 50 + 9 * k)
    page.mouse.up()
    settle(page)
    probs = [float(page.inner_text(f"#bars .bar[data-class='{k}'] .p")) for k in range(10)]
    assert abs(sum(probs) - 1) < 0.006                      # ten values shown to 3 decimals
    drawing = np.array(page.evaluate("state.image"))     # what the page sends
    assert drawing.shape == (28, 28) and drawing[6:23, 14].min() > 0.5
    assert drawing[:, :10].max() == 0 and drawing[:, 19:].max() == 0
    picture = load_example("predict").to_mnist(drawing)    # the page asks for MNIST's form
    tape = traced(site[1], picture)
    # one output map per channel of every layer, as npnet's shapes say
    for name, r in tape.items():
        maps = page.locator(f".layer[data-layer='{name}'] canvas.map[data-role='output']")
        C, H, W = r.output.shape[1:] if r.output.ndim == 4 else (1, 1, r.output.shape[1])
        assert maps.count() == (C if H * W > 1 else 1), name
    z = tape["fc2"].output[0]
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(probs, p, atol=5e-4 + 1e-9)   # rounded to 3 decimals
    page.click("#clear")
    page.wait_for_function("document.querySelectorAll('#layers canvas.map').length === 0")
    assert page.inner_text("#bars .bar[data-class='0'] .p") == "-"


def test_a_finger_draws_too(browser, site):
    """Touch events (as a phone's) draw like the mouse: the canvas listens to pointer
    events, which a touch screen sends as well."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000}, has_touch=True)
    try:
        page = context.new_page()
        page.goto(site[0])
        page.wait_for_selector("#picker .digit")
        box = page.locator("#draw").bounding_box()
        cdp = context.new_cdp_session(page)
        x0, y0 = box["x"] + 100, box["y"] + 140
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart",
                                              "touchPoints": [{"x": x0, "y": y0}]})
        for k in range(1, 16):                              # a horizontal stroke: a "-"
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                                  "touchPoints": [{"x": x0 + 6 * k, "y": y0}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        settle(page)
        drawing = np.array(page.evaluate("state.image"))
        assert drawing[14, 11:18].min() > 0.5 and drawing[:10].max() == 0
        assert page.inner_text("#bars .bar[data-class='0'] .p") != "-"
    finally:
        context.close()


def test_a_conv_elements_sum_is_npnets_output(page, site):
    digit = page.locator("#picker .digit").first
    index = int(digit.get_attribute("data-index"))
    digit.click()
    settle(page)
    click_element(page, "conv2", "output", 4, 3, 6)       # filter 4, row 3, column 6
    page.wait_for_selector("#fwd-npnet")
    assert "conv2 (Conv2d) output [4, 3, 6]" in page.inner_text("#detail-body h3")
    images, _ = npnet.data.load_mnist(split="test")
    tape = traced(site[1], images[index])
    y = tape["conv2"].output[0, 4, 3, 6]
    assert shown(page, "#fwd-total") == pytest.approx(y, rel=SHOWN_RTOL)
    assert shown(page, "#fwd-npnet") == pytest.approx(y, rel=SHOWN_RTOL)
    assert shown(page, "#fwd-activation") == pytest.approx(max(y, 0.0), rel=SHOWN_RTOL,
                                                           abs=1e-12)
    # the 6 channels of the 5x5 window, with weights and products, are on the page
    assert page.locator("#detail-body .channel").count() == 6
    w = tape["conv2"].layer.params["weight"][4, 0, 0, 0]
    first_weight = page.locator("#detail-body .channel").first.locator("table.grid").nth(1)
    assert float(first_weight.locator("td").first.inner_text()) == pytest.approx(w, rel=1e-2)


def test_the_backward_view_shows_npnets_gradients(page, site, tmp_path):
    digit = page.locator("#picker .digit.wrong").first     # a digit the model gets wrong
    index, label = int(digit.get_attribute("data-index")), None
    digit.click()
    settle(page)
    page.click("#mode-backward")
    page.wait_for_selector("canvas.map[data-role='grad_in']")
    settle(page)
    images, labels = npnet.data.load_mnist(split="test")
    label = int(labels[index])
    assert page.input_value("#target") == str(label)       # the picked digit's label
    tape = traced(site[1], images[index], label)
    # the value of L shown is the loss npnet computed
    z = tape["fc2"].output[0]
    loss = np.log(np.exp(z - z.max()).sum()) + z.max() - z[label]
    assert float(page.inner_text("#L-value").split("= ")[-1]) == pytest.approx(
        loss, rel=SHOWN_RTOL)
    # the chain-rule sum for one element of the gradient leaving conv2
    click_element(page, "conv2", "grad_in", 2, 6, 5)
    page.wait_for_selector("#chain-npnet")
    g = tape["conv2"].grad_in[0, 2, 6, 5]
    assert shown(page, "#chain-sum") == pytest.approx(g, rel=SHOWN_RTOL)
    assert shown(page, "#chain-npnet") == pytest.approx(g, rel=SHOWN_RTOL)
    assert page.locator("#detail-body table.rows tr").count() == 1 + 16 + 1   # 400 terms
    # the gradient arriving at fc1 is the one leaving act4 ... at element 7
    click_element(page, "fc1", "grad_out", 0, 0, 7)
    page.wait_for_selector("#detail-body h3:has-text('act4')")
    assert shown(page, "#chain-sum") == pytest.approx(tape["fc1"].grad_out[0, 7],
                                                      rel=SHOWN_RTOL, abs=1e-300)
    # the numerical check of conv1 at this input
    page.click(".layer[data-layer='conv1'] button.check")
    page.wait_for_selector("#gradcheck")
    errors = [float(t) for t in page.locator("#gradcheck .rel-err").all_inner_texts()]
    assert len(errors) == 3 and max(errors) < 1e-6          # input, weight, bias
    assert page.is_visible("#saliency")
    shot = tmp_path / "explain-backward.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
