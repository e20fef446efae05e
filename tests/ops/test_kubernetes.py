"""deploy/kubernetes without a cluster: schemas, the rendered overlay, and what must hold between.

No cluster runs here. The kustomize output is rendered in Python (``_render``: resources,
components, namespace, images, strategic-merge patches merging lists by ``name``, JSON 6902
patches: all the manifests use); where ``kubectl`` is on the PATH its own ``kubectl kustomize``
must give the same objects. Every object is validated against Kubernetes' OpenAPI schemas for
``KUBERNETES_VERSION`` (kubernetes-validate, strict: unknown fields refused), KEDA's objects
and the PodMonitor against their CRDs vendored in ``tests/ops/schemas/`` (unknown fields refused
too, as the API server's strict field validation does), and the invariants of issue 24 are
asserted on the rendered objects.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bridge import __version__
from bridge.config.loader import load_config
from bridge.ownership.strategy import WORKER_EXIT_EXTRA_S
from bridge.telemetry.setup import SHUTDOWN_TIMEOUT_S

ROOT: Final = Path(__file__).resolve().parents[2]
KUBE: Final = ROOT / "deploy" / "kubernetes"
BASE: Final = KUBE / "base"
OVERLAY: Final = KUBE / "overlays" / "example"
SCHEMAS: Final = Path(__file__).parent / "schemas"
# The Kubernetes version the manifests are validated for (docs/kubernetes.md names it).
KUBERNETES_VERSION: Final = "1.33.0"
# The image's user (Dockerfile: useradd --uid 10001, USER 10001:10001).
IMAGE_UID: Final = 10001
# Trigger metadata the redis-streams scaler reads (KEDA v2.20.2,
# pkg/scalers/redis_streams_scaler.go and redis_scaler.go): a misspelt key would be ignored.
REDIS_STREAMS_METADATA: Final = frozenset(
    {
        "address",
        "addresses",
        "host",
        "hosts",
        "port",
        "ports",
        "username",
        "password",
        "stream",
        "consumerGroup",
        "lagCount",
        "activationLagCount",
        "pendingEntriesCount",
        "streamLength",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
    }
)
# Kinds that are not namespaced (kustomize's namespace transformer leaves them alone).
CLUSTER_KINDS: Final = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})

Obj = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------


def _load_all(path: Path) -> list[Obj]:
    """Every document of a YAML file, as independent objects (anchors copied, not shared)."""
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return copy.deepcopy(docs)


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as the manifests use it: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and not base and isinstance(patch, dict):
        return copy.deepcopy(patch)
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    )
    if named:
        # As kustomize (kyaml) merges: the patch's items first, in its order, merged with their
        # namesakes; then the other items of the base, in theirs. So a patch that names one
        # init container moves it first: the overlay lists both, in the order they must run.
        originals = {item["name"]: item for item in base}
        patched = [_merge(originals.get(i["name"], {}), i) for i in patch]
        names = {i["name"] for i in patch}
        return patched + [copy.deepcopy(i) for i in base if i["name"] not in names]
    return copy.deepcopy(patch)


def _json6902(obj: Obj, ops: list[Obj]) -> None:
    """Apply JSON 6902 operations (remove, replace, add) on map paths."""
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        target = obj
        for part in parents:
            target = target[part]
        if op["op"] == "remove":
            del target[last]
        elif op["op"] in ("replace", "add"):
            target[last] = op["value"]
        else:
            raise AssertionError(f"unsupported JSON 6902 op {op['op']!r}")


def _matches(obj: Obj, target: Obj) -> bool:
    """Whether ``obj`` is the kind and name a patch targets (either may be left out)."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    return bool(target.get("kind", kind) == kind and target.get("name", name) == name)


def _render(directory: Path, built: list[Obj] | None = None) -> list[Obj]:
    """Build a kustomization directory into its objects, as kustomize does.

    A component (``built`` given) adds its resources to what was built so far and patches all.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    objects = list(built or [])
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        objects += _render(path) if path.is_dir() else _load_all(path)
    for entry in kustomization.get("components", []):
        objects = _render((directory / entry).resolve(), objects)
    objects = [_apply_patches(o, directory, kustomization) for o in objects]
    return [_transform(o, kustomization) for o in objects]


def _apply_patches(obj: Obj, directory: Path, kustomization: Obj) -> Obj:
    """Apply the kustomization's ``patches`` that target ``obj``."""
    for patch in kustomization.get("patches", []):
        body: Any
        if "path" in patch:
            [body] = _load_all(directory / patch["path"])
        else:
            body = yaml.safe_load(patch["patch"])
        if isinstance(body, list):  # JSON 6902
            if _matches(obj, patch["target"]):
                _json6902(obj, body)
        elif _matches(obj, {"kind": body["kind"], "name": body["metadata"]["name"]}):
            obj = _merge(obj, body)
    return obj


def _transform(obj: Obj, kustomization: Obj) -> Obj:
    """The namespace and images transformers."""
    namespace = kustomization.get("namespace")
    if namespace and obj["kind"] not in CLUSTER_KINDS:
        obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for container in _containers(obj):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return obj


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.fixture(scope="module")
def overlay() -> dict[tuple[str, str], Obj]:
    """The example overlay, rendered, by (kind, name)."""
    return {_key(o): o for o in _render(OVERLAY)}


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], Obj]:
    """The base, rendered, by (kind, name)."""
    return {_key(o): o for o in _render(BASE)}


def _rendered() -> Iterator[tuple[str, dict[tuple[str, str], Obj]]]:
    yield "base", {_key(o): o for o in _render(BASE)}
    yield "overlay", {_key(o): o for o in _render(OVERLAY)}


# --- the renderer against kustomize itself ----------------------------------------------------


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_the_python_render_equals_kubectl_kustomize(directory: Path) -> None:
    """Where kubectl is installed, `kubectl kustomize` builds exactly the objects asserted on."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the Python render alone is checked")
    env = {**os.environ, "KUBECONFIG": os.devnull}  # no cluster: kustomize is offline
    probe = subprocess.run(  # noqa: S603 - kubectl from the PATH
        [kubectl, "kustomize", "--help"], capture_output=True, check=False, timeout=60, env=env
    )
    if probe.returncode != 0:
        pytest.skip(f"this kubectl cannot build kustomizations: {probe.stderr[:200]!r}")
    result = subprocess.run(  # noqa: S603 - kubectl from the PATH on our own directory
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr.decode()
    theirs = {_key(o): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {_key(o): o for o in _render(directory)}
    assert theirs == ours


# --- schemas ----------------------------------------------------------------------------------


def _crd_schema(name: str, version: str) -> Obj:
    [crd] = _load_all(SCHEMAS / name)
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: Obj = _strict(served["schema"]["openAPIV3Schema"])
    return schema


def _strict(schema: Any) -> Any:
    """Refuse unknown fields wherever the schema lists its properties (strict field validation)."""
    if isinstance(schema, dict):
        node = {k: _strict(v) for k, v in schema.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        if (
            "properties" in node
            and "metadata" in node["properties"]
            and "apiVersion" in node["properties"]
        ):
            node["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: not in the CRD
        return node
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


CRD_SCHEMAS: Final = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("keda.sh_scaledobjects.yaml", "v1alpha1"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        "keda.sh_triggerauthentications.yaml",
        "v1alpha1",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("monitoring.coreos.com_podmonitors.yaml", "v1"),
}


def test_every_object_validates_against_its_schema() -> None:
    """Kubernetes objects pass the strict OpenAPI schemas, KEDA's and the PodMonitor their CRDs."""
    kinds = set()
    for _, objects in _rendered():
        for obj in objects.values():
            crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
            if crd is not None:
                jsonschema.validate(obj, _crd_schema(*crd))
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            kinds.add(obj["kind"])
    assert {kind for _, kind in CRD_SCHEMAS} <= kinds  # every vendored schema was used


def test_the_strict_crd_schema_refuses_a_misspelt_field(
    overlay: dict[tuple[str, str], Obj],
) -> None:
    """The KEDA check is not vacuous: a misspelt field of a ScaledObject is refused."""
    bad = copy.deepcopy(overlay[("ScaledObject", "signal-bridge")])
    bad["spec"]["maxReplicasCount"] = bad["spec"].pop("maxReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="maxReplicasCount"):
        jsonschema.validate(bad, _crd_schema("keda.sh_scaledobjects.yaml", "v1alpha1"))


def test_the_kubernetes_schema_refuses_a_misspelt_field(
    overlay: dict[tuple[str, str], Obj],
) -> None:
    """The Kubernetes check is not vacuous: a misspelt Deployment field is refused."""
    bad = copy.deepcopy(overlay[("Deployment", "signal-bridge")])
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


# --- the invariants -----------------------------------------------------------------------------


def _pod(objects: dict[tuple[str, str], Obj]) -> Obj:
    return dict(objects[("Deployment", "signal-bridge")]["spec"]["template"]["spec"])


def _settings(objects: dict[tuple[str, str], Obj]) -> dict[str, str]:
    return dict(objects[("ConfigMap", "signal-bridge")]["data"])


def _bridge_containers(objects: dict[tuple[str, str], Obj]) -> list[Obj]:
    """The containers that run signal-bridge with the settings: `check` and `run`."""
    pod = _pod(objects)
    return [c for c in pod["initContainers"] + pod["containers"] if "args" in c]


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_the_kubelet_waits_longer_than_the_drain(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """TerminationGracePeriodSeconds covers the drain grace, ack flush, lease release, telemetry."""
    grace_s = float(_settings(objects)["BRIDGE_SHUTDOWN_GRACE_SECONDS"])
    needed_s = grace_s + 2 * WORKER_EXIT_EXTRA_S + SHUTDOWN_TIMEOUT_S
    assert _pod(objects)["terminationGracePeriodSeconds"] > needed_s, name


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_every_probe_and_scrape_targets_the_health_port(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """Probes, Service, PodMonitor and NetworkPolicy all name BRIDGE_HEALTH_PORT, on 0.0.0.0."""
    settings = _settings(objects)
    port = int(settings["BRIDGE_HEALTH_PORT"])
    assert settings["BRIDGE_HEALTH_HOST"] == "0.0.0.0", name  # noqa: S104 - a pod's address
    [container] = _pod(objects)["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}

    def resolve(value: int | str) -> int:
        return named[value] if isinstance(value, str) else value

    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {k: resolve(p["port"]) for k, p in probes.items()} == dict.fromkeys(probes, port)
    assert probes["startupProbe"]["path"] == probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    [service_port] = objects[("Service", "signal-bridge-metrics")]["spec"]["ports"]
    assert resolve(service_port["targetPort"]) == port
    [ingress] = objects[("NetworkPolicy", "signal-bridge")]["spec"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [port]
    monitor = objects.get(("PodMonitor", "signal-bridge"))
    if monitor is not None:
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert (resolve(endpoint["port"]), endpoint["path"]) == (port, "/metrics")


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_each_pod_names_its_consumer_and_all_share_the_producer_id(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """BRIDGE_CONSUMER is the pod's name (downward API); PRODUCER_ID one value for all pods."""
    settings = _settings(objects)
    assert "BRIDGE_CONSUMER" not in settings
    assert settings["PRODUCER_ID"], name
    for container in _bridge_containers(objects):
        env = {e["name"]: e for e in container["env"]}
        assert env["BRIDGE_CONSUMER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert "PRODUCER_ID" not in env, container["name"]
        assert container["envFrom"] == [{"configMapRef": {"name": "signal-bridge"}}]


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_the_check_container_runs_with_the_settings_of_run(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """The init container `check` sees the same image, settings, secrets and key id as `run`."""
    check, run = _bridge_containers(objects)
    assert (check["args"], run["args"]) == (["check"], ["run"])
    for field in ("image", "env", "envFrom"):
        assert check[field] == run[field], field
    secret_mounts = [m for m in run["volumeMounts"] if m["name"] == "secrets"]
    assert check["volumeMounts"] == secret_mounts


def _secret_source_modes(pod: Obj) -> dict[str, int]:
    """File name in the secret-source volume -> its mode as the kubelet writes it."""
    [volume] = [v for v in pod["volumes"] if v["name"] == "secret-source"]
    projected = volume["projected"]
    modes = {}
    for source in projected["sources"]:
        for item in source["secret"]["items"]:
            modes[item["path"]] = item.get("mode", projected["defaultMode"])
    return modes


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_the_secrets_are_readable_by_the_image_user_and_no_one_else(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """Secret volume files (root's) reach uid 10001 through fsGroup only; its copies are 0400."""
    pod = _pod(objects)
    security = pod["securityContext"]
    assert security["runAsUser"] == IMAGE_UID == _dockerfile_uid()
    assert security["runAsNonRoot"] is True
    for path, mode in _secret_source_modes(pod).items():
        # A secret volume's files belong to root; with fsGroup the group is fsGroup, which the
        # pod's processes are in, and the kubelet adds group read: the group bit is the way in.
        assert mode & stat.S_IRGRP, f"{path}: {mode:o}"
        assert security["fsGroup"] == security["runAsGroup"], path
        assert not mode & (stat.S_IWGRP | stat.S_IXGRP | 0o007), f"{path}: {mode:o}"
    # The copy runs first, then `check`, which reads the copies.
    assert [c["name"] for c in pod["initContainers"]] == ["install-secrets", "check"]
    for container in pod["initContainers"] + pod["containers"]:
        assert "runAsUser" not in container.get("securityContext", {}), container["name"]
    settings = _settings(objects)
    [install] = [c for c in pod["initContainers"] if c["name"] == "install-secrets"]
    [mount] = [m for m in install["volumeMounts"] if m["name"] == "secrets"]
    for variable in ("HMAC_PRODUCER_SECRET_FILE", "BRIDGE_REDIS_PASSWORD_FILE"):
        secret_file = Path(settings[variable])
        assert str(secret_file.parent) == mount["mountPath"], variable
        assert secret_file.name in _secret_source_modes(pod), variable


def test_the_secret_copy_is_0400_and_the_bridge_reads_it_without_a_warning(
    overlay: dict[tuple[str, str], Obj], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The install-secrets command, run for real, leaves 0400 copies that load with no WARNING."""
    pod = _pod(overlay)
    [install] = [c for c in pod["initContainers"] if c["name"] == "install-secrets"]
    source, target = tmp_path / "secret-source", tmp_path / "secrets"
    source.mkdir()
    target.mkdir()
    for file_name, mode in _secret_source_modes(pod).items():
        (source / file_name).write_text(f"{file_name}-value-0123456789abcdef\n")
        (source / file_name).chmod(mode)
    command = install["command"][-1]
    command = command.replace("/run/secrets/signal-bridge", shlex.quote(str(target)))
    command = command.replace("/secret-source", shlex.quote(str(source)))
    for _ in range(2):  # a restarted pod runs it again over its earlier copies
        subprocess.run(["sh", "-c", command], check=True, timeout=30)  # noqa: S603, S607
    for file_name in _secret_source_modes(pod):
        copied = target / file_name
        assert stat.S_IMODE(copied.stat().st_mode) == 0o400, file_name
        assert copied.read_text() == (source / file_name).read_text()
    env = _settings(overlay) | {"BRIDGE_CONSUMER": "signal-bridge-7d9f8c6b5-x2x4k"}
    [run] = pod["containers"]
    env |= {e["name"]: e["value"] for e in run["env"] if "value" in e}
    for variable in ("HMAC_PRODUCER_SECRET_FILE", "BRIDGE_REDIS_PASSWORD_FILE"):
        env[variable] = str(target / Path(env[variable]).name)
    with caplog.at_level(logging.WARNING):
        config = load_config(env=env)
    assert not [r for r in caplog.records if "readable by group or others" in r.getMessage()]
    assert config.stream.consumer == "signal-bridge-7d9f8c6b5-x2x4k"
    assert config.outbound.producer_id == "desk-eu-signal-bridge"
    assert config.outbound.key_id == "eu-2026-12"
    assert config.stream.ordering == "strict"


def test_the_hmac_key_id_and_its_secret_change_together(
    overlay: dict[tuple[str, str], Obj],
) -> None:
    """The key id every container signs with names the Secret the pod mounts the key from."""
    pod = _pod(overlay)
    ids = {
        e["value"]
        for c in _bridge_containers(overlay)
        for e in c["env"]
        if e["name"] == "HMAC_PRODUCER_KEY_ID"
    }
    [volume] = [v for v in pod["volumes"] if v["name"] == "secret-source"]
    hmac_secrets = [
        s["secret"]["name"]
        for s in volume["projected"]["sources"]
        if any(i["path"] == "hmac_secret" for i in s["secret"]["items"])
    ]
    [key_id] = ids
    assert hmac_secrets == [f"signal-bridge-hmac-{key_id}"]


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_every_container_is_locked_down(name: str, objects: dict[tuple[str, str], Obj]) -> None:
    """Non-root, read-only root, no privilege escalation or capabilities, seccomp RuntimeDefault."""
    pod = _pod(objects)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert set(container["resources"]) == {"requests", "limits"}, container["name"]


@pytest.mark.parametrize(("name", "objects"), list(_rendered()))
def test_the_image_tag_is_the_project_version(
    name: str, objects: dict[tuple[str, str], Obj]
) -> None:
    """Every container runs the image tagged with the version in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["version"] == __version__
    images = {c["image"] for c in _pod(objects)["initContainers"] + _pod(objects)["containers"]}
    assert len(images) == 1, images
    assert images.pop().rsplit(":", 1)[1] == __version__


def test_keda_scales_on_each_shards_lag_within_the_shard_count(
    overlay: dict[tuple[str, str], Obj],
) -> None:
    """One lagCount trigger per shard on our group; replicas at most the shards; slow cooldown."""
    settings = _settings(overlay)
    shards = settings["BRIDGE_STREAMS"].split(",")
    scaled = overlay[("ScaledObject", "signal-bridge")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "signal-bridge"
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= len(shards)
    triggers = scaled["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == shards
    redis_url = urlsplit(settings["BRIDGE_REDIS_URL"])
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        # KEDA watches the Redis (and database) the bridge reads.
        assert metadata["address"] == f"{redis_url.hostname}:{redis_url.port}"
        assert int(metadata.get("databaseIndex", "0")) == int(redis_url.path.strip("/") or 0)
        assert set(metadata) <= REDIS_STREAMS_METADATA, set(metadata) - REDIS_STREAMS_METADATA
        assert metadata["consumerGroup"] == settings["BRIDGE_GROUP"]
        assert int(metadata["lagCount"]) > 0  # lagCount mode, not pendingEntriesCount
        assert "pendingEntriesCount" not in metadata
        assert trigger["authenticationRef"]["name"] in {
            name for kind, name in overlay if kind == "TriggerAuthentication"
        }
    lease_ttl_s = int(settings["BRIDGE_LEASE_TTL_MS"]) / 1000
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert scaled["cooldownPeriod"] > lease_ttl_s
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > lease_ttl_s
    # KEDA owns the replica count: an apply must not reset it.
    assert "replicas" not in overlay[("Deployment", "signal-bridge")]["spec"]


def test_the_settings_pass_the_bridge_config_loader(
    base: dict[tuple[str, str], Obj], tmp_path: Path
) -> None:
    """The base ConfigMap, a pod name and stub secret files load as a strict-mode config."""
    secret = tmp_path / "secret"
    secret.write_text("s" * 64)
    secret.chmod(0o400)
    env = _settings(base) | {"BRIDGE_CONSUMER": "signal-bridge-abc", "HMAC_PRODUCER_KEY_ID": "k1"}
    env["HMAC_PRODUCER_SECRET_FILE"] = env["BRIDGE_REDIS_PASSWORD_FILE"] = str(secret)
    config = load_config(env=env)
    assert config.stream.stream_names() == env["BRIDGE_STREAMS"].split(",")
    assert config.telemetry.health_port == int(env["BRIDGE_HEALTH_PORT"])
    assert config.stream.consumer_expire_s == 3600


def test_the_disruption_budget_lets_one_pod_go_and_unready_ones_too(
    base: dict[tuple[str, str], Obj],
) -> None:
    """A drain takes one replica at a time, and an outage's unready pods do not block it."""
    budget = base[("PodDisruptionBudget", "signal-bridge")]["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    deployment = base[("Deployment", "signal-bridge")]
    assert budget["selector"] == deployment["spec"]["selector"]


def _dockerfile_uid() -> int:
    """The uid the Dockerfile's USER line runs as."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    [user] = re.findall(r"^USER (\d+)", text, flags=re.MULTILINE)
    return int(user)
