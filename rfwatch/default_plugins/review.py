"""The ``review`` action, and uploads of reviewed images to the Roboflow project.

``review: "review/{name}"`` (or ``{to: ..., on_conflict: rename}``) moves the file like ``move`` and leaves it
waiting for a person (``ctx.hold``). The review page lists it; a label runs the rules again with the
person's class at confidence 1.0, a reject sends it to ``failed:``.

With ``review.upload`` in the config, each labelled image goes to the project through the platform API's
upload and annotate routes (see rfwatch.roboflow.platform), queued with the decision's step (``file_reviewed``) and
delivered durably: retried with backoff across restarts; a duplicate answer counts as delivered, and the
Roboflow image id is kept for ``rfwatch history``.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from rfwatch.default_plugins.move_copy import EXAMPLE, PlaceAction
from rfwatch.plugin import (
    Config,
    Delivered,
    Delivery,
    Failed,
    FileContext,
    ImageError,
    Retry,
    Template,
    TemplateError,
    hookimpl,
    platform_client,
    prepare_image,
)
from rfwatch.plugin import platform as platform_api

log = logging.getLogger(__name__)

KIND = "roboflow-upload"
#: 4xx answers that may pass: a key being fixed (401/403), a timeout (408), a rate limit (429).
_WORTH_RETRYING = frozenset({401, 403, 408, 429})
#: The legacy hosted upload takes bodies up to 5 MB, base64 included: originals up to this size go as they are.
ORIGINAL_LIMIT = 3_600_000
_ORIGINAL_FORMATS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG are sent as they are


class ReviewAction(PlaceAction):
    keep_source = False
    example = EXAMPLE.replace("sorted", "review")

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self.destination(ctx)} and wait for a person"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        if ctx.model_prediction is not None:
            # A person labelled it already: sending it back to review would ask them again, for ever (a review
            # rule that a label at confidence 1.0 still matches). It stays where it is.
            log.warning("%s: labelled in review already; a review rule matched again: left where it is", ctx.path)
            return {"outcome": "skipped", "reason": "labelled in review already"}
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
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in _WORTH_RETRYING:
                # The platform refused this image or label for good (a 400 for a format or a class name it
                # will not take): sending it again would be refused again, forever.
                return Failed(str(exc), exc.status)
            return Retry(str(exc), exc.status)  # no answer, 5xx, or a key that may be put right
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
    try:
        payload = _upload_payload(ctx, decision, upload)
    except (OSError, ImageError) as exc:  # the file is gone, or cannot be read as an image
        log.error("%s: not uploaded to Roboflow: %s", ctx.path, exc)
        return
    ctx.deliver(KIND, payload, target=f"roboflow:{payload['project']}")
