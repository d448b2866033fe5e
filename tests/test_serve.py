"""`vidlm serve` as a user and a script meet it: a real server on a free localhost port with a
tiny random model, driven through Gradio's client API and, in headless Chromium, through the page."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason='vidlm serve needs the serve extra: pip install "vidlm[serve]"')
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from vidlm.data.encode import write_video
from vidlm.data.video import read_clip

from vidlm.generate import read_input
from vidlm.pipeline import VideoGenerator

SIZE = "32x32"  # the debug tokenizer codes 4x4 pixels: an 8x8 grid per latent frame
ADV = (0, 1.0, 0, 1.0, 1.0, 1.0, False)  # seed, temperature, top-k, top-p, CFG text, CFG visual, refine
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(debug_model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vidlm.serve", "--model", str(debug_model_dir), "--port", str(port),
                                 "--max-upload-mb", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"vidlm serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    out = {name: write_video(root / f"{name}.mp4", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8.0)
           for name in ("a", "b")}
    out["img"] = write_video(root / "img.png", rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), fps=8.0)
    (root / "notes.txt").write_text("not a video\n" * 10)
    (root / "empty.mp4").write_bytes(b"")
    (root / "big.mp4").write_bytes(os.urandom(int(1.5 * 2**20)))
    for name in ("notes.txt", "empty.mp4", "big.mp4"):
        out[name] = root / name
    return out


def frames_of(path: str) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(path, index=None) if not path.endswith(".png") else iio.imread(path)[None]


# task -> (API arguments before ADV, frames out, [(input, kept frames, where its codes sit)])
CASES = {
    "t2v": (lambda c: ["a red circle moves right", 9, SIZE], 9, []),
    "t2i": (lambda c: ["a blue square", SIZE], 1, []),
    "i2v": (lambda c: [handle_file(c["img"]), "moves down", 9, SIZE], 9, [("img", 1, "head")]),
    "extend-forward": (lambda c: [handle_file(c["a"]), "forward", 5, 13, SIZE, ""], 13,
                       [("a", 5, "head")]),
    "extend-backward": (lambda c: [handle_file(c["a"]), "backward", 5, 13, SIZE, ""], 13,
                        [("a", 5, "tail")]),
    "connect": (lambda c: [handle_file(c["a"]), handle_file(c["b"]), 5, 17, SIZE, ""], 17,
                [("a", 5, "head"), ("b", 5, "tail")]),
    "loop": (lambda c: ["", handle_file(c["a"]), 5, 13, SIZE], 13, [("a", 5, "head")]),
    "edit": (lambda c: [handle_file(c["a"]), "a yellow circle", 5, SIZE], 5, []),
    "long": (lambda c: ["a red circle moves right", None, 5, 4.0, SIZE], 33, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_task_through_the_client_api(client, debug_model_dir, clips, case):
    """The right number of frames at the right size, and the input's codes back unchanged in
    the returned codes (and its frames, after decode, where decoding is causal from them)."""
    task = case.split("-")[0]
    args, frames, known = CASES[case]
    result, *rest = client.predict(*args(clips), *ADV, api_name=f"/{task}")
    files, info = rest[-2], rest[-1]
    video = frames_of(result)
    assert video.shape[:3] == (frames, 32, 32), (case, video.shape)
    assert info["frames"] == frames and info["size"] == SIZE
    if task in ("extend", "connect", "loop", "edit", "i2v"):
        assert frames_of(rest[0]).shape[2] == 64  # input | output side by side
    codes = torch.from_numpy(np.load(next(f for f in files if f.endswith("codes.npy"))))
    gen = VideoGenerator.from_pretrained(debug_model_dir)
    for name, kept, where in known:
        source = read_input(str(clips[name]), None if name == "img" else kept, 8.0, (32, 32), gen.time_factor)
        expected = gen.encode(source[:, :1] if name == "img" else source)
        got = codes[: len(expected)] if where == "head" else codes[-len(expected):]
        assert torch.equal(got, expected), (case, name)
        if where == "head":  # the causal decoder draws these frames from these codes alone
            ref = Path(write_video(Path(result).parent / f"ref-{name}.mp4", gen.decode(expected), fps=8.0))
            ref_frames = frames_of(str(ref)).astype(float)
            assert np.abs(video[:kept].astype(float) - ref_frames[:kept]).mean() < 4, case
    if task == "loop":
        assert info["seam"] > 0


def test_bad_input_is_answered_and_the_server_keeps_serving(client, clips):
    def error_of(*args, api):
        with pytest.raises(AppError) as e:
            client.predict(*args, *ADV, api_name=api)
        return str(e.value)

    extend = lambda path: [handle_file(path), "forward", 5, 13, SIZE, ""]
    assert "notes.txt: not readable as a video" in error_of(*extend(clips["notes.txt"]), api="/extend")
    assert "empty" in error_of(*extend(clips["empty.mp4"]), api="/extend")
    with pytest.raises(ValueError, match="maximum file size"):  # over the 1 MB limit: the client refuses,
        client.predict(*extend(clips["big.mp4"]), *ADV, api_name="/extend")
    import httpx  # and so does the server, to a client that does not check

    with open(clips["big.mp4"], "rb") as f:
        r = httpx.post(f"{client.src.rstrip('/')}/gradio_api/upload", files={"files": f}, timeout=30)
    assert r.status_code == 413, r.text
    assert "needs a prompt" in error_of("", 9, SIZE, api="/t2v")
    too_long = error_of("a red circle", 65, "64x48", api="/t2v")
    assert "at most" in too_long and "frames fit" in too_long
    assert "multiples" in error_of("a red circle", 9, "30x30", api="/t2v")
    result, _, info = client.predict(prompt="a red ball going right", frames=5, size=SIZE, refine=True, api_name="/t2v")
    assert frames_of(result).shape[0] == 5
    assert info["caption"].startswith("a red circle bouncing to the right")  # refined, and shown


def test_serves_no_file_outside_its_folder(server):
    repo_file = Path(__file__).resolve()
    for path in ("/etc/passwd", str(repo_file)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server}gradio_api/file={path}", timeout=10)
        assert e.value.code in (403, 404), path


def test_cancel_frees_the_worker(server):
    from gradio_client.utils import Status

    c = Client(server, verbose=False)
    job = c.submit("a red circle moves right", None, 5, 120.0, "64x48", *ADV, api_name="/long")  # 46k codes: minutes
    deadline = time.time() + 60
    while job.status().code != Status.PROCESSING and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    start = time.time()
    c.predict(api_name="/cancel_long")
    result, *_ = c.predict("a red circle", 5, SIZE, *ADV, api_name="/t2v")
    assert frames_of(result).shape[0] == 5
    assert time.time() - start < 20  # the long request would take minutes
    with pytest.raises(AppError, match="cancelled"):  # the request stopped at its next code
        job.result(timeout=30)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium: apt-get install chromium (CI installs it)")
def test_in_a_real_browser(server, clips, tmp_path):
    """Open the page, run t2v and wait for the video; upload a text file to extend, read the
    error, then run a valid extend on the same server; a screenshot of every tab."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server, wait_until="domcontentloaded")
        page.get_by_role("tab", name="t2v").click()
        tab = page.locator("div[role=tabpanel]:visible")
        tab.get_by_label("prompt").fill("a red circle moves right")
        page.locator("#run-t2v").click()
        video = page.locator("#result-t2v video")
        video.wait_for(timeout=60_000)
        src = video.get_attribute("src")
        assert src
        data = page.request.get(src if src.startswith("http") else server.rstrip("/") + src).body()
        (tmp_path / "t2v.mp4").write_bytes(data)
        assert read_clip(tmp_path / "t2v.mp4", 17, short="error").shape[1:] == (17, 32, 32)
        page.screenshot(path=tmp_path / "t2v.png", full_page=True)

        page.get_by_role("tab", name="extend").click()
        tab = page.locator("div[role=tabpanel]:visible")
        upload = tab.locator("input[type=file]").first
        upload.set_input_files(str(clips["notes.txt"]))  # the page refuses it by type
        page.get_by_text("Invalid file type", exact=False).first.wait_for(timeout=30_000)
        fake = tmp_path / "notes.mp4"  # text under a video's name reaches the server, which says so
        fake.write_bytes(clips["notes.txt"].read_bytes())
        upload.set_input_files(str(fake))
        page.locator("#run-extend").click()
        error = page.get_by_text("video notes.mp4: not readable", exact=False).first
        error.wait_for(timeout=60_000)
        page.screenshot(path=tmp_path / "extend-error.png", full_page=True)
        page.reload(wait_until="domcontentloaded")  # a fresh page, the same server
        page.get_by_role("tab", name="extend").click()
        page.locator("div[role=tabpanel]:visible input[type=file]").first.set_input_files(str(clips["a"]))
        page.locator("#run-extend").click()
        page.locator("#result-extend video").wait_for(timeout=60_000)
        for name in ("t2i", "i2v", "connect", "loop", "edit", "long"):
            page.get_by_role("tab", name=name).click()
            page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
        browser.close()
    assert len(list(tmp_path.glob("*.png"))) == 8
