"""One description of the Roboflow account that both stand-ins share.

``RoboflowServer`` (the inference server, ``rfwatch/testing/roboflow_server.py``) and ``PlatformServer`` (api.roboflow.com,
``rfwatch/testing/platform_server.py``) read the same ``Catalog``: which API keys are valid, which workspace they open, and
which projects and versions exist. A test that builds its own catalog and hands it to both servers gets an account
that is consistent on both sides, as the real one is.

Where the shapes come from:
- Preprocessing dicts are stored the way the platform gives them: roboflow/roboflow-python ``tests/__init__.py``
  (commit 25e85e25) returns ``"preprocessing": {"resize": {"height": "416", "enabled": True, "width": "416",
  "format": "Stretch to"}, "auto-orient": {"enabled": True}}`` (width and height are strings) and
  ``"preprocessing": {}`` for a version without any.
- The static-crop shape (``x_min``.. ``y_max`` as percentages, ``enabled``) is the docstring of
  roboflow/inference ``inference/core/utils/preprocess.py``; the numbers are ints there, so they stay ints here.
- Resize formats are the platform's strings listed on docs.roboflow.com/datasets/dataset-versions/image-preprocessing
  ("Stretch to", "Fit (black edges) in", ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VALID_KEY = "test-key-0123456789"


def resize(width: int, height: int, fmt: str = "Stretch to") -> dict[str, Any]:
    """A platform ``resize`` entry; width and height are strings as in roboflow-python's fixture."""
    return {"width": str(width), "height": str(height), "format": fmt, "enabled": True}


def static_crop(x_min: int, y_min: int, x_max: int, y_max: int) -> dict[str, Any]:
    """A platform ``static-crop`` entry in percent of the image (inference/core/utils/preprocess.py)."""
    return {"enabled": True, "x_min": x_min, "y_min": y_min, "x_max": x_max, "y_max": y_max}


AUTO_ORIENT: dict[str, Any] = {"enabled": True}


@dataclass
class Project:
    name: str  # the project slug, as in a model id "name/version"
    #: The platform's project ``type``; a multi-label project is "classification" too, with ``"multilabel": true``
    #: beside it (roboflow-python core/project.py; see rfwatch/testing/platform_server.py).
    type: str = "classification"
    multi_label: bool = False
    classes: list[str] = field(default_factory=list)  # in class_id order
    # version number -> preprocessing dict as the platform gives it; by default one version with none recorded
    versions: dict[int, dict[str, Any]] = field(default_factory=lambda: {1: {}})
    active_learning: bool = False  # the project has an Active Learning configuration on the platform

    def preprocessing(self, version: int) -> dict[str, Any] | None:
        return self.versions.get(version)


def default_projects() -> list[Project]:
    rgb = ["red", "green", "blue"]
    return [
        Project(
            name="colors",
            classes=list(rgb),
            versions={
                1: {},  # no preprocessing recorded: the resize is unknown
                2: {"resize": resize(224, 224), "auto-orient": dict(AUTO_ORIENT)},
                3: {"static-crop": static_crop(25, 25, 75, 75), "resize": resize(320, 320, "Fit (black edges) in")},
            },
        ),
        Project(
            name="tags",
            classes=list(rgb),
            multi_label=True,
            versions={1: {"resize": resize(224, 224)}, 2: {"resize": resize(224, 224)}},
        ),
    ]


@dataclass
class Catalog:
    workspace: str = "acme"
    keys: set[str] = field(default_factory=lambda: {VALID_KEY})
    # Accepts a list of Project (convenient in tests) or a dict keyed by slug; stored as a dict.
    projects: dict[str, Project] | Iterable[Project] = field(default_factory=default_projects)

    def __post_init__(self) -> None:
        if not isinstance(self.projects, dict):
            self.projects = {p.name: p for p in self.projects}

    def add(self, project: Project) -> Project:
        self.projects[project.name] = project  # type: ignore[index]
        return project

    def project(self, name: str) -> Project | None:
        return self.projects.get(name)  # type: ignore[union-attr]

    def model(self, project: str, version: str | int) -> tuple[Project, dict[str, Any]] | None:
        """The project and the version's preprocessing for a model id ``project/version``, or None if unknown."""
        found = self.project(project)
        try:
            number = int(version)
        except (TypeError, ValueError):
            return None
        if found is None or number not in found.versions:
            return None
        return found, found.versions[number]
