"""Static validation of the batch overlays (deploy/k8s/overlays/job, deploy/k8s/overlays/jobset) and of the
resource requests deploy/README.md states, offline.

- Both overlays render with `kubectl kustomize`. The Job overlay passes `kubernetes-validate --strict`
  against Kubernetes 1.33 (the oldest release the overlay is for: successPolicy and backoffLimitPerIndex
  are GA there) and the newest schema it bundles. The JobSet passes the JobSet v1alpha2 API's types
  (tests/deploy/jobset_api.py), and each of its Job templates, as the Job the JobSet controller makes of
  it, kubernetes-validate --strict against 1.33. A misspelt field in either overlay fails.
- What the manifests mean is checked against the job they run: the completions against `workers`, the
  tolerated failures against the code's s_max, the exit codes podFailurePolicy fails on against the ones
  the CLI documents, the DNS name the workers dial against the pods' hostnames and subdomain.
The container test of the Job overlay is tests/docker/test_k8s_pods.py.
"""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexgc.common.codes import parse_code
from flexgc.common.config import MASTER_OPTIONS, WORKER_OPTIONS, resolve

from .jobset_api import jobset_errors
from .test_static import DEPLOY, _explain, _kubernetes_validate, _ok, _render, _yaml_documents

K8S = DEPLOY / "k8s"
BATCH = {"job": K8S / "overlays" / "job", "jobset": K8S / "overlays" / "jobset"}
OLDEST = "1.33.0"  # the oldest Kubernetes the batch overlays are for
# the exit codes that a retry cannot fix (flexgc/cli.py): configuration or refusal, run volume not writable
FATAL_EXIT_CODES = {2, 74}


def _docs(rendered: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in _yaml_documents(rendered)}


def _config_files(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    (data,) = [doc["data"] for (kind, name), doc in docs.items() if kind == "ConfigMap"
               and name.startswith("flexgc-batch-")]
    return dict(data)


def _schema_errors(rendered: str, tmp_path: Path) -> list[str]:
    """Every schema finding for a rendered overlay: Kubernetes kinds by kubernetes-validate --strict (at 1.33
    and the newest bundled), a JobSet by the JobSet API and its Job templates as Jobs (at 1.33)."""
    docs = _yaml_documents(rendered)
    builtin = [doc for doc in docs if doc["kind"] != "JobSet"]
    errors: list[str] = []
    jobs: list[dict[str, Any]] = []
    for jobset in (doc for doc in docs if doc["kind"] == "JobSet"):
        errors += jobset_errors(jobset)
        for rjob in jobset["spec"].get("replicatedJobs") or []:
            template = rjob.get("template") or {}
            jobs.append({"apiVersion": "batch/v1", "kind": "Job",
                         "metadata": {"name": f"{jobset['metadata']['name']}-{rjob.get('name')}-0",
                                      **(template.get("metadata") or {})},
                         "spec": template.get("spec")})
    for version, objects in ((OLDEST, builtin + jobs), (None, builtin)):
        text = "---\n".join(yaml.safe_dump(doc) for doc in objects)
        result = _kubernetes_validate(text, tmp_path, version)
        if not _ok(result):
            errors.append(_explain(result))
    return errors


@pytest.mark.parametrize("name", sorted(BATCH))
def test_batch_overlay_renders_and_passes_its_schemas(name: str, tmp_path: Path) -> None:
    # Execute
    rendered = _render(BATCH[name])
    errors = _schema_errors(rendered, tmp_path)

    # Assert
    assert errors == [], "\n".join(errors)
    kinds = {doc["kind"] for doc in _yaml_documents(rendered)}
    workload = {"job": {"Job", "Service"}, "jobset": {"JobSet"}}[name]
    assert workload | {"ConfigMap", "PersistentVolumeClaim", "Namespace"} == kinds


@pytest.mark.parametrize(("name", "file", "old", "new", "finding"), [
    ("job", "job.yaml", "  backoffLimitPerIndex: 3", "  backofLimitPerIndex: 3", "backofLimitPerIndex"),
    ("job", "job.yaml", "  publishNotReadyAddresses: true", "  publishNotReadyAdresses: true",
     "publishNotReadyAdresses"),
    ("jobset", "jobset.yaml", "  successPolicy:", "  sucessPolicy:", "sucessPolicy"),
    ("jobset", "jobset.yaml", "                    readOnlyRootFilesystem: true",
     "                    readOnlyRootFileSystem: true", "readOnlyRootFileSystem"),
    ("jobset", "jobset.yaml", "    operator: All", "    operator: Every", "Every"),
], ids=["job-spec", "job-service", "jobset-spec", "jobset-pod-template", "jobset-enum"])
def test_a_misspelt_field_fails_validation(tmp_path: Path, name: str, file: str, old: str, new: str,
                                           finding: str) -> None:
    # Prepare: a copy of deploy/k8s with one field misspelt
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    manifest = k8s / "overlays" / name / file
    text = manifest.read_text()
    if old not in text:
        raise AssertionError(f"test out of date: {old!r} is no longer in deploy/k8s/overlays/{name}/{file}")
    manifest.write_text(text.replace(old, new, 1))

    # Execute: kustomize renders it as it is; the schemas must refuse it
    errors = _schema_errors(_render(k8s / "overlays" / name), tmp_path)

    # Assert
    assert errors and finding in "\n".join(errors), errors


def _image_env() -> dict[str, str]:
    """The FLEXGC_* variables deploy/Dockerfile sets with ENV (every container starts with them)."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    env_lines = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(re.findall(r"\b(FLEXGC_[A-Z_]+)=(\S+)", " ".join(env_lines)))


def _pod_env(container: dict[str, Any]) -> dict[str, str]:
    """What a container's FLEXGC_* environment holds on a cluster without the optional token Secret."""
    env = _image_env()
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "0"  # the completion index of the first pod
    return env


def _resolved(options: Any, toml: str, container: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The option values a role's process resolves in the pod: its environment over its config file
    (ConfigError for an unknown key or a bad value, as the process would exit 2)."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    shadowed = sorted(o.name for o in options if o.name in tomllib.loads(toml) and o.env in _pod_env(container))
    assert shadowed == [], f"{shadowed}: set in the config file and in the environment, which wins"
    return resolve(options, {}, _pod_env(container), str(path))


def _s_max(master_toml: dict[str, Any]) -> int:
    return int(parse_code(master_toml["code"], int(master_toml["workers"])).s_max)


def _fail_job_codes(job_spec: dict[str, Any], container: str) -> set[int]:
    rules = job_spec["podFailurePolicy"]["rules"]
    codes = [rule["onExitCodes"] for rule in rules if rule["action"] == "FailJob" and "onExitCodes" in rule]
    assert all(c["operator"] == "In" and c["containerName"] == container for c in codes), codes
    return {value for c in codes for value in c["values"]}


def _ignores_disruptions(job_spec: dict[str, Any]) -> bool:
    return {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in \
        job_spec["podFailurePolicy"]["rules"]


def _role_containers(name: str, docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """role -> the container that runs it."""
    if name == "job":
        (container,) = docs[("Job", "flexgc")]["spec"]["template"]["spec"]["containers"]
        return {"master": container, "worker": container}
    rjobs = docs[("JobSet", "flexgc")]["spec"]["replicatedJobs"]
    (master,), (worker,) = (r["template"]["spec"]["template"]["spec"]["containers"] for r in rjobs)
    return {"master": master, "worker": worker}


@pytest.mark.parametrize("name", sorted(BATCH))
def test_each_role_resolves_valid_options_from_its_file_and_environment(name: str, tmp_path: Path) -> None:
    # Prepare
    docs = _docs(_render(BATCH[name]))
    files = _config_files(docs)
    containers = _role_containers(name, docs)

    # Execute: each role's options as its process resolves them in the pod
    master = _resolved(MASTER_OPTIONS, files["master.toml"], containers["master"], tmp_path)
    worker = _resolved(WORKER_OPTIONS, files["worker.toml"], containers["worker"], tmp_path)

    # Assert: the run directory on the run volume, a finite join timeout (a worker started after the job
    # ends by itself), nobody lingers
    assert master["out"].startswith("/runs/") and master["checkpoint_every"] > 0
    assert worker["join_timeout_s"] > 0 and worker["master"].endswith(":50051")
    assert not master["linger"] and not worker["linger"]


def test_indexed_job_runs_the_master_at_index_0_and_tolerates_s_max_lost_workers() -> None:
    # Prepare
    docs = _docs(_render(BATCH["job"]))
    master_toml = tomllib.loads(_config_files(docs)["master.toml"])
    job, service = docs[("Job", "flexgc")], docs[("Service", "flexgc")]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    script = container["args"][0]
    env = {e["name"]: e for e in container["env"]}
    n = int(master_toml["workers"])

    # Assert: n + 1 indexes at once, complete when index 0 (the master) has succeeded
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == n + 1
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    # retried per index; up to s_max workers may be lost for good
    assert pod["restartPolicy"] == "Never" and spec["podReplacementPolicy"] == "Failed"
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] >= _s_max(master_toml)
    assert _fail_job_codes(spec, container["name"]) == FATAL_EXIT_CODES and _ignores_disruptions(spec)
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    assert pod["terminationGracePeriodSeconds"] >= 30  # the master's checkpoint on SIGTERM
    # the command branches on the completion index, without --linger
    assert container["command"] == ["/bin/bash", "-c"] and "--linger" not in script
    assert "master --config /etc/flexgc/master.toml" in script
    assert 'worker --config /etc/flexgc/worker.toml --slot "$((index - 1))"' in script
    # the workers dial the master by its pod's DNS name: <job>-0.<subdomain>, published before it is ready
    assert env["FLEXGC_MASTER"]["value"] == f"{job['metadata']['name']}-0.{pod['subdomain']}:50051"
    assert service["metadata"]["name"] == pod["subdomain"] and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    # the security settings of the base
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}


def test_jobset_completes_with_the_master_and_retries_workers_per_index() -> None:
    # Prepare
    docs = _docs(_render(BATCH["jobset"]))
    master_toml = tomllib.loads(_config_files(docs)["master.toml"])
    jobset = docs[("JobSet", "flexgc")]
    spec = jobset["spec"]
    rjobs = {r["name"]: r for r in spec["replicatedJobs"]}
    master_job, workers_job = rjobs["master"]["template"]["spec"], rjobs["workers"]["template"]["spec"]
    (master,) = master_job["template"]["spec"]["containers"]
    (worker,) = workers_job["template"]["spec"]["containers"]
    worker_env = {e["name"]: e for e in worker["env"]}
    n = int(master_toml["workers"])

    # Assert: complete when the master is; the master's failures restart the JobSet (it resumes from its
    # checkpoint) unless a retry cannot help
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["master"]}
    assert spec["failurePolicy"]["maxRestarts"] >= 1
    assert {"name": "MasterCannotRun", "action": "FailJobSet", "targetReplicatedJobs": ["master"],
            "onJobFailureReasons": ["PodFailurePolicy"]} in spec["failurePolicy"]["rules"]
    assert rjobs["master"]["replicas"] == 1 and master_job["completions"] == 1 and master_job["backoffLimit"] == 0
    assert _fail_job_codes(master_job, "master") == FATAL_EXIT_CODES and _ignores_disruptions(master_job)
    # n workers, each index retried on its own, up to s_max lost for good
    assert rjobs["workers"]["replicas"] == 1 and workers_job["completionMode"] == "Indexed"
    assert workers_job["completions"] == workers_job["parallelism"] == n
    assert workers_job["backoffLimitPerIndex"] >= 1 and workers_job["maxFailedIndexes"] >= _s_max(master_toml)
    assert _ignores_disruptions(workers_job)
    # names: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>; the slot is the completion index
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert worker_env["FLEXGC_MASTER"]["value"] == f"{jobset['metadata']['name']}-master-0-0.flexgc:50051"
    assert worker_env["FLEXGC_SLOT"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    # each role its own template: only the master mounts the run volume and is probed, no one lingers
    assert {m["mountPath"] for m in master["volumeMounts"]} == {"/etc/flexgc", "/runs", "/tmp"}
    assert {m["mountPath"] for m in worker["volumeMounts"]} == {"/etc/flexgc", "/tmp"}
    assert "readinessProbe" in master and "readinessProbe" not in worker
    assert "--linger" not in master["args"] + worker["args"]


# ----------------------------------------------------------------------------------------- resources

README = DEPLOY / "README.md"
# every kustomization whose pods deploy/README.md counts, by the path it shows
REQUEST_TABLE = {"k8s/base": K8S / "base", "k8s/overlays/example": K8S / "overlays" / "example",
                 "k8s/overlays/shaped": K8S / "overlays" / "shaped", "k8s/overlays/job": BATCH["job"],
                 "k8s/overlays/jobset": BATCH["jobset"]}
_UNITS = {"": 1.0, "m": 1e-3, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}


def _quantity(text: str | int) -> float:
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|)", str(text))
    assert match, f"quantity {text!r}"
    return float(match[1]) * _UNITS[match[2]]


def _pod_templates(doc: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(pods, pod spec) of each pod template of a workload (none for other kinds)."""
    spec = doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [(spec["replicas"], spec["template"]["spec"])]
    if doc["kind"] == "Job":
        return [(spec["parallelism"], spec["template"]["spec"])]
    if doc["kind"] == "JobSet":
        return [(r["replicas"] * r["template"]["spec"]["parallelism"], r["template"]["spec"]["template"]["spec"])
                for r in spec["replicatedJobs"]]
    return []


def _requested(directory: Path) -> tuple[int, float, float]:
    """(pods, CPUs, bytes of memory) requested by everything the kustomization runs."""
    pods, cpu, memory = 0, 0.0, 0.0
    for doc in _yaml_documents(_render(directory)):
        for count, pod in _pod_templates(doc):
            pods += count
            for container in pod["containers"]:
                requests = container["resources"]["requests"]
                cpu += count * _quantity(requests["cpu"])
                memory += count * _quantity(requests["memory"])
    return pods, cpu, memory


def _stated_requests() -> dict[str, tuple[int, float, float]]:
    """deploy/README.md's table: | `k8s/...` | pods | CPUs | GiB |."""
    rows = re.findall(r"^\| `(k8s/[a-z/]+)` \| (\d+) \| ([0-9.]+) \| ([0-9.]+) GiB \|", README.read_text(), re.M)
    return {path: (int(pods), float(cpu), float(gib) * 2**30) for path, pods, cpu, gib in rows}


def test_readme_states_what_each_kustomization_requests() -> None:
    # Execute
    stated = _stated_requests()
    rendered = {path: _requested(directory) for path, directory in REQUEST_TABLE.items()}

    # Assert: the table lists each one, with what it renders to
    assert sorted(stated) == sorted(REQUEST_TABLE)
    for path, (pods, cpu, memory) in rendered.items():
        assert stated[path] == (pods, pytest.approx(cpu), pytest.approx(memory, rel=5e-3)), (path, pods, cpu,
                                                                                              memory / 2**30)


def test_every_kustomization_fits_a_small_cluster() -> None:
    # one node of 2 CPUs and 2 GiB (minikube's default), of which its system pods request about 0.75 CPU
    for path, directory in REQUEST_TABLE.items():
        pods, cpu, memory = _requested(directory)
        assert cpu <= 1.25 and memory <= 1.25 * 2**30, (path, pods, cpu, memory / 2**30)


def test_misspelt_jobset_field_is_named_in_the_finding() -> None:
    # Prepare: the rendered JobSet with a field of the failure policy misspelt
    jobset = copy.deepcopy(_docs(_render(BATCH["jobset"]))[("JobSet", "flexgc")])
    jobset["spec"]["failurePolicy"]["maxRestart"] = jobset["spec"]["failurePolicy"].pop("maxRestarts")

    # Execute
    errors = jobset_errors(jobset)

    # Assert: one line with the path, the field and the fields allowed there
    assert len(errors) == 1 and errors[0].startswith("spec.failurePolicy.maxRestart: unknown field"), errors
    assert "maxRestarts" in errors[0]
