"""docker-compose.yml validates, and its services are wired as documented.

No container engine runs on the project's machines, so this checks the file
with the compose tool's own `config` command (which needs no engine).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    pytest.fail(
        "neither `docker compose` nor `docker-compose` is installed"
        " (.ci/services, which `make test` runs first, installs docker-compose)"
    )


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_compose_cmd(), "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, timeout=60,
                          check=False)


SECRETS = {"POSTGRES_PASSWORD": "pw", "ARTWATCH_WEB__SECRET_KEY": "k", "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk"}


def test_compose_config_validates() -> None:
    proc = _config(SECRETS)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    services = doc["services"]
    expected = {"redis", "postgres", "qdrant", "s3", "s3-bucket", "migrate", "web", "worker-cpu", "worker-gpu",
                "beat", "flower"}
    assert expected <= set(services)
    assert services["qdrant"]["image"].startswith("qdrant/qdrant")
    for name in ("redis", "postgres", "qdrant", "s3", "web", "flower"):
        assert "healthcheck" in services[name], name
    for name in ("web", "worker-cpu", "worker-gpu", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["command"][:3] == ["worker", "--role", "gpu"]
    # Only the GPU worker's image carries torch (the `clip` extra); the others run the plain install.
    assert services["worker-gpu"]["build"]["args"]["EXTRAS"] == "clip"
    for name in ("web", "worker-cpu", "beat", "migrate"):
        assert "EXTRAS" not in (services[name].get("build") or {}).get("args", {}), name
        assert services[name]["image"] != services["worker-gpu"]["image"], name
    assert services["worker-cpu"]["command"][:3] == ["worker", "--role", "cpu"]
    env = services["web"]["environment"]
    assert env["ARTWATCH_BROKER_URL"].startswith("redis://")
    assert env["ARTWATCH_INDEX__BACKEND"] == "server"


def test_compose_services_share_only_the_services() -> None:
    """Blobs go to the S3 service and shared state to the services; no artwatch
    container mounts a volume another one also mounts."""
    services = yaml.safe_load(_config(SECRETS).stdout)["services"]
    assert services["s3"]["image"].startswith("minio/minio:RELEASE."), services["s3"]["image"]
    assert services["s3"]["environment"]["MINIO_ROOT_USER"] == "ak"
    assert services["migrate"]["depends_on"]["s3-bucket"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "web", "worker-cpu", "worker-gpu", "beat", "flower"):
        env = services[name]["environment"]
        assert env["ARTWATCH_BLOBS__KIND"] == "s3", name
        assert env["ARTWATCH_BLOBS__URL"].startswith("s3://"), name
        assert env["ARTWATCH_BLOBS__ENDPOINT_URL"] == "http://s3:9000", name
        assert env["ARTWATCH_SHARED__KIND"] == "services", name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("ak", "sk"), name
        assert not services[name].get("volumes"), (name, services[name].get("volumes"))
    for name in ("web", "worker-cpu", "worker-gpu", "beat"):
        assert services[name]["depends_on"]["s3"]["condition"] == "service_healthy", name


def test_env_example_names_every_required_secret() -> None:
    """.env.example lists each variable compose refuses to start without, with a dummy value."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
                   if line and not line.startswith("#"))
    assert required == set(SECRETS) and required <= set(example), (required, example)
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_secrets(missing: str) -> None:
    env = {k: v for k, v in {**os.environ, **SECRETS}.items() if k != missing}
    proc = subprocess.run([*_compose_cmd(), "-f", str(ROOT / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert proc.returncode != 0
    assert missing in proc.stderr
