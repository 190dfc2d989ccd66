"""`sam3-adapt review`: the answers store, two reviewers at once, a restart, and the joins: the human sample feeds
`synth calibrate --human`, the HQ file feeds `fit`. The browser test drives the real page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sam3_model.records import decode_mask, encode_mask
from synth.review.items import read_items, sample_items
from synth.review.server import BoxSegmenter, create_app
from synth.review.store import ReviewStore
from proc_helpers import free_port

DEMO_BASE = Path(__file__).resolve().parents[1] / "recipes" / "demo_base"
SIZE = 84
PHRASES = ("green circle", "purple square")


def _disc(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)  # (H, W)


def _instance(mask: np.ndarray, score: float, kept: bool) -> tuple[dict, dict]:
    ys, xs = np.nonzero(mask)
    inst = {"mask": encode_mask(mask), "box_xyxy_px": [float(xs.min()), float(ys.min()), float(xs.max() + 1),
                                                         float(ys.max() + 1)], "score": score,
            "prompted_with": "green circle"}
    verdicts = [{"verifier": "geometric", "option": "accept", "score": 1.0, "accept_score": 1.0, "reason": "ok"},
                {"verifier": "crop_classifier", "option": "accept" if kept else "reject", "score": 0.9,
                 "accept_score": 0.9 if kept else 0.1, "reason": f"P = {0.9 if kept else 0.1}"}]
    return inst, {"verdicts": verdicts, "rejected_by": None if kept else "crop_classifier"}


@pytest.fixture()
def synth_run(tmp_path: Path) -> Path:
    """A synth run folder as the engine writes it: images/, stages/verify/shard-*.json (keys not 0..N-1)."""
    root = tmp_path / "pool"
    (root / "images").mkdir(parents=True)
    records = []
    for n, key in enumerate(("toy-000017", "toy-000203", "toy-000005")):
        image = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        draw.ellipse((10, 10, 30, 30), fill=(0, 200, 0))
        draw.rectangle((50, 50, 70, 70), fill=(150, 0, 200))
        image.save(root / "images" / f"{key}.png")
        pairs = []
        for phrase in PHRASES:
            found = [_instance(_disc(20, 20, 10), 0.8, kept=n != 1)] if phrase == "green circle" else []
            if phrase == "green circle" and n == 0:
                found.append(_instance(_disc(60, 20, 6), 0.55, kept=False))
            pairs.append({"phrase": phrase, "kind": "concept", "presence": 0.7, "prompts": [phrase],
                          "instances": [f[0] for f in found], "candidates": [],
                          "verification": {"instances": [f[1] for f in found],
                                           "pair": {"verdicts": [], "rejected_by": None}}})
        records.append({"key": key, "file_name": f"images/{key}.png", "width": SIZE, "height": SIZE,
                        "source": {"kind": "toy"}, "pairs": pairs})
    (root / "stages" / "verify").mkdir(parents=True)
    (root / "stages" / "verify" / "shard-00000.json").write_text(json.dumps({"stage": "verify", "shard": 0,
                                                                             "records": records}))
    return root


def _answer(item: dict, answer_id: str, reviewer: str = "r1", ev: bool = True, added: list | None = None) -> dict:
    return {"answer_id": answer_id, "item": item["key"], "reviewer": reviewer,
            "mv": ["accept"] * len(item["instances"]), "ev": ev, "added": added or []}


def test_items_are_stratified_by_phrase_and_decision(synth_run: Path):
    items = read_items(synth_run)
    assert len(items) == 6 and {i.decision for i in items} == {"kept", "rejected", "empty"}
    sample = sample_items(items, "stratified", per_stratum=1)
    assert sorted((i.phrase, i.decision) for i in sample) == [
        ("green circle", "kept"), ("green circle", "rejected"), ("purple square", "empty")]
    assert sample_items(items, "stratified", per_stratum=1) == sample  # seeded
    assert len(sample_items(items, "all")) == 6


def test_two_reviewers_at_once_never_lose_or_duplicate_an_answer(synth_run: Path, tmp_path: Path):
    out = tmp_path / "review"
    store = ReviewStore(out, sample_items(read_items(synth_run), "all"), synth_run)
    app = create_app(store, BoxSegmenter(None))
    got: dict[str, list[str]] = {"r1": [], "r2": []}

    def reviewer(name: str) -> None:
        client = app.test_client()
        while True:
            item = client.get(f"/api/next?reviewer={name}").get_json()["item"]
            if item is None:
                return
            got[name].append(item["key"])
            for _ in range(2):  # a retried post (the page retries when it hears nothing) is stored once
                assert client.post("/api/answer", json=_answer(item, f"{name}-{item['key']}", name)).status_code == 200

    threads = [threading.Thread(target=reviewer, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got["r1"] + got["r2"]) == sorted(store.order)  # every item handed out once
    assert got["r1"] and got["r2"]
    log = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert sorted(e["item"] for e in log) == sorted(store.order)
    hq = json.loads((out / "hq.json").read_text())
    assert len(hq["images"]) == 6 and len({(p["source_image_id"], p["text_input"]) for p in hq["images"]}) == 6


def test_undo_a_restart_and_a_write_cut_by_a_kill(synth_run: Path, tmp_path: Path):
    out = tmp_path / "review"
    items = sample_items(read_items(synth_run), "all")
    client = create_app(ReviewStore(out, items, synth_run), BoxSegmenter(None)).test_client()
    first = client.get("/api/next?reviewer=r").get_json()["item"]
    client.post("/api/answer", json=_answer(first, "a1"))
    assert client.post("/api/undo", json={"answer_id": "a1", "retraction_id": "u1"}).get_json()["answered"] == 0
    again = client.get(f"/api/item/{first['index']}").get_json()
    assert again["answer"] is None
    client.post("/api/answer", json=_answer(first, "a2", ev=False))
    with open(out / "answers.jsonl", "ab") as f:  # a kill in the middle of the next write: never acknowledged
        f.write(b'{"answer_id": "a3", "item": "toy')
    store = ReviewStore(out, items, synth_run)
    assert store.truncated == 1 and store.progress() == {"answered": 1, "total": 6}
    assert store.current()[first["key"]]["answer_id"] == "a2"
    nxt = create_app(store, BoxSegmenter(None)).test_client().get("/api/next?reviewer=r").get_json()["item"]
    assert nxt["key"] != first["key"]  # resumes where it stopped


def test_bad_answers_are_refused_with_a_reason(synth_run: Path, tmp_path: Path):
    store = ReviewStore(tmp_path / "review", sample_items(read_items(synth_run), "all"), synth_run)
    client = create_app(store, BoxSegmenter(None)).test_client()
    item = client.get("/api/next").get_json()["item"]
    bad = client.post("/api/answer", json={**_answer(item, "b1"), "mv": ["maybe"] * len(item["instances"])})
    assert bad.status_code == 400 and "mv must be one of" in bad.get_json()["error"]
    wrong = client.post("/api/answer", json={**_answer(item, "b2"), "item": "nope|x"})
    assert wrong.status_code == 400 and "no item" in wrong.get_json()["error"]
    assert not (tmp_path / "review" / "answers.jsonl").exists()


def test_a_token_guards_every_route(synth_run: Path, tmp_path: Path):
    store = ReviewStore(tmp_path / "review", sample_items(read_items(synth_run), "all"), synth_run)
    client = create_app(store, BoxSegmenter(None), token="s3cret").test_client()
    assert client.get("/").status_code == 403 and client.get("/api/next").status_code == 403
    assert client.get("/?token=s3cret").status_code == 200
    assert client.get("/api/progress", headers={"X-Review-Token": "s3cret"}).status_code == 200


def test_the_outputs_feed_calibrate_and_fit(synth_run: Path, tmp_path: Path):
    """human_sample.json is what `synth calibrate --human` reads; hq.json is what `fit` trains on."""
    from sam3_adapt.cli import main

    out = tmp_path / "review"
    store = ReviewStore(out, sample_items(read_items(synth_run), "all"), synth_run)
    client = create_app(store, BoxSegmenter(None)).test_client()
    while (item := client.get("/api/next").get_json()["item"]) is not None:
        answer = _answer(item, "a-" + item["key"], ev=item["phrase"] == "green circle")
        answer["mv"] = ["accept" if i["decision"] == "kept" else "reject" for i in item["instances"]]
        if item["phrase"] == "purple square":  # the teacher missed the square: the reviewer adds it
            square = np.zeros((SIZE, SIZE), np.uint8)
            square[50:71, 50:71] = 1
            answer["added"] = [{"mask": encode_mask(square), "box_xyxy_px": [50, 50, 71, 71], "via": "box"}]
        assert client.post("/api/answer", json=answer).status_code == 200
    stats = json.loads((out / "agreement.json").read_text())
    assert stats["mv"]["crop_classifier"]["agreement"] == 1.0 and stats["mv"]["geometric"]["agreement"] < 1.0
    assert stats["added_masks"] == 3

    config = tmp_path / "synth.yaml"
    config.write_text(f"source: {{toy: {{num_images: 2}}}}\nteacher: {{model: {DEMO_BASE}}}\n"
                      "ontology: {concepts: [{name: green circle}, {name: purple square}]}\n"
                      "verify: {geometric: {}}\n")
    assert main(["synth", "calibrate", str(config), "--human", str(out / "human_sample.json"),
                 "--out", str(tmp_path / "calibration")]) == 0
    assert "geometric" in next((tmp_path / "calibration").glob("*.md")).read_text()

    hq = json.loads((out / "hq.json").read_text())
    squares = [a for a in hq["annotations"] if hq["images"][a["image_id"] - 1]["text_input"] == "purple square"]
    assert len(squares) == 3 and decode_mask(squares[0]["segmentation"]).sum() == 21 * 21
    assert hq["info"]["images"] == str(synth_run.resolve())
    fit = tmp_path / "fit.yaml"
    fit.write_text(json.dumps({
        "model": {"model": str(DEMO_BASE)},
        "data": {"train": [{"path": str(out / "hq.json"), "images": str(synth_run)}],
                 "val": [{"path": str(out / "hq.json"), "images": str(synth_run)}], "batch_size": 2,
                 "num_workers": 0},
        "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "logger": False,
                    "default_root_dir": str(tmp_path / "fit"), "enable_progress_bar": False}}))
    assert main(["fit", "--config", str(fit)]) == 0
    assert list((tmp_path / "fit").rglob("*.ckpt"))


# ----- the real page in headless Chromium --------------------------------------------------------------------------
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not "
                                                                "installed (apt install chromium chromium-driver)")




def _serve(source: Path, out: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sam3_adapt", "review", "--source", str(source), "--out", str(out),
                             "--sample", "all", "--model", str(DEMO_BASE), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(proc.stdout.read().decode())


@browser
def test_a_reviewer_answers_in_the_browser_across_a_server_kill(synth_run: Path, tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, port = tmp_path / "review", free_port()
    server = _serve(synth_run, out, port)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    wait = WebDriverWait(driver, 60)
    lines = lambda: [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]  # noqa: E731

    def progress() -> str:
        return driver.find_element(By.ID, "progress").text

    def submitted(n: int) -> None:
        wait.until(lambda d: (out / "answers.jsonl").is_file() and len(lines()) == n)
        wait.until(lambda d: progress().startswith(f"{n} /"))

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_element(By.ID, "phrase").text)
        body = driver.find_element(By.TAG_NAME, "body")
        for n in range(1, 3):  # keyboard: accept every mask, exhaustive, submit
            wait.until(lambda d: "/ 6" in progress())
            body.send_keys("A", "e", "\n")
            submitted(n)
        server.send_signal(signal.SIGKILL)  # the server dies mid-review; a new one resumes from the log
        server.wait(10)
        server = _serve(synth_run, out, port)
        # the mouse: reject the first mask (if any), say "not exhaustive", draw a box, keep the mask, submit
        wait.until(lambda d: d.find_element(By.ID, "phrase").text)
        rejects = driver.find_elements(By.CSS_SELECTOR, "#instances .reject")
        for button in rejects:
            button.click()
        driver.find_element(By.ID, "ev-no").click()
        driver.find_element(By.ID, "draw").click()
        canvas = driver.find_element(By.ID, "canvas")
        scale = canvas.size["width"] / SIZE
        left, top = -canvas.size["width"] / 2, -canvas.size["height"] / 2  # offsets from the canvas centre
        ActionChains(driver).move_to_element_with_offset(canvas, int(left + 48 * scale), int(top + 48 * scale)) \
            .click_and_hold().move_by_offset(int(25 * scale), int(25 * scale)).release().perform()
        wait.until(lambda d: d.find_elements(By.ID, "keep"))  # the model's mask (or the box) offered
        driver.find_element(By.ID, "keep").click()
        driver.find_element(By.ID, "submit").click()
        submitted(3)
        body.send_keys("u")  # undo the last answer: its item comes back
        wait.until(lambda d: progress().startswith("2 /"))
        body.send_keys("R", "m", "\n")
        wait.until(lambda d: progress().startswith("3 /"))
        for n in range(4, 7):
            body.send_keys("A", "e", "\n")
            wait.until(lambda d, n=n: progress().startswith(f"{n} /"))
        wait.until(lambda d: "Nothing left" in d.find_element(By.ID, "phrase").text)
    finally:
        driver.quit()
        server.kill()
        server.wait(10)
    log = lines()
    answers = [e for e in log if "retract" not in e]
    assert len(answers) == 7 and len([e for e in log if "retract" in e]) == 1
    added = [e for e in answers if e["added"]]
    assert len(added) == 1 and added[0]["ev"] is False
    hq = json.loads((out / "hq.json").read_text())
    assert len(hq["images"]) == 6  # every pair exactly once, the undone answer replaced
    assert len({(p["source_image_id"], p["text_input"]) for p in hq["images"]}) == 6
    sample = json.loads((out / "human_sample.json").read_text())
    assert len(sample["exhaustivity"]) == 6
    assert len(sample["mask"]) == sum(len(i.instances) for i in read_items(synth_run))
    assert json.loads((out / "agreement.json").read_text())["reviewed_pairs"] == 6
