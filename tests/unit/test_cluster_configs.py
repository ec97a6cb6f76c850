"""cluster/: the launcher configs and KubeRay manifests, checked against the real schemas and the rules that make them work.

Schemas: the Ray cluster launcher's (ray/autoscaler/ray-schema.json, shipped in the ray wheel) and KubeRay's CRDs (from
../shared/schemas/kuberay, or $RAYDETECT_SHARED/schemas/kuberay), the latter validated as `kubectl apply --validate=strict`
does: an unknown field is an error. Pure YAML and jsonschema: nothing here imports raydetect or ray.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted(CLUSTER.rglob("*.yaml"))
LAUNCHERS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob-audit.yaml"]
SHARED = Path(os.environ.get("RAYDETECT_SHARED") or ROOT.parent / "shared")
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
TOKEN_AUTH_MIN_RAY = (2, 52)  # RAY_AUTH_MODE=token, and KubeRay's authOptions, need Ray >= 2.52
OFFICIAL_RAY_IMAGE = re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu")
IMAGE_IN_DOCKERFILE = "/home/ray/raydetect"  # where cluster/Dockerfile puts raydetect and jobs/


def ids(path: Path) -> str:
    return path.name


# ---------------------------------------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (kubectl --validate=strict does; PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
        if duplicates:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader subclass


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    found = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}" for e in found]


# -------------------------------------------------------------------------------------------- Ray's launcher schema


@functools.cache
def launcher_validator() -> jsonschema.protocols.Validator:
    spec = importlib.util.find_spec("ray")  # finds the wheel without importing ray
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: its wheel ships the launcher schema (ray/autoscaler/ray-schema.json)")
    schema = json.loads((Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)  # what ray's validate_config uses: jsonschema.validate
    cls.check_schema(schema)
    return cls(schema)


def launcher_errors(doc: dict[str, Any]) -> list[str]:
    """ray.autoscaler._private.util.validate_config: the schema, then its checks on node types."""
    errors = _errors(launcher_validator(), doc)
    types = doc.get("available_node_types", {})
    if doc.get("head_node_type") not in types:
        errors.append("head_node_type must be one of available_node_types")
    if sum(t.get("min_workers", 0) for t in types.values()) > doc.get("max_workers", 0):
        errors.append("max_workers is smaller than the sum of min_workers")
    return errors


# ------------------------------------------------------------------------------------------------ KubeRay's CRDs

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# metadata is `{type: object}` in a CRD (the API server checks ObjectMeta itself): the fields a manifest may set, loosely.
_OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": f"^{_DNS1123_LABEL}(\\.{_DNS1123_LABEL})*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": f"^{_DNS1123_LABEL}$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as `kubectl apply --validate=strict` applies it: unknown fields are errors.

    Structural CRD schemas leave `additionalProperties` out and rely on the API server to treat unlisted fields as
    unknown; jsonschema would let them pass. So every object schema that lists `properties` gets
    `additionalProperties: false`, except where `x-kubernetes-preserve-unknown-fields` keeps unknown fields on purpose.
    `nullable: true` (OpenAPI) becomes a JSON Schema null type. Recurses only through subschema positions, so a field
    that happens to be named "properties" or "type" is not mistaken for a keyword.
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if "not" in out:
        out["not"] = strict(out["not"])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd_schema(kind: str, strict_fields: bool = True) -> dict[str, Any]:
    path = SHARED / "schemas" / "kuberay" / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schema not found at {path} (../shared absent; set RAYDETECT_SHARED)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    if strict_fields:
        schema = strict(schema)
    schema["properties"]["metadata"] = _OBJECT_META
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def crd_errors(doc: dict[str, Any], strict_fields: bool = True) -> list[str]:
    kind = doc.get("kind")
    assert kind in CRD_FILES, f"not a KubeRay kind this test knows: {kind!r}"
    return _errors(jsonschema.Draft7Validator(crd_schema(kind, strict_fields)), doc)


# ------------------------------------------------------------------------------------------------ manifest helpers


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield f"worker group {group['groupName']}", group["template"]["spec"]
    if "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]["spec"]


def containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container the manifest runs: pod containers, and the autoscaler sidecar KubeRay adds to the head pod."""
    for where, pod in pod_specs(doc):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{c['name']}", c
    spec = cluster_spec(doc)
    if spec.get("enableInTreeAutoscaling"):
        yield "autoscaler", spec.get("autoscalerOptions", {})


_QUANTITY = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "4", 24Gi) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match and match[2] in _QUANTITY, f"not a quantity: {value!r}"
    return float(match[1]) * _QUANTITY[match[2]]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def image_is_pinned(image: str) -> bool:
    """A digest, or an explicit tag with a version number in it (not `latest`, not `latest-gpu`, not none)."""
    if re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image):
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and "latest" not in tag and bool(re.search(r"\d+\.\d+", tag))


def dockerfile_base() -> str:
    (base,) = re.findall(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), flags=re.M)
    return base


# ---------------------------------------------------------------------------------------------------- every file


def test_there_are_launcher_and_kuberay_configs() -> None:
    names = {p.relative_to(CLUSTER).as_posix() for p in CONFIGS}
    assert {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-audit.yaml"} <= names
    assert set(LAUNCHERS + KUBERAY) == set(CONFIGS), "a new config in cluster/ must be added to LAUNCHERS or KUBERAY"


def test_strict_loader_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("spec:\n  replicas: 1\n  replicas: 2\n")
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate keys"):
        load(path)


@pytest.mark.parametrize("path", CONFIGS, ids=ids)
def test_entrypoints_exist(path: Path) -> None:
    text = path.read_text()
    for script in re.findall(rf"python (?:{IMAGE_IN_DOCKERFILE}/)?(jobs/\w+\.py)", text):
        assert (ROOT / script).is_file(), script
    for command in re.findall(r"raydetect submit [^\n]*?-- (\w+)", text):
        assert (ROOT / "jobs" / f"{command}.py").is_file(), command
    doc = load(path)
    if doc.get("kind") == "RayJob":
        # The image has no working_dir: the entrypoint names jobs/ where cluster/Dockerfile copies it.
        assert re.search(rf"python {IMAGE_IN_DOCKERFILE}/jobs/\w+\.py", doc["spec"]["entrypoint"])
        assert f"COPY --chown=ray:users jobs {IMAGE_IN_DOCKERFILE}/jobs" in (CLUSTER / "Dockerfile").read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=ids)
def test_no_progress_bar_suppression(path: Path) -> None:
    # RAY_DATA_DISABLE_PROGRESS_BARS hides all progress of an hour-long job; raydetect already logs it every 30 s.
    assert "RAY_DATA_DISABLE_PROGRESS_BARS" not in json.dumps(load(path))


# --------------------------------------------------------------------------------------------- launcher configs


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_config_matches_rays_schema(path: Path) -> None:
    assert launcher_errors(load(path)) == []


@pytest.mark.parametrize(
    "where",
    [(), ("docker",), ("auth",), ("available_node_types", "gpu_worker")],
    ids=lambda w: ".".join(w) or "top-level",
)
@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_schema_rejects_an_invented_field(path: Path, where: tuple[str, ...]) -> None:
    doc = load(path)
    target = doc
    for key in where:
        target = target[key]
    target["invented_field"] = True
    errors = launcher_errors(doc)
    assert errors and all("invented_field" in e for e in errors), errors


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_gpu_workers_private_dashboard_token_auth(path: Path) -> None:
    doc = load(path)
    workers = {k: v for k, v in doc["available_node_types"].items() if k != doc["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert doc["provider"]["type"] in ("aws", "gcp")
    # The dashboard (job server) binds to localhost on the head: reached through an SSH tunnel.
    heads = [c for c in doc["head_start_ray_commands"] if "ray start" in c]
    assert heads and all("--head" in c and "--dashboard-host=127.0.0.1" in c for c in heads)
    for command in heads + [c for c in doc["worker_start_ray_commands"] if "ray start" in c]:
        assert command.startswith("RAY_AUTH_MODE=token "), command
    assert "-e RAY_AUTH_MODE=token" in doc["docker"]["run_options"]
    assert doc["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_image_is_pinned_and_installs_pinned_dependencies(path: Path) -> None:
    doc = load(path)
    docker = doc["docker"]
    images = [docker["image"]] + [docker[k] for k in ("head_image", "worker_image") if k in docker]
    images += [t["docker"]["worker_image"] for t in doc["available_node_types"].values() if "worker_image" in t.get("docker", {})]
    assert all(image_is_pinned(i) for i in images), images
    setup = " && ".join(doc.get("setup_commands", []))
    if docker["image"] == dockerfile_base():  # the Ray image cluster/Dockerfile builds on: install its pins at node start
        assert "pip install -q -r ~/raydetect/cluster/requirements.txt" in setup
        assert re.search(r"pip install [^&]*--no-deps -e ~/raydetect", setup), "raydetect must not pull unpinned dependencies"
    else:  # a build of cluster/Dockerfile: everything is in it already
        version = OFFICIAL_RAY_IMAGE.fullmatch(dockerfile_base())[1]
        assert docker["image"].endswith(f"-ray{version}-py311-gpu"), docker["image"]
        assert "pip install" not in setup, setup


def test_aws_restricts_ssh_with_a_premade_security_group() -> None:
    doc = load(CLUSTER / "aws.yaml")
    # Ray adds SSH from 0.0.0.0/0 to any group it creates (_create_default_ssh_inbound_rules); it creates one for
    # every node type without SecurityGroupIds, and provider.security_group only adds rules to such a group.
    assert "security_group" not in doc["provider"]
    for name, node_type in doc["available_node_types"].items():
        groups = node_type["node_config"].get("SecurityGroupIds")
        assert groups and all(re.fullmatch(r"sg-[0-9a-f]{8,17}", g) for g in groups), name


def test_aws_nodes_have_instance_profiles() -> None:
    doc = load(CLUSTER / "aws.yaml")
    for name, node_type in doc["available_node_types"].items():
        # Workers need their own for s3:// ("Unable to locate credentials"); the head's is set so Ray does not create
        # ray-autoscaler-v1, which may not pass the workers' role.
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert set(profile) in ({"Name"}, {"Arn"}) and all(profile.values()), name
    head = doc["available_node_types"][doc["head_node_type"]]["node_config"]["IamInstanceProfile"]
    assert all(
        t["node_config"]["IamInstanceProfile"] != head
        for k, t in doc["available_node_types"].items()
        if k != doc["head_node_type"]
    )


def test_aws_ami_is_a_current_dlami_not_rays_default() -> None:
    text = (CLUSTER / "aws.yaml").read_text()
    assert "latest_dlami" not in re.sub(r"#.*", "", text)  # Ray's default: Ubuntu 18.04, CUDA 11
    doc = load(CLUSTER / "aws.yaml")
    amis = {t["node_config"]["ImageId"] for t in doc["available_node_types"].values()}
    assert len(amis) == 1, amis
    (ami,) = amis
    ssm = r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-2[2-9]\.04/latest/ami-id(:\d+)?"
    assert re.fullmatch(r"ami-[0-9a-f]{8,17}", ami) or re.fullmatch(ssm, ami), ami
    assert "aws ssm get-parameter" in text, "the comment says how to refresh or pin the AMI"


def test_gcp_gpu_nodes_terminate_on_maintenance_and_wait_for_the_driver() -> None:
    doc = load(CLUSTER / "gcp.yaml")
    gpu_types = {k: t for k, t in doc["available_node_types"].items() if t["node_config"].get("guestAccelerators")}
    assert gpu_types
    for name, node_type in gpu_types.items():
        node = node_type["node_config"]
        # GCE wants an object (ray-project/ray#46248), and GPU VMs cannot live-migrate.
        assert isinstance(node.get("scheduling"), dict), name
        assert node["scheduling"].get("onHostMaintenance") == "TERMINATE", name
        # install-nvidia-driver installs asynchronously; Ray picks the NVIDIA runtime only if nvidia-smi works.
        if {"key": "install-nvidia-driver", "value": "True"} in node.get("metadata", {}).get("items", []):
            commands = node_type.get("initialization_commands", doc.get("initialization_commands", []))
            assert any(re.search(r"until nvidia-smi\b", c) and "timeout" in c for c in commands), name
        # Workers write gs://: the default compute account's scopes allow reads only.
        accounts = node.get("serviceAccounts", [])
        assert accounts and accounts[0]["email"].endswith(".iam.gserviceaccount.com"), name
        assert "https://www.googleapis.com/auth/cloud-platform" in accounts[0]["scopes"], name


# ---------------------------------------------------------------------------------------------- KubeRay manifests


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_manifest_matches_the_crd_strictly(path: Path) -> None:
    assert crd_errors(load(path)) == []


# Where each invented field goes: the top level of the objects a manifest sets, down to a container's resources.
INVENTED = {
    "metadata": lambda doc: doc["metadata"],
    "spec": lambda doc: doc["spec"],
    "cluster spec": cluster_spec,
    "authOptions": lambda doc: cluster_spec(doc)["authOptions"],
    "autoscalerOptions": lambda doc: cluster_spec(doc).setdefault("autoscalerOptions", {}),
    "headGroupSpec": lambda doc: cluster_spec(doc)["headGroupSpec"],
    "worker group": lambda doc: cluster_spec(doc)["workerGroupSpecs"][0],
    "pod template metadata": lambda doc: cluster_spec(doc)["workerGroupSpecs"][0]["template"].setdefault("metadata", {}),
    "pod spec": lambda doc: cluster_spec(doc)["headGroupSpec"]["template"]["spec"],
    "container": lambda doc: cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0],
    "resources": lambda doc: cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"],
    "toleration": lambda doc: cluster_spec(doc)["workerGroupSpecs"][0]["template"]["spec"]["tolerations"][0],
}


@pytest.mark.parametrize("where", INVENTED)
@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_crd_schema_rejects_an_invented_field(path: Path, where: str) -> None:
    doc = load(path)
    INVENTED[where](doc)["inventedField"] = "x"
    errors = crd_errors(doc)
    assert errors and all("inventedField" in e for e in errors), errors


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_crd_schema_as_shipped_lets_an_invented_field_pass(path: Path) -> None:
    """Why strict() exists: without additionalProperties: false, the CRD schema accepts a misspelt field silently."""
    doc = load(path)
    cluster_spec(doc)["enableInTreeAutoscalling"] = True
    assert crd_errors(doc, strict_fields=False) == []
    assert any("enableInTreeAutoscalling" in e for e in crd_errors(doc))


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_private_dashboard_and_token_auth(path: Path) -> None:
    spec = cluster_spec(load(path))
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert spec["authOptions"]["mode"] == "token"
    assert version_tuple(spec["rayVersion"]) >= TOKEN_AUTH_MIN_RAY


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_gpu_workers(path: Path) -> None:
    for group in cluster_spec(load(path))["workerGroupSpecs"]:
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_requests_equal_limits(path: Path) -> None:
    # KubeRay gives Ray the CPU limit as num-cpus: a lower request makes Ray advertise CPUs the pod is not guaranteed.
    seen = []
    for where, c in containers(load(path)):
        resources = c.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for name in ("cpu", "memory"):
            assert name in limits, f"{where}: no {name} limit"
            assert quantity(requests.get(name, limits[name])) == quantity(limits[name]), f"{where}: {name} request != limit"
        seen.append(where)
    assert "autoscaler" in seen and any(w.startswith("head/") for w in seen)


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_pods_have_a_service_account(path: Path) -> None:
    # IRSA (EKS) or Workload Identity (GKE) hang on the ServiceAccount: without one, s3:// and gs:// have no credentials.
    accounts = {where: pod.get("serviceAccountName") for where, pod in pod_specs(load(path))}
    assert all(accounts.values()) and len(set(accounts.values())) == 1, accounts


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_replica_ranges_have_the_autoscaler(path: Path) -> None:
    spec = cluster_spec(load(path))
    for group in spec["workerGroupSpecs"]:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        assert low <= group.get("replicas", low) <= high
        if low != high:
            assert spec.get("enableInTreeAutoscaling") is True, f"{group['groupName']}: min/max replicas do nothing without it"


@pytest.mark.parametrize("path", KUBERAY, ids=ids)
def test_kuberay_images_are_pinned_and_carry_raydetect(path: Path) -> None:
    doc = load(path)
    spec = cluster_spec(doc)
    images = {c["image"] for _, c in containers(doc) if "image" in c}
    assert all(image_is_pinned(i) for i in images), images
    (image,) = images  # one image everywhere: head, workers, submitter (and the autoscaler, which defaults to it)
    # cluster/Dockerfile's build: tagged with the Ray version it is built on, which rayVersion must equal.
    base_version = OFFICIAL_RAY_IMAGE.fullmatch(dockerfile_base())[1]
    assert spec["rayVersion"] == base_version
    assert image.endswith(f"-ray{base_version}-py311-gpu") and not image.startswith("rayproject/"), image
    # Nothing installed per job: no unpinned pip in the runtime environment.
    runtime_env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "") or "{}")
    for package in runtime_env.get("pip", []):
        assert re.search(r"==\S+", package), f"unpinned: {package}"
    assert not {"conda", "uv"} & set(runtime_env)


# ---------------------------------------------------------------------------------------- Dockerfile and versions


def _pyproject_dependencies() -> list[Requirement]:
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), flags=re.S | re.M)
    assert block
    return [Requirement(r) for r in re.findall(r'^\s*"([^"]+)"', block[1], flags=re.M)]


def test_pyproject_requires_a_ray_with_token_auth() -> None:
    (ray,) = [r for r in _pyproject_dependencies() if r.name == "ray"]
    floors = [version_tuple(s.version) for s in ray.specifier if s.operator in (">=", "==", "~=")]
    assert floors and min(floors) >= TOKEN_AUTH_MIN_RAY, str(ray)


def test_requirements_pin_every_pyproject_dependency() -> None:
    pins = {}
    for line in (CLUSTER / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][\w.]*)", line).groups()
            pins[name.lower().replace("_", "-")] = version
    wanted = {r.name.lower().replace("_", "-"): r for r in _pyproject_dependencies() if r.name != "ray"}
    assert set(pins) == set(wanted)
    for name, requirement in wanted.items():
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is not allowed by {requirement}"


def test_dockerfile_builds_on_the_pinned_ray_image_with_pinned_dependencies() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    base = dockerfile_base()
    assert OFFICIAL_RAY_IMAGE.fullmatch(base) and image_is_pinned(base), base
    assert version_tuple(OFFICIAL_RAY_IMAGE.fullmatch(base)[1]) >= TOKEN_AUTH_MIN_RAY
    assert re.search(r"pip install --no-cache-dir -r \S*cluster/requirements.txt", text)
    assert re.search(rf"pip install --no-cache-dir --no-deps {IMAGE_IN_DOCKERFILE}\b", text)
    for source in ("cluster/requirements.txt", "pyproject.toml", "raydetect", "jobs"):
        assert re.search(rf"^COPY .*\b{re.escape(source)}\b", text, flags=re.M), source
        assert (ROOT / source).exists(), source


def test_readme_has_the_running_on_a_cluster_section() -> None:
    readme = (CLUSTER.parent / "docs" / "cluster.md").read_text(encoding="utf-8")
    text = readme[readme.index("## Running on a cluster\n") :]
    end = text.find("\n## ", 1)
    text = text if end < 0 else text[:end]
    for needed in (
        "ray up cluster/aws.yaml",
        "ray up cluster/gcp.yaml",
        "kubectl apply -f cluster/kuberay/raycluster.yaml",
        "kubectl apply -f cluster/kuberay/rayjob-audit.yaml",
        "docker build -f cluster/Dockerfile",
        "docker push",
        "aws ec2 create-security-group",
        "aws iam create-instance-profile",
        "kubectl create serviceaccount raydetect",
        "kubectl create secret generic raydetect-auth-token",
        "ray get-auth-token --generate",
    ):
        assert needed in text, needed
