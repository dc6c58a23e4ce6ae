"""The ``review`` action, and uploads of reviewed images to the Roboflow project.

``review: "review/{name}"`` (or ``{to: ..., on_conflict: rename}``) moves the file like ``move`` and leaves it
waiting for a person (``ctx.hold``). The review page lists it; a label runs the rules again with the
person's class at confidence 1.0, a reject sends it to ``failed:``.

With ``review.upload`` in the config, each labelled image goes to the project through the platform API's
upload and annotate routes (see rfwatch.roboflow.platform), queued with the decision's step (``file_reviewed``) and
delivered durably: retried with backoff across restarts, and the Roboflow image id kept for ``rfwatch history``.
The uploader follows the platform as it answers (see :class:`Uploader`): the label that reaches the project is
always the person's last one, on one image.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

from rfwatch.default_plugins.move_copy import EXAMPLE, PlaceAction
from rfwatch.plugin import (
    UPLOAD_KIND,
    Delivered,
    Delivery,
    Failed,
    FileContext,
    Retry,
    Template,
    TemplateError,
    crash_point,
    declare_crash_points,
    hookimpl,
    platform_client,
)

if TYPE_CHECKING:
    from rfwatch.plugin import PlatformClient

log = logging.getLogger(__name__)

declare_crash_points(
    {"review.uploaded": "a reviewed image uploaded and its image id kept, its label not yet sent"},
)

KIND = UPLOAD_KIND  # rfwatch's retry --uploads and the review page's take-back know it
#: 4xx answers that may pass: a key being fixed (401/403), a timeout (408), a rate limit (429).
_WORTH_RETRYING = frozenset({401, 403, 408, 429})
#: How long after its upload an image the annotate route answers 404 for is waited for: the platform has answered
#: 404 "Image not found in dataset." to an annotate sent 0.5 s after a successful upload, and the same call worked
#: "after several minutes" (luxonis/oak-examples#287). Chosen: 10 minutes, then a failure that says so.
ANNOTATE_WAIT = 600.0
#: The longest pause between two annotate attempts while waiting (pauses grow with the time waited: 1, 2, 4 ... s).
_ANNOTATE_PAUSE = 60.0
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
    from rfwatch.plugin import prepare_image  # Pillow: only for an image that is not sent as it is

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
    """Delivers reviewed images: the upload, then the label, as the platform really answers.

    - The image id the upload returns is kept (``delivery.keep``) before the label is sent: a retry, a crash or a
      restart from then on sends the label only, never the image again.
    - A 404 from annotate in the first ``annotate_wait`` seconds after the upload means "not yet" (oak-examples#287):
      tried again with growing pauses, then a failure that names the project and the image id.
    - An upload answered "duplicate" is an image the project has already, perhaps labelled (the same photo
      reviewed again): the label goes with ``overwrite=true`` and replaces the old one, as roboflow-python does
      for classification projects.
    - "Already annotated" (409, or 400 with or without its hint): delivered if this delivery had sent this label
      before (an answer lost to a crash or a timeout); otherwise the label is sent again with ``overwrite=true``,
      so the person's label is the one the project keeps.
    """

    def __init__(self, config: Any):
        self.config = config
        self._platform: PlatformClient | None | bool = False  # False: not made yet
        self.annotate_wait = ANNOTATE_WAIT

    @property
    def platform(self) -> PlatformClient | None:
        """The platform client, made on the first delivery: loading the plugin (``rfwatch status``) needs no HTTP."""
        if self._platform is False:
            self._platform = platform_client(self.config)
        return self._platform  # type: ignore[return-value]

    def __call__(self, delivery: Delivery) -> Any:
        from rfwatch.plugin import NotFound, PlatformError  # requests comes with them: on the first delivery only

        if self.platform is None:
            return Retry("no Roboflow API key in the running config")
        p = delivery.json()
        project, labels = p["project"], list(p["labels"])
        state = dict(delivery.state or {})
        step = "upload"
        try:
            if not state.get("image_id"):
                uploaded = self.platform.upload(
                    project, base64.b64decode(p["image"]), p["name"], p["split"], p["batch"], tuple(p["tags"])
                )
                state = {"image_id": uploaded.image_id, "duplicate": uploaded.duplicate, "uploaded_at": time.time()}
                delivery.keep(state)  # committed before the label is sent: the image is never sent twice
                crash_point("review.uploaded")
            step = "annotate"
            annotation = self._annotate(self.platform, delivery, project, labels, state)
        except NotFound as exc:
            if step == "upload":
                return Failed(f"project {project!r} not found: {exc}", exc.status)
            return self._not_yet(project, labels, state, exc)
        except PlatformError as exc:
            where = f"project {project!r}" + (f", image {state['image_id']}" if state.get("image_id") else "")
            if exc.status is not None and 400 <= exc.status < 500 and exc.status not in _WORTH_RETRYING:
                # The platform refused this image or label for good (a 400 for a format or a class name it
                # will not take): sending it again would be refused again, forever.
                return Failed(f"{where}: {exc}", exc.status)
            return Retry(f"{where}: {exc}", exc.status)  # no answer, 5xx, or a key that may be put right
        return Delivered(
            200,
            {
                "image_id": state["image_id"],
                "duplicate": bool(state.get("duplicate")),
                "annotation": annotation,
                "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.get("uploaded_at"))),
            },
        )

    @staticmethod
    def _annotate(
        platform: PlatformClient,
        delivery: Delivery,
        project: str,
        labels: list[str],
        state: dict[str, Any],
    ) -> str:
        """Send the label; what reached the project: "annotated", "annotated with overwrite" or "already annotated"."""
        image_id = state["image_id"]
        if state.get("duplicate"):
            # The project had these bytes already: its label (if any) is an older decision's, or someone else's.
            platform.annotate(project, image_id, labels, overwrite=True)
            return "annotated with overwrite"
        sent_before = state.get("sent")
        if sent_before != labels:
            state["sent"] = labels
            delivery.keep(state)  # an answer lost after this (a crash, a timeout) is recognised on the next try
        if platform.annotate(project, image_id, labels) == "annotated":
            return "annotated"
        if sent_before == labels:
            return "already annotated"  # ours: an earlier attempt's label arrived, its answer did not
        # A label rfwatch did not send (or not this one): the person's decision replaces it.
        platform.annotate(project, image_id, labels, overwrite=True)
        return "annotated with overwrite"

    def _not_yet(self, project: str, labels: list[str], state: dict[str, Any], exc: Exception) -> Any:
        """The annotate route does not know the uploaded image: wait for it (a while), then fail clearly."""
        image_id = state["image_id"]
        waited = max(0.0, time.time() - float(state.get("uploaded_at") or 0.0))
        left = self.annotate_wait - waited
        if left <= 0:
            return Failed(
                f"project {project!r}: image {image_id} was uploaded, but the annotate route still answered 404 "
                f"{waited:.0f} s after the upload ({exc}): the image is in the project without its label "
                f"{','.join(labels)!r}; `rfwatch retry --uploads` sends it again",
                404,
            )
        pause = min(_ANNOTATE_PAUSE, max(1.0, waited), left)  # pauses double with the time waited; one at the end
        return Retry(f"project {project!r}: image {image_id} not yet known to the annotate route ({exc})", 404, pause)


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
    from rfwatch.plugin import ImageError

    try:
        payload = _upload_payload(ctx, decision, upload)
    except (OSError, ImageError) as exc:  # the file is gone, or cannot be read as an image
        log.error("%s: not uploaded to Roboflow: %s", ctx.path, exc)
        return
    ctx.deliver(KIND, payload, target=f"roboflow:{payload['project']}")
