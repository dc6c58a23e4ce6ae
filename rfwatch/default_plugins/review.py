"""The ``review`` action, and uploads of reviewed images to the Roboflow project.

``review: "review/{name}"`` (or ``{to: ..., on_conflict: rename}``) moves the file like ``move`` and leaves it
waiting for a person (``ctx.hold``). The review page lists it; a label runs the rules again with the
person's class at confidence 1.0, a reject sends it to ``failed:``.

With ``review.upload`` in the config, each labelled image goes to the project through the platform API's
upload and annotate routes (see rfwatch.platform), queued with the decision's step (``file_reviewed``) and
delivered durably: retried with backoff across restarts; a duplicate answer counts as delivered, and the
Roboflow image id is kept for ``rfwatch history``.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from rfwatch.plugin import (
    Config,
    Delivered,
    Delivery,
    Failed,
    FileContext,
    Options,
    Retry,
    Template,
    TemplateError,
    hookimpl,
    platform_client,
    prepare_image,
)
from rfwatch.plugin import platform as platform_api

from .move_copy import EXAMPLE, PlaceAction

KIND = "roboflow-upload"
#: The legacy hosted upload takes bodies up to 5 MB, base64 included: originals up to this size go as they are.
ORIGINAL_LIMIT = 3_600_000
_ORIGINAL_FORMATS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG are sent as they are


class ReviewAction(PlaceAction):
    def __init__(self, options: Any):
        Options(options, short="to", known={"to", "on_conflict"}, example=EXAMPLE.replace("sorted", "review"))
        super().__init__(options, keep_source=False)

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self.destination(ctx)} and wait for a person"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        result = super().__call__(ctx)
        if result["outcome"] in ("moved", "duplicate", "skipped"):
            ctx.hold(f"in {ctx.path.parent}")
        return result


def _upload_payload(ctx: FileContext, decision: dict[str, Any], upload: Any) -> dict[str, Any]:
    """What one delivery needs, taken now: the file may be moved on by the rules that follow."""
    data = ctx.path.read_bytes()
    name = ctx.source.name
    if len(data) > ORIGINAL_LIMIT or not data.startswith(_ORIGINAL_FORMATS):
        data = prepare_image(ctx.path, 2048, 90).jpeg  # a copy under the hosted limit (HEIC, TIFF, 40 MP ...)
        name = ctx.source.stem + ".jpg"
    project = upload.project or ctx.model.split("/")[-2]
    try:
        batch = Template(upload.batch).render_text(ctx.values())
    except TemplateError:
        batch = upload.batch
    return {
        "project": project,
        "name": name,
        "split": upload.split,
        "batch": batch,
        "tags": list(upload.tags),
        "labels": list(decision["classes"]),
        "image": base64.b64encode(data).decode("ascii"),
    }


class Uploader:
    """Delivers reviewed images: upload, then the label; both idempotent, so a retry after a crash is safe."""

    def __init__(self, config: Config):
        self.platform = platform_client(config)

    def __call__(self, delivery: Delivery) -> Any:
        if self.platform is None:
            return Retry("no Roboflow API key in the running config")
        p = delivery.json()
        try:
            uploaded = self.platform.upload(
                p["project"], base64.b64decode(p["image"]), p["name"], p["split"], p["batch"], tuple(p["tags"])
            )
            annotation = self.platform.annotate(p["project"], uploaded.image_id, p["labels"])
        except platform_api.NotFound as exc:
            return Failed(f"project {p['project']!r} not found: {exc}", exc.status)
        except platform_api.PlatformError as exc:
            return Retry(str(exc), exc.status)
        return Delivered(
            200,
            {
                "image_id": uploaded.image_id,
                "duplicate": uploaded.duplicate,
                "annotation": annotation,
                "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )


@hookimpl
def register_actions(register):
    register("review", ReviewAction)


@hookimpl
def register_deliverers(register, config):
    register(KIND, Uploader(config))


@hookimpl
def file_reviewed(ctx: FileContext, decision: dict[str, Any]) -> None:
    upload = ctx.config.review.upload
    if upload is None or decision.get("kind") != "label":
        return
    payload = _upload_payload(ctx, decision, upload)
    ctx.deliver(KIND, payload, target=f"roboflow:{payload['project']}")
