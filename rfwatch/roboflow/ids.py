"""Names for Roboflow things that the config and the light commands need without an HTTP stack.

``ModelId`` and the default URLs live here, not in ``client``/``platform``, so that loading a config (``status``,
``history``, ``retry``) does not import requests (issue 23, item 1). Both modules re-export them.
"""

from __future__ import annotations

from rfwatch.record import record

__all__ = ["DEFAULT_API_URL", "DEFAULT_PLATFORM_URL", "ModelId"]

DEFAULT_API_URL = "https://classify.roboflow.com"
DEFAULT_PLATFORM_URL = "https://api.roboflow.com"


@record
class ModelId:
    """A model version as the API names it: project and version (a workspace when given)."""

    project: str
    version: str
    #: Named in ``workspace/project/version``; else the key's own workspace (asked of the platform API).
    workspace: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelId:
        """Accept ``project/version`` or ``workspace/project/version`` (as the official client does)."""
        parts = [p for p in str(text).strip().strip("/").split("/")]
        workspace = parts.pop(0) if len(parts) == 3 else None
        if len(parts) != 2 or not all(parts) or not parts[1].isdigit() or workspace == "":
            raise ValueError(f"expected 'project/version' such as 'my-project/3', got {text!r}")
        return cls(parts[0], parts[1], workspace)

    def __str__(self) -> str:
        # The inference route is /{project}/{version}: the workspace is the key's.
        return f"{self.project}/{self.version}"

    @property
    def key(self) -> str:
        """The model as configured, workspace included when it was named (model facts are kept by this)."""
        return f"{self.workspace}/{self}" if self.workspace else str(self)


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))
