"""`rfwatch classify` and `rfwatch model` without a config go where ROBOFLOW_API_URL, ROBOFLOW_MODEL and
ROBOFLOW_PLATFORM_URL say (the README's quick start exports them), not to classify.roboflow.com."""

from __future__ import annotations

import json

from helpers import run_cli, unique_jpeg


def test_classify_without_a_config_uses_the_environment(tmp_path, server, platform):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(unique_jpeg((220, 20, 20), 1, size=(1000, 800)))
    env = {"ROBOFLOW_API_URL": server.url, "ROBOFLOW_MODEL": "colors/2", "ROBOFLOW_PLATFORM_URL": platform.url}
    result = run_cli("classify", str(photo), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top"] == "red"
    (sent,) = server.inference_requests()
    assert sent.path == "/colors/2"  # the model from ROBOFLOW_MODEL, at ROBOFLOW_API_URL
    # The platform at ROBOFLOW_PLATFORM_URL said colors/2 takes 224x224: the upload was sized to it, not 1000 px.
    assert sent.image is not None and min(sent.image.size) == 224, sent.image.size
    assert any(r.path == "/acme/colors/2" for r in platform.requests)

    # A flag still beats the environment.
    server.reset()
    result = run_cli("classify", "--model", "colors/3", str(photo), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r.path for r in server.inference_requests()] == ["/colors/3"]


def test_model_without_a_config_uses_the_environment(tmp_path, server, platform):
    env = {"ROBOFLOW_MODEL": "colors/2", "ROBOFLOW_PLATFORM_URL": platform.url}
    result = run_cli("model", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["model"] == "colors/2" and facts["classes"] == ["red", "green", "blue"]
    assert f"asked {platform.url}" in facts["how"]


def test_a_bad_value_in_the_environment_names_the_variable(tmp_path, server):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(unique_jpeg((220, 20, 20), 1))
    result = run_cli(
        "classify", str(photo), env={"ROBOFLOW_API_URL": "localhost:9001", "ROBOFLOW_MODEL": "colors/1"}, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "roboflow.api_url (from $ROBOFLOW_API_URL): expected an http:// or https:// URL" in result.stderr
    result = run_cli("model", env={"ROBOFLOW_MODEL": "colors"}, cwd=tmp_path)
    assert result.returncode == 2 and "roboflow.model (from $ROBOFLOW_MODEL):" in result.stderr
