"""The review web app (Flask): the page, the items, the answers, and a box prompt that turns a drawn box into a
mask with SAM 3. Bound to 127.0.0.1 unless told otherwise; any other bind needs an access token."""

from __future__ import annotations

import hmac
import io
import mimetypes
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sam3_model import storage
from sam3_model.errors import ConfigError
from sam3_model.records import decode_mask, encode_mask

from verifiers.geometric import box_iou

from .items import ReviewItem, box_mask, read_items, sample_items
from .store import AnswerError, ReviewStore

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MIN_BOX_IOU = 0.3  # a model mask whose box overlaps the drawn box less than this is not taken: the box is


class BoxSegmenter:
    """Turns a box drawn on an image into the mask of the instance in it: SAM 3 prompted with the phrase and
    the box as exemplar, the instance whose box overlaps the drawn one most (or the box itself, said so)."""

    def __init__(self, model: str | None) -> None:
        self.model_name, self._segmenter, self._lock, self.error = model, None, threading.Lock(), None

    def _load(self) -> Any:
        if self._segmenter is None and self.error is None and self.model_name:
            from sam3_model.predict import ConceptSegmenter

            try:
                self._segmenter = ConceptSegmenter.from_pretrained(self.model_name, threshold=0.0, top_k=20)
            except Exception as err:  # noqa: BLE001 - the page says why and offers the box itself
                self.error = f"{self.model_name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        return self._segmenter

    def __call__(self, item: ReviewItem, box: list[float]) -> dict[str, Any]:
        """{"mask": RLE, "box_xyxy_px", "score", "via": "model" | "box", "note"} for `box` (x0, y0, x1, y1 px)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((max(0.0, x0), min(float(item.width), x1)))
        y0, y1 = sorted((max(0.0, y0), min(float(item.height), y1)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise AnswerError("the box is empty: drag over the missed instance")
        with self._lock:
            segmenter = self._load()
            if segmenter is not None:
                from sam3_model.records import ConceptPrompt

                (result,) = segmenter([str(item.image_path)], [[ConceptPrompt(item.phrase, [(x0, y0, x1, y1)])]])[0]
                overlaps = [(box_iou(i.box_xyxy_px, (x0, y0, x1, y1)), k) for k, i in enumerate(result.instances)]
                iou, k = max(overlaps, default=(0.0, -1))
                if iou >= MIN_BOX_IOU:
                    best = result.instances[k]
                    inside = decode_mask(best.mask) & box_mask((x0, y0, x1, y1), item.height, item.width)  # (H, W)
                    if inside.any():  # only what lies in the drawn box
                        return {"mask": encode_mask(inside), "box_xyxy_px": [x0, y0, x1, y1],
                                "score": float(best.score), "via": "model", "note": ""}
        mask = box_mask((x0, y0, x1, y1), item.height, item.width)  # (H, W)
        note = self.error or ("no model (--model)" if not self.model_name else "the model found no instance there")
        return {"mask": encode_mask(mask), "box_xyxy_px": [x0, y0, x1, y1], "score": None, "via": "box",
                "note": note + ": the box itself is the mask"}


def mask_runs(rle: dict[str, Any]) -> list[int]:
    """The mask as uncompressed COCO runs (column-major, starting with background) for the page to draw."""
    flat = decode_mask(rle).flatten(order="F")  # (H * W,)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def create_app(store: ReviewStore, segmenter: BoxSegmenter, token: str | None = None, title: str = "") -> Any:
    """The Flask app over `store` (answers) and `segmenter` (added masks); `token` guards every route."""
    from flask import Flask, abort, jsonify, make_response, request, send_file

    app = Flask("sam3-adapt-review")
    page = resources.files("synth.review").joinpath("page.html").read_text(encoding="utf-8")
    index = {key: k for k, key in enumerate(store.order)}

    @app.before_request
    def _guard() -> None:
        if token is None:
            return
        given = request.args.get("token") or request.headers.get("X-Review-Token") or request.cookies.get("token")
        if not given or not hmac.compare_digest(given, token):
            abort(403)

    def _item_json(item: ReviewItem | None) -> dict[str, Any] | None:
        if item is None:
            return None
        data = {**item.to_json(), "index": index[item.key]}
        for inst in data["instances"]:
            inst["runs"] = mask_runs(inst["mask"])
        return data

    @app.get("/")
    def _page() -> Any:
        response = make_response(page.replace("{{title}}", title))
        if token is not None:
            response.set_cookie("token", token, httponly=True, samesite="Strict")
        return response

    @app.get("/api/next")
    def _next() -> Any:
        skip = {k for k in request.args.get("skip", "").split("\n") if k}
        item = store.next_item(request.args.get("reviewer", "anonymous"), skip)
        return jsonify({"item": _item_json(item), "progress": store.progress()})

    @app.get("/api/item/<int:k>")
    def _item(k: int) -> Any:
        if not 0 <= k < len(store.order):
            abort(404)
        key = store.order[k]
        return jsonify({"item": _item_json(store.items[key]), "answer": store.current().get(key),
                        "progress": store.progress()})

    @app.get("/image/<int:k>")
    def _image(k: int) -> Any:
        if not 0 <= k < len(store.order):
            abort(404)
        path = store.items[store.order[k]].image_path
        if storage.is_url(path):  # an image in an object store: its bytes, through fsspec
            kind = mimetypes.guess_type(storage.name_of(path))[0] or "application/octet-stream"
            return send_file(io.BytesIO(storage.read_bytes(path)), mimetype=kind)
        return send_file(path)

    @app.post("/api/answer")
    def _answer() -> Any:
        try:
            return jsonify(store.submit(request.get_json(force=True)))
        except AnswerError as err:
            return jsonify({"error": str(err)}), 400

    @app.post("/api/undo")
    def _undo() -> Any:
        body = request.get_json(force=True)
        try:
            return jsonify(store.retract(str(body.get("answer_id")), str(body.get("retraction_id")),
                                         str(body.get("reviewer") or "")))
        except AnswerError as err:
            return jsonify({"error": str(err)}), 400

    @app.post("/api/segment")
    def _segment() -> Any:
        body = request.get_json(force=True)
        item = store.items.get(body.get("item"))
        if item is None:
            return jsonify({"error": f"no item {body.get('item')!r}"}), 400
        try:
            found = segmenter(item, list(body.get("box") or []))
            return jsonify({**found, "runs": mask_runs(found["mask"])})
        except (AnswerError, ValueError, TypeError) as err:
            return jsonify({"error": str(err)}), 400

    @app.get("/api/progress")
    def _progress() -> Any:
        return jsonify(store.progress())

    return app


def review(source: Path, out: Path | None = None, images: str | None = None,
           sample: Literal["stratified", "all"] = "stratified", per_stratum: int = 10, seed: int = 0,
           model: str | None = None, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> None:
    """Review image-phrase pairs in the browser: accept or reject each mask (MV), say whether every instance is
    masked (EV), draw a box to add a missed one. `source`: a synth run folder or a COCO / SA-Co file (`images`:
    its image folder, or an fsspec URL); `out`: where answers and outputs go (default: SOURCE-review); `model`: the SAM 3 that turns
    a drawn box into a mask (default: the synth run's teacher)."""
    from werkzeug.serving import make_server

    source = Path(source)
    out = Path(out) if out is not None else source.parent / f"{source.stem if source.is_file() else source.name}-review"
    if host not in LOCAL_HOSTS and not token:
        token = secrets.token_urlsafe(16)
        print(f"review: bound to {host}, so every request needs the access token (--token to choose one)")
    items = sample_items(read_items(source, images), sample, per_stratum, seed)
    if not items:
        raise ConfigError(f"{source}: nothing to review (no image-phrase pair)")
    store = ReviewStore(out, items, image_root_of(source, images))
    app = create_app(store, BoxSegmenter(model or _teacher_of(source)), token, title=source.name)
    server = make_server(host, port, app, threaded=True)
    url = f"http://{'localhost' if host in LOCAL_HOSTS else host}:{server.server_port}/"
    done = store.progress()
    print(f"review: {done['answered']} of {done['total']} pairs answered; answers and outputs in {out}")
    print(f"review: the HQ file {out / 'hq.json'} names images relative to {store.image_root} (its `images:`)")
    print(f"review: open {url}{'?token=' + token if token else ''}  (Ctrl+C stops; a restart resumes)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def image_root_of(source: Path, images: str | Path | None) -> Path | str:
    """The folder the source's file names are relative to: the run folder, `images`, or the file's folder."""
    from adapt.data.annotations import image_folder

    return source.resolve() if source.is_dir() else image_folder(source, images)


def _teacher_of(source: Path) -> str | None:
    """The teacher checkpoint a synth run recorded (pl.json's info), or None."""
    import json

    path = source / "pl.json"
    if not (source.is_dir() and path.is_file()):
        return None
    try:
        teacher = json.loads(path.read_text()).get("info", {}).get("teacher")
    except (ValueError, AttributeError):
        return None
    return teacher if isinstance(teacher, str) and teacher != "exact" else None
