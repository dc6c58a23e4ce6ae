"""The service units work as copied: each example config, loaded as the unit runs it, reads its key from the unit's
credential and writes only where the unit lets it (ReadWritePaths=, StateDirectory=); ``systemd-analyze verify``
finds nothing wrong in the units."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from rfwatch.config import load_config
from rfwatch.host.templates import Template

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"

#: (unit file, the example config for it, the instance name it is written for)
UNITS = [("rfwatch.service", "config.yaml", None), ("rfwatch@.service", "example.yaml", "example")]


def service_settings(unit: Path, instance: str | None) -> dict[str, list[str]]:
    """The [Service] section's settings, every value of a repeated key kept, with %i expanded as systemd does."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            if instance is not None:
                value = value.replace("%i", instance)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def inside(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def written_paths(cfg) -> dict[str, PurePosixPath]:
    """Every place the config makes rfwatch write, by the key that names it."""
    out = {"state": PurePosixPath(cfg.state_path).parent, "failed": PurePosixPath(cfg.failed)}
    for i, w in enumerate(cfg.watch):
        out[f"watch[{i}].path"] = PurePosixPath(w.path)
    for name, path in cfg.roots:
        out[f"roots.{name}"] = PurePosixPath(path)
    for rule in cfg.rules:
        for action in rule.then:
            assert action.name in ("move", "copy", "review"), f"{action.key}: the test knows no {action.name}"
            text = action.options if isinstance(action.options, str) else action.options["to"]
            out[action.key] = PurePosixPath(Template(text).fixed_root)
    return out


@pytest.mark.parametrize("unit_name,config_name,instance", UNITS)
def test_the_example_config_writes_only_where_its_unit_may_and_reads_the_units_credential(
    tmp_path, monkeypatch, unit_name, config_name, instance
):
    settings = service_settings(SYSTEMD / unit_name, instance)
    state_dirs = [PurePosixPath("/var/lib") / d for d in settings["StateDirectory"]]
    writable = [PurePosixPath(p) for v in settings["ReadWritePaths"] for p in v.split()] + state_dirs
    credentials = dict(v.split(":", 1) for v in settings["LoadCredential"])
    assert set(credentials) == {"roboflow"}

    # As the unit runs it: $CREDENTIALS_DIRECTORY holds the credential, $STATE_DIRECTORY is the state folder.
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "roboflow").write_text("key-from-the-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("STATE_DIRECTORY", str(state_dirs[0]))
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    cfg = load_config(SYSTEMD / config_name)
    assert cfg.roboflow.api_key == "key-from-the-credential"
    outside = {key: str(path) for key, path in written_paths(cfg).items() if not inside(path, writable)}
    assert outside == {}, f"{config_name} writes where {unit_name} cannot ({', '.join(map(str, writable))})"
    # The journal is in the unit's own state folder (for the template: the instance's, not a shared one).
    assert inside(PurePosixPath(cfg.state_path), state_dirs)

    # Outside the service (root running `rfwatch check`), the key file is the one the unit loads the credential from.
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    cfg = load_config(SYSTEMD / config_name)
    assert cfg.roboflow.api_key is None or cfg.roboflow.api_key == Path(credentials["roboflow"]).read_text().strip()
    assert credentials["roboflow"] in (cfg.roboflow.api_key_problem or ""), cfg.roboflow.api_key_problem


def test_the_check_catches_a_path_the_unit_cannot_write(tmp_path, monkeypatch):
    """The check above is not blind: the template's example with the shared folder of rfwatch.service fails it."""
    bad = tmp_path / "bad.yaml"
    bad.write_text((SYSTEMD / "example.yaml").read_text().replace("/srv/rfwatch/example/failed", "/srv/rfwatch/failed"))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = service_settings(SYSTEMD / "rfwatch@.service", "example")
    writable = [PurePosixPath(p) for p in settings["ReadWritePaths"]]
    paths = written_paths(load_config(bad))
    assert not inside(paths["failed"], writable) and inside(paths["watch[0].path"], writable)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit_name,instance", [("rfwatch.service", None), ("rfwatch@.service", "example")])
def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path, unit_name, instance):
    name = unit_name.replace("@.", f"@{instance}.") if instance else unit_name
    shutil.copyfile(SYSTEMD / unit_name, tmp_path / unit_name)
    if instance:
        os.symlink(tmp_path / unit_name, tmp_path / name)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    # The unit names the installed rfwatch (/usr/local/bin/rfwatch), which this machine need not have.
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not re.search(r"Command /usr/local/bin/rfwatch is not executable", line)
    ]
    assert lines == [], "\n".join(lines)


def test_the_readme_installs_the_template_as_its_example_says():
    readme = (REPO / "README.md").read_text()
    assert "sudo install -m 0644 systemd/example.yaml /etc/rfwatch/example.yaml" in readme
    assert "/etc/rfwatch/example/roboflow" in readme and "rfwatch@example" in readme
