"""jobs/clusters/*: Ray's own schema for the launcher YAMLs, the KubeRay CRDs for the manifests,
our CLI parser for every training command they run, the shared-storage rule
(raycifar/cluster/placement.py), and the KubeRay spot group (spot nodes only, the on-demand pod,
grown after the on-demand group by Ray's own autoscaler). Offline and without credentials; a few
seconds.

Each file is checked by one function (`launcher_problems`, `manifest_problems`) that returns
every problem found; the broken variants below go through the same function.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from raycifar.cli.args import config_from_args
from raycifar.cli.train import build_parser
from raycifar.cluster.placement import alive_nodes, check_shared_storage, is_uri
from raycifar.recipe.config import ConfigError, RaycifarError

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "jobs" / "clusters"
# The KubeRay CRDs live beside the repository, not in it; a clean clone (CI) may not have them.
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
TRAIN = "python -m raycifar.train"
README = REPO / "jobs" / "README.md"
DOCKERFILE = CLUSTERS / "Dockerfile"
# Ray Train's worker-group start timeout (ray/train/v2/_internal/constants.py; 60 s by default in
# Ray 2.60) must outlast a GPU node's boot and image pull wherever a Train run is started.
START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
MIN_START_TIMEOUT_S = 600
# Node labels that mark spot capacity: GKE puts the first on every Spot VM node, EKS managed node
# groups the second (value SPOT, ON_DEMAND otherwise) on theirs.
SPOT_LABELS = {"cloud.google.com/gke-spot": "true", "eks.amazonaws.com/capacityType": "SPOT"}
# The most GPU pods a group may grow to: the largest --num-workers these files run. More would
# only let a stray run rent more GPUs.
MAX_GPU_PODS = 4
# A node that pip-installs torch (or this package, which pulls torch in) at boot may get another
# torch/CUDA build than the image's; every node runs the image instead.
PER_NODE_TORCH = re.compile(r"pip3?\s+install\b[^;&|]*?(\btorch\b|torchvision|raycifar|\s-e\s|\s\.(\s|$))")


def ray_pin() -> str:
    """The Ray version pyproject.toml pins (`ray[...]==X`)."""
    m = re.search(r'"ray\[[^\]]*\]==([0-9][0-9.]*)"', (REPO / "pyproject.toml").read_text())
    assert m, "pyproject.toml does not pin ray[...]==X"
    return m.group(1)


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def cluster_files(kind: str) -> list[Path]:
    """Launcher configs have a `provider`; Kubernetes manifests an `apiVersion`."""
    key = "provider" if kind == "launcher" else "apiVersion"
    return sorted(p for p in CLUSTERS.glob("*.yaml") if key in load_docs(p)[0])


def project_image() -> str:
    """The image name jobs/clusters/Dockerfile's build command tags; every node runs it."""
    m = re.search(r"docker build -f jobs/clusters/Dockerfile -t (\S+) \.", DOCKERFILE.read_text())
    assert m, "the Dockerfile does not open with its `docker build ... -t NAME .` command"
    return m.group(1)


LAUNCHERS = cluster_files("launcher")
MANIFESTS = cluster_files("manifest")
ids = lambda p: p.name  # noqa: E731


def test_the_expected_files_exist():
    assert [p.name for p in LAUNCHERS] == ["aws.yaml", "gcp.yaml"]
    assert [p.name for p in MANIFESTS] == ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]
    assert sorted(p.name for p in CLUSTERS.glob("*.yaml")) == sorted(
        p.name for p in LAUNCHERS + MANIFESTS), "a cluster file that no test checks"


# ----------------------------------------------------------------------------- launcher YAMLs

def launcher_problems(config: dict) -> list[str]:
    """Ray's own checks (the ones `ray up` runs before it touches the cloud), then ours."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        return [f"schema: {'.'.join(map(str, e.absolute_path))}: {e.message}"]
    except (ValueError, RuntimeError, AssertionError, KeyError) as e:
        return [f"ray: {e}"]

    problems = []
    types = prepared["available_node_types"]
    for name, t in types.items():
        # Ray itself only checks the sum of min_workers against the global max_workers.
        if t["min_workers"] > t["max_workers"]:
            problems.append(f"{name}: min_workers={t['min_workers']} > "
                            f"max_workers={t['max_workers']}")
    gpu_types = [n for n, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    if not any(types[n]["min_workers"] == 0 and types[n]["max_workers"] >= 1
               for n in gpu_types):
        problems.append("no GPU worker type that scales from 0")
    if types[prepared["head_node_type"]]["resources"].get("GPU"):
        problems.append("the head should be a CPU node")
    docker = prepared.get("docker", {})
    for key in ("image", "head_image", "worker_image"):
        if key in docker and docker[key] != project_image():
            problems.append(f"docker.{key}={docker[key]!r} is not the image built from "
                            f"jobs/clusters/Dockerfile ({project_image()!r})")
    if not docker.get("image") and not (docker.get("head_image") and docker.get("worker_image")):
        problems.append("no docker image: the nodes would run whatever torch they install")
    head = " ".join(prepared["head_start_ray_commands"])
    if "--dashboard-host=127.0.0.1" not in head:
        problems.append("the dashboard must listen on 127.0.0.1 (reach it with `ray dashboard`)")
    # The container's environment reaches every process on the node: `ray start`, job drivers,
    # Tune trials, and `ray exec ... 'ray status'` (which needs RAY_AUTH_MODE=token).
    for node in ("head", "worker"):
        env = container_env(docker.get("run_options", []) + docker.get(f"{node}_run_options", []))
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"the {node} container's environment lacks RAY_AUTH_MODE=token "
                            "(docker.run_options: -e RAY_AUTH_MODE=token)")
        problems += start_timeout_problems(env.get(START_TIMEOUT), f"the {node} container")
    keys = ["initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands"]
    commands = [(k, c) for k in keys for c in prepared.get(k, [])]
    commands += [(f"{n}.worker_setup_commands", c) for n, t in types.items()
                 for c in t.get("worker_setup_commands", [])]
    for key, command in commands:
        if PER_NODE_TORCH.search(command):
            problems.append(f"{key} installs torch on each node ({command!r}); the image has it")
    return problems


def container_env(run_options: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs that `docker run` options (-e/--env) set."""
    tokens = shlex.split(" ".join(run_options))
    env = {}
    for flag, value in zip(tokens, tokens[1:] + [""]):
        if flag in ("-e", "--env") and "=" in value:
            name, _, val = value.partition("=")
            env[name] = val
        elif flag.startswith("--env=") and "=" in flag[6:]:
            name, _, val = flag[6:].partition("=")
            env[name] = val
    return env


def start_timeout_problems(value, where: str) -> list[str]:
    try:
        if float(value) >= MIN_START_TIMEOUT_S:
            return []
    except (TypeError, ValueError):
        pass
    return [f"{where}: {START_TIMEOUT}={value!r}; need >= {MIN_START_TIMEOUT_S} s (Ray's 60 s "
            "default is shorter than a GPU node's boot)"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_config_passes_rays_schema(path):
    assert launcher_problems(load_docs(path)[0]) == []


def _gpu_type(config: dict) -> dict:
    return config["available_node_types"]["gpu_worker"]


LAUNCHER_BREAKAGES = {
    # name: (mutation, a substring of the problem it must cause)
    "typo in a top-level key": (
        lambda c: c.__setitem__("max_worker", c.pop("max_workers")), "max_worker"),
    "typo in a node-type key": (
        lambda c: _gpu_type(c).__setitem__("min_worker", _gpu_type(c).pop("min_workers")),
        "min_worker"),
    "fractional GPU": (lambda c: _gpu_type(c)["resources"].__setitem__("GPU", 0.5), "0.5"),
    "min_workers > max_workers (within the global max)": (
        lambda c: _gpu_type(c).update(min_workers=3, max_workers=2), "min_workers=3"),
    "min_workers > max_workers (above the global max)": (
        lambda c: _gpu_type(c).update(min_workers=5, max_workers=4), "min_workers"),
    "dashboard on every interface": (
        lambda c: c.__setitem__("head_start_ray_commands", [
            s.replace("127.0.0.1", "0.0.0.0") for s in c["head_start_ray_commands"]]),
        "127.0.0.1"),
    "a stock Ray image (torch installed per node)": (
        lambda c: c["docker"].__setitem__("image", "rayproject/ray:2.60.0-py311-gpu"),
        "docker.image"),
    "pip install torch on every node": (
        lambda c: c.__setitem__("setup_commands", ["pip install torch==2.14.1"]),
        "installs torch"),
    "pip install of this package on every node": (
        lambda c: c.__setitem__("setup_commands", ["pip install --no-cache-dir -e ~/raycifar"]),
        "installs torch"),
    "worker-group start timeout left at Ray's default": (
        lambda c: c["docker"].__setitem__("run_options", [
            o for o in c["docker"]["run_options"] if START_TIMEOUT not in o]),
        START_TIMEOUT),
    "worker-group start timeout too short": (
        lambda c: c["docker"].__setitem__("run_options", [
            f"-e {START_TIMEOUT}=120" if START_TIMEOUT in o else o
            for o in c["docker"]["run_options"]]),
        "'120'"),
    "token auth only in the start commands (`ray exec ... 'ray status'` gets 401)": (
        lambda c: c["docker"].__setitem__("run_options", [
            o for o in c["docker"]["run_options"] if "RAY_AUTH_MODE" not in o]),
        "RAY_AUTH_MODE=token"),
}


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
def test_launcher_autoscaler_adds_on_demand_workers_first(path):
    """jobs/README: spot workers only past gpu_worker's max_workers, or with it at 0."""
    config = load_docs(path)[0]
    assert nodes_to_add(config, 4) == {"gpu_worker": 4}
    _gpu_type(config)["max_workers"] = 0
    assert nodes_to_add(config, 4) == {"gpu_spot_worker": 4}


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids)
@pytest.mark.parametrize("breakage", LAUNCHER_BREAKAGES)
def test_broken_launcher_config_is_rejected(path, breakage):
    mutate, expected = LAUNCHER_BREAKAGES[breakage]
    config = load_docs(path)[0]
    mutate(config)
    problems = launcher_problems(config)
    assert problems and expected in " ".join(problems), problems


# ----------------------------------------------------------------------------- KubeRay

def _strict(schema):
    """Reject unknown fields, as the API server does (it prunes them silently)."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for v in schema.values():
            _strict(v)
    elif isinstance(schema, list):
        for v in schema:
            _strict(v)
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    """The v1 openAPIV3Schema of a KubeRay CRD, made strict; parsed once per file version
    (the YAML is 1-2 MB and slow to parse, so a JSON copy is cached in the temp dir)."""
    path = SCHEMA_DIR / CRD_FILES[kind]
    st = path.stat()
    cache = Path(tempfile.gettempdir()) / f"raycifar-{path.stem}-{st.st_size}-{st.st_mtime_ns}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(schema))
    tmp.replace(cache)
    return schema


def need_crds():
    if not SCHEMA_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {SCHEMA_DIR} (they live outside the repository)")


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_specs(spec: dict):
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for g in spec.get("workerGroupSpecs", []):
        yield g.get("groupName", "?"), g["template"]["spec"]


def _is_whole(q) -> bool:
    return isinstance(q, int) or (isinstance(q, str) and q.isdigit())


def _required_node_terms(pod: dict) -> list[list[dict]]:
    """The matchExpressions of each required node-affinity term (terms are ORed)."""
    affinity = pod.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [term.get("matchExpressions", []) for term in terms.get("nodeSelectorTerms", [])]


def capacity(pod: dict) -> tuple[str, str] | None:
    """("spot", label) for a pod that can land only on spot nodes, ("on-demand", label) for one
    that cannot land on them, None for a pod that may land on either."""
    for key, value in SPOT_LABELS.items():
        if pod.get("nodeSelector", {}).get(key) == value:
            return "spot", key
    terms = _required_node_terms(pod)
    for kind, op, holds in [("spot", "In", lambda vs, v: vs == [v]),
                            ("on-demand", "NotIn", lambda vs, v: v in vs)]:
        for key, value in SPOT_LABELS.items():
            if terms and all(any(e.get("key") == key and e.get("operator") == op
                                 and holds(e.get("values", []), value) for e in term)
                             for term in terms):
                return kind, key
    return None


def _tolerates(pod: dict, key: str, value: str) -> bool:
    return any(t.get("key") == key and t.get("effect", "NoSchedule") == "NoSchedule"
               and (t.get("operator") == "Exists" or t.get("value") == value)
               for t in pod.get("tolerations", []))


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec.get("workerGroupSpecs", [])
            if any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
                   for c in g["template"]["spec"]["containers"])]


def capacity_problems(spec: dict) -> list[str]:
    """Every GPU group lands only on spot nodes or only off them; a spot group runs the same pod
    as the on-demand group (image, env, resources, mounts, volumes), so a run behaves the same on
    either, and keys on the label that the on-demand group keeps off."""
    problems = []
    groups = {"spot": [], "on-demand": []}
    for g in _gpu_groups(spec):
        name, pod = g["groupName"], g["template"]["spec"]
        hi = g.get("maxReplicas")
        if isinstance(hi, int) and hi > MAX_GPU_PODS:
            problems.append(f"group {name}: maxReplicas={hi} > {MAX_GPU_PODS}, the most GPU "
                            "pods a run here asks for")
        found = capacity(pod)
        if found is None:
            problems.append(f"group {name}: may land on spot and on-demand nodes alike (spot: a "
                            f"nodeSelector on one of {sorted(SPOT_LABELS)}; on-demand: a "
                            "required node affinity NotIn its spot value)")
            continue
        kind, key = found
        groups[kind].append((g, key))
        if kind == "spot" and key == "cloud.google.com/gke-spot" and not _tolerates(
                pod, key, SPOT_LABELS[key]):
            problems.append(f"group {name}: does not tolerate {key}=true:NoSchedule, the taint "
                            "GKE spot pools may carry")
    if not groups["spot"]:
        problems.append("no spot worker group (a GPU group whose nodeSelector requires "
                        f"one of {sorted(SPOT_LABELS)})")
    if not groups["on-demand"]:
        problems.append("no on-demand worker group (a GPU group kept off spot nodes)")
    for spot, spot_key in groups["spot"]:
        s_pod = spot["template"]["spec"]
        for ondemand, od_key in groups["on-demand"]:
            o_pod = ondemand["template"]["spec"]
            where = f"group {spot['groupName']}"
            if spot_key != od_key:
                problems.append(f"{where} selects {spot_key} but group {ondemand['groupName']} "
                                f"keeps off {od_key}: switch both to the same cloud")
            for sc, oc in zip(s_pod["containers"], o_pod["containers"]):
                for field in sorted(set(sc) | set(oc)):
                    if sc.get(field) != oc.get(field):
                        problems.append(f"{where}: {sc.get('name')}.{field} differs from group "
                                        f"{ondemand['groupName']}'s")
            if len(s_pod["containers"]) != len(o_pod["containers"]):
                problems.append(f"{where}: not the containers of group {ondemand['groupName']}")
            if s_pod.get("volumes") != o_pod.get("volumes"):
                problems.append(f"{where}: volumes differ from group {ondemand['groupName']}'s")
    return problems


def manifest_problems(doc: dict, crds: bool = True) -> list[str]:
    """The CRD schema (strict) where we have it, then the rules the schema cannot express."""
    kind = doc.get("kind")
    if kind == "PersistentVolumeClaim":
        modes = doc.get("spec", {}).get("accessModes", [])
        return [] if "ReadWriteMany" in modes else [f"PVC accessModes={modes}: need ReadWriteMany"]
    if kind not in CRD_FILES:
        return [f"unexpected kind {kind!r}"]
    problems = []
    if crds:
        validator = jsonschema.Draft7Validator(crd_schema(kind))
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            problems.append(f"schema: {'.'.join(map(str, e.absolute_path))}: {e.message}")
        if problems:
            return problems
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion={doc.get('apiVersion')!r}: use ray.io/v1")
    spec = _cluster_spec(doc)
    if spec.get("rayVersion") != ray_pin():
        problems.append(f"rayVersion={spec.get('rayVersion')!r} is not {ray_pin()}")
    if spec.get("authOptions", {}).get("mode") != "token":
        problems.append("authOptions.mode is not token")
    if spec["headGroupSpec"].get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append("the head service must stay ClusterIP (use kubectl port-forward)")
    groups = spec.get("workerGroupSpecs", [])
    for g in groups:
        lo, hi, n = g.get("minReplicas", 0), g.get("maxReplicas"), g.get("replicas", 0)
        if not (isinstance(hi, int) and lo <= hi):
            problems.append(f"group {g['groupName']}: minReplicas={lo} > maxReplicas={hi}")
        elif not lo <= n <= hi:
            problems.append(f"group {g['groupName']}: replicas={n} outside [{lo}, {hi}]")
    if not any(g.get("minReplicas", 0) == 0 for g in groups):
        problems.append("no worker group that scales from 0")
    for name, pod in _pod_specs(spec):
        for c in pod["containers"]:
            if c.get("image") != project_image():
                problems.append(f"{name}/{c['name']}: image {c.get('image')!r} is not the one "
                                f"built from jobs/clusters/Dockerfile ({project_image()!r})")
            # The head runs the driver; GPU pods run Tune trials, each fitting a Train run.
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            problems += start_timeout_problems(env.get(START_TIMEOUT), f"{name}/{c['name']}")
        shm = {v["name"] for v in pod.get("volumes", [])
               if v.get("emptyDir", {}).get("medium") == "Memory"}
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if mounts.get("/dev/shm") not in shm:
                problems.append(f"{name}/{c['name']}: /dev/shm is not a memory-backed emptyDir")
            if not set(mounts.values()) & claims:
                problems.append(f"{name}/{c['name']}: no shared volume for the run folder")
            for part in ("requests", "limits"):
                gpus = c.get("resources", {}).get(part, {}).get("nvidia.com/gpu")
                if gpus is not None and not _is_whole(gpus):
                    problems.append(f"{name}/{c['name']}: {part} nvidia.com/gpu={gpus!r} "
                                    "must be a whole number")
    if not any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
               for _, pod in list(_pod_specs(spec))[1:] for c in pod["containers"]):
        problems.append("no GPU worker group")
    problems += capacity_problems(spec)
    return problems


@pytest.mark.parametrize("path", MANIFESTS, ids=ids)
def test_kuberay_manifest_passes_the_crd(path):
    need_crds()
    assert [p for d in load_docs(path) for p in manifest_problems(d)] == []


@pytest.mark.parametrize("path", MANIFESTS, ids=ids)
def test_kuberay_manifest_rules_without_the_crd(path):
    """What does not need the CRDs runs on a clean clone too."""
    assert [p for d in load_docs(path) for p in manifest_problems(d, crds=False)] == []


def _ray(docs: list[dict]) -> dict:
    (doc,) = [d for d in docs if d["kind"] in CRD_FILES]
    return doc


def _gpu_group(doc: dict) -> dict:
    return _cluster_spec(doc)["workerGroupSpecs"][0]


def _gpu_container(doc: dict) -> dict:
    return _gpu_group(doc)["template"]["spec"]["containers"][0]


def _spot_group(doc: dict) -> dict:
    return _cluster_spec(doc)["workerGroupSpecs"][1]


def _spot_pod(doc: dict) -> dict:
    return _spot_group(doc)["template"]["spec"]


def _spot_container(doc: dict) -> dict:
    return _spot_pod(doc)["containers"][0]


def _to_eks(doc: dict) -> None:
    """The switch the manifests' comments describe: EKS managed node groups' label instead."""
    _spot_pod(doc)["nodeSelector"] = {"eks.amazonaws.com/capacityType": "SPOT"}
    ((expr,),) = _required_node_terms(_gpu_group(doc)["template"]["spec"])
    expr.update(key="eks.amazonaws.com/capacityType", values=["SPOT"])


def _head_container(doc: dict) -> dict:
    return _cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]


MANIFEST_BREAKAGES = {
    # name: (mutation, a substring of the problem, needs the CRD schema)
    "typo in a group key": (
        lambda d: _gpu_group(d).__setitem__("maxReplica", _gpu_group(d).pop("maxReplicas")),
        "maxReplica", True),
    "typo in a pod key": (
        lambda d: _gpu_container(d).__setitem__("volumeMount",
                                                _gpu_container(d).pop("volumeMounts")),
        "volumeMount", True),
    "rayStartParams value not a string": (
        lambda d: _gpu_group(d)["rayStartParams"].__setitem__("num-gpus", 1), "num-gpus", True),
    "fractional GPU (number)": (
        lambda d: _gpu_container(d)["resources"]["limits"].__setitem__("nvidia.com/gpu", 0.5),
        "0.5", False),
    "fractional GPU (quantity string)": (
        lambda d: _gpu_container(d)["resources"]["limits"].__setitem__("nvidia.com/gpu", "0.5"),
        "whole number", False),
    "minReplicas > maxReplicas": (
        lambda d: _gpu_group(d).update(minReplicas=5, maxReplicas=4), "minReplicas=5", False),
    "/dev/shm on disk": (
        lambda d: [v["emptyDir"].pop("medium") for v in
                   _gpu_group(d)["template"]["spec"]["volumes"] if "emptyDir" in v],
        "/dev/shm", False),
    "another Ray version": (
        lambda d: _cluster_spec(d).__setitem__("rayVersion", "2.9.0"), "rayVersion", False),
    "worker-group start timeout missing where the driver runs": (
        lambda d: _head_container(d).__setitem__("env", [
            e for e in _head_container(d)["env"] if e["name"] != START_TIMEOUT]),
        f"head/ray-head: {START_TIMEOUT}=None", False),
    "worker-group start timeout too short": (
        lambda d: [e.__setitem__("value", "60") for e in _gpu_container(d)["env"]
                   if e["name"] == START_TIMEOUT], "'60'", False),
    "a stock Ray image": (
        lambda d: _gpu_container(d).__setitem__("image", "rayproject/ray:2.60.0-py311-gpu"),
        "image 'rayproject/ray", False),
    "authOptions field unknown to the CRD": (
        lambda d: _cluster_spec(d)["authOptions"].__setitem__("secretRef", "x"),
        "secretRef", True),
    "no spot group": (
        lambda d: _cluster_spec(d)["workerGroupSpecs"].pop(1), "no spot worker group", False),
    "spot group that may land on on-demand nodes": (
        lambda d: _spot_pod(d).pop("nodeSelector"), "group cheap-spot: may land on", False),
    "on-demand group that may land on spot nodes": (
        lambda d: _gpu_group(d)["template"]["spec"].pop("affinity"), "group gpu: may land on",
        False),
    "half a switch to EKS (the on-demand group still keys on GKE's label)": (
        lambda d: _spot_pod(d).__setitem__("nodeSelector",
                                           {"eks.amazonaws.com/capacityType": "SPOT"}),
        "switch both", False),
    "spot group without GKE's spot toleration": (
        lambda d: _spot_pod(d).__setitem__("tolerations", _spot_pod(d)["tolerations"][:1]),
        "cloud.google.com/gke-spot=true:NoSchedule", False),
    "spot group on another image": (
        lambda d: _spot_container(d).__setitem__("image", "my-registry.example.com/raycifar:0.0.9"),
        "ray-worker.image differs", False),
    "spot group without the start timeout": (
        lambda d: _spot_container(d).__setitem__("env", _spot_container(d)["env"][:1]),
        "ray-worker.env differs", False),
    "spot group with its own volumes": (
        lambda d: _spot_pod(d)["volumes"].pop(0), "volumes differ", False),
    "spot group growing past the largest run": (
        lambda d: _spot_group(d).__setitem__("maxReplicas", 40), "maxReplicas=40 > 4", False),
    "typo in the spot group's nodeSelector key": (
        lambda d: _spot_pod(d).__setitem__("nodeSelecter", _spot_pod(d).pop("nodeSelector")),
        "nodeSelecter", True),
    "head exposed as a LoadBalancer": (
        lambda d: _cluster_spec(d)["headGroupSpec"].__setitem__("serviceType", "LoadBalancer"),
        "ClusterIP", False),
}


@pytest.mark.parametrize("path", MANIFESTS, ids=ids)
@pytest.mark.parametrize("breakage", MANIFEST_BREAKAGES)
def test_broken_kuberay_manifest_is_rejected(path, breakage):
    mutate, expected, crds = MANIFEST_BREAKAGES[breakage]
    if crds:
        need_crds()
    doc = _ray(load_docs(path))
    mutate(doc)
    problems = manifest_problems(doc, crds=crds and SCHEMA_DIR.is_dir())
    assert problems and expected in " ".join(problems), problems


@pytest.mark.parametrize("path", MANIFESTS, ids=ids)
def test_spot_group_lands_on_spot_only_and_runs_the_on_demand_pod(path):
    doc = _ray(load_docs(path))
    assert [capacity(g["template"]["spec"]) for g in _gpu_groups(_cluster_spec(doc))] == [
        ("on-demand", "cloud.google.com/gke-spot"), ("spot", "cloud.google.com/gke-spot")]
    assert _spot_group(doc)["minReplicas"] == 0 and _spot_group(doc)["maxReplicas"] == 4
    assert _spot_pod(doc)["containers"] == _gpu_group(doc)["template"]["spec"]["containers"]
    # The EKS switch that the comments describe passes too (the CRD included).
    _to_eks(doc)
    assert manifest_problems(doc, crds=SCHEMA_DIR.is_dir()) == []
    assert capacity(_spot_pod(doc)) == ("spot", "eks.amazonaws.com/capacityType")
    text = path.read_text()
    assert "eks.amazonaws.com/capacityType: SPOT" in text  # the spot group's comment
    assert 'key eks.amazonaws.com/capacityType, values ["SPOT"]' in text  # the on-demand group's


def nodes_to_add(config: dict, workers: int) -> dict[str, int]:
    """The nodes per type that Ray's autoscaler (v1: the launcher's, and KubeRay's default; Ray
    2.60's private helpers) adds to an empty cluster for `workers` Train workers of 2 CPUs and
    1 GPU each."""
    from ray.autoscaler._private.node_provider_availability_tracker import (
        NodeAvailabilitySummary)
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer, get_nodes_for)

    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary({}))
    plan, _ = get_nodes_for(config["available_node_types"], {}, config["head_node_type"],
                            config["max_workers"], [{"CPU": 2, "GPU": 1}] * workers, scorer)
    return dict(plan)


def autoscaler_plan(doc: dict, workers: int, **max_replicas: int) -> dict[str, int]:
    """`nodes_to_add` for a KubeRay manifest, with some groups' maxReplicas changed."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr)

    spec = copy.deepcopy(_cluster_spec(doc))
    for g in spec["workerGroupSpecs"]:
        g["maxReplicas"] = max_replicas.get(g["groupName"].replace("-", "_"), g["maxReplicas"])
    return nodes_to_add(_derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "raycifar", "namespace": "default"}, "spec": spec}), workers)


@pytest.mark.parametrize("path", MANIFESTS, ids=ids)
def test_autoscaler_grows_the_on_demand_group_first(path):
    """What the header promises: with both groups open a run gets on-demand pods and spot pods
    only past `gpu`'s maxReplicas; `gpu`'s maxReplicas at 0 trains on spot only."""
    doc = _ray(load_docs(path))
    assert autoscaler_plan(doc, 4) == {"gpu": 4}
    assert autoscaler_plan(doc, 6) == {"gpu": 4, "cheap-spot": 2}
    assert autoscaler_plan(doc, 4, gpu=0) == {"cheap-spot": 4}
    assert autoscaler_plan(doc, 4, cheap_spot=0) == {"gpu": 4}
    # Why the spot group's name sorts before `gpu`: between groups that both fit, Ray takes
    # the name that sorts last, so a `gpu-spot` group would get the fixed-size run.
    _spot_group(doc)["groupName"] = "gpu-spot"
    assert autoscaler_plan(doc, 4) == {"gpu-spot": 4}


def test_pvc_must_be_read_write_many():
    assert manifest_problems({"kind": "PersistentVolumeClaim",
                              "spec": {"accessModes": ["ReadWriteOnce"]}})


def test_manifests_state_the_kuberay_release_they_need():
    """`authOptions.secretName` is new in KubeRay 1.6.0; 1.5.x drops it and makes its own token."""
    for path in MANIFESTS:
        uses = any(_cluster_spec(d).get("authOptions", {}).get("secretName")
                   for d in load_docs(path) if d.get("kind") in CRD_FILES)
        assert uses and "KubeRay >= 1.6.0" in path.read_text(), path.name
    text = README.read_text()
    assert "1.6.0" in text and "1.5.1" not in text


def dockerfile_problems(text: str) -> list[str]:
    """Ray as pyproject.toml pins it, and one CUDA 12 torch build installed before the package
    (so `pip install .` keeps it instead of fetching PyPI's CUDA 13 wheels, driver >= 580)."""
    problems = []
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    if not (base and base.group(1).startswith(f"rayproject/ray:{ray_pin()}-")):
        problems.append(f"FROM {base and base.group(1)!r} is not Ray {ray_pin()}")
    index = re.search(r"^ARG TORCH_INDEX=(\S+)", text, re.M)
    if not (index and re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d+/?", index.group(1))):
        problems.append(f"TORCH_INDEX={index and index.group(1)!r} is not a CUDA 12 torch index")
    runs = [r for r in re.findall(r"^RUN\s+((?:.*\\\n)*.*)$", text, re.M)]
    torch_at = [i for i, r in enumerate(runs) if '--index-url "$TORCH_INDEX"' in r and "torch" in r]
    package_at = [i for i, r in enumerate(runs) if re.search(r"pip install [^\n]*\s\.(\s|$)", r)]
    if not torch_at or not package_at or torch_at[0] > package_at[0]:
        problems.append("torch is not installed from TORCH_INDEX before `pip install .`")
    return problems


def test_dockerfile_pins_ray_and_a_cuda12_torch():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []
    assert project_image() == "my-registry.example.com/raycifar:0.1.0"


@pytest.mark.parametrize("old,new,expected", [
    (f":{ray_pin()}-py311-gpu", ":2.9.0-py311-gpu", "FROM"),
    ("whl/cu126", "whl/cu130", "CUDA 12"),
    ('--index-url "$TORCH_INDEX" ', "", "before `pip install .`"),
])
def test_broken_dockerfile_is_rejected(old, new, expected):
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert problems and expected in " ".join(problems), problems


# ----------------------------------------------------------------------------- training commands

def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _fenced(text: str) -> str:
    """The lines inside Markdown code fences."""
    return "\n".join(block for i, block in enumerate(re.split(r"^```.*$", text, flags=re.M))
                     if i % 2 == 1)


def training_commands(path: Path) -> list[list[str]]:
    """Every `python -m raycifar.train ...` in a file, as argv after the module name: from a
    YAML file's comments and string values (e.g. an entrypoint), or a Markdown file's code
    blocks; `\\` continuations joined."""
    text = path.read_text()
    if path.suffix == ".md":
        return _commands_in(_fenced(text).replace("\\\n", " ").splitlines())
    comments = "\n".join(line.strip()[1:].strip() for line in text.splitlines()
                         if line.strip().startswith("#"))
    lines = comments.replace("\\\n", " ").splitlines()
    lines += [line for doc in load_docs(path) for s in _strings(doc) for line in s.splitlines()]
    return _commands_in(lines)


def _commands_in(lines: list[str]) -> list[list[str]]:
    commands = []
    for line in lines:
        for rest in line.split(TRAIN)[1:]:
            lex = shlex.shlex(rest, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            argv = []
            for token in lex:  # stop at the end of the command: ; && | ) ...
                if set(token) <= set(lex.punctuation_chars):
                    break
                argv.append(token)
            commands.append(argv)
    return commands


ALL_FILES = LAUNCHERS + MANIFESTS + [README]


def test_commands_are_found():
    found = {p.name: len(training_commands(p)) for p in ALL_FILES}
    assert all(found.values()), found
    # The RayJob's entrypoint (a string value, not a comment) is found too.
    assert training_commands(CLUSTERS / "kuberay-rayjob.yaml")[-1][:1] == ["--use-gpu"]
    assert training_commands(README)[0][-2:] == ["--name", "aws-4xa10g"]


def test_no_command_passes_address_auto():
    """The driver joins RAY_ADDRESS (set for every `ray job submit` job) or the node's `ray
    start` cluster by itself; `--address auto` is not needed anywhere."""
    pattern = re.compile(r"--address[ =]+['\"]?auto\b")
    for path in [*CLUSTERS.iterdir(), README]:
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)]
        assert not hits, f"{path.name}: {hits}"


def _parse(argv: list[str]):
    """build_parser().parse_args, failing the test (not exiting) on a rejected command."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI rejects: {TRAIN} {shlex.join(argv)}")


@pytest.mark.parametrize("path", ALL_FILES, ids=ids)
def test_training_commands_are_accepted_by_the_cli(path):
    for argv in training_commands(path):
        args = _parse(argv)
        cfg = config_from_args(args)  # values valid together (e.g. a batch for every worker)
        assert args.address is None, "the driver joins the cluster by itself: no --address"
        assert cfg.use_gpu is True, "the cluster starts without GPU nodes: pass --use-gpu"
        # A multi-node run with the storage these files use is accepted by the storage rule.
        check_shared_storage(cfg.storage_path, [{"Alive": True}] * 3,
                             shared=getattr(args, "shared_storage", False))


def test_a_bad_command_would_be_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--num-wrkers", "4"])
    with pytest.raises(ConfigError, match="cannot give each of num_workers=3 an image"):
        config_from_args(build_parser().parse_args(["--num-workers", "3", "--batch-size", "2"]))
    assert training_commands(CLUSTERS / "aws.yaml")[0][-2:] == ["--name", "aws-4xa10g"]


# -------------------------------------------------------------------- raycifar.cluster.placement

NODES = [{"Alive": True}, {"Alive": True}, {"Alive": False}]


@pytest.mark.parametrize("path", ["s3://b/runs", "gs://b/runs", "abfss://c@a.dfs.core.windows.net/r",
                                  "S3://B/runs"])
def test_uris_are_shared(path):
    assert is_uri(path)
    check_shared_storage(path, NODES)


@pytest.mark.parametrize("path", ["/home/u/runs", "file:///mnt/runs", "runs", "", "://x"])
def test_local_paths_are_not_uris(path):
    assert not is_uri(path)


def test_local_path_on_one_node_is_fine():
    assert alive_nodes([{"Alive": True}, {"Alive": False}, {}]) == 1
    check_shared_storage("/home/u/runs", [{"Alive": True}, {"Alive": False}])
    check_shared_storage("/home/u/runs", [])


def test_local_path_on_many_nodes_is_refused_in_one_line():
    with pytest.raises(RaycifarError) as e:
        check_shared_storage("/home/u/runs", NODES)
    assert str(e.value) == (
        "storage_path='/home/u/runs' is a local folder but the run spans 2 nodes, so each node "
        "would keep its own partial run folder; use a bucket (--storage-path s3://BUCKET/runs "
        "or gs://BUCKET/runs) or, if that folder is on storage every node mounts at the same "
        "path (NFS, a ReadWriteMany volume), add --shared-storage")
    with pytest.raises(RaycifarError, match="spans 2 nodes"):
        check_shared_storage("file:///mnt/runs", NODES)


def test_declared_shared_path_is_accepted():
    check_shared_storage("/mnt/runs", NODES, shared=True)


def test_expected_nodes_covers_a_cluster_that_has_not_grown_yet():
    head_only = [{"Alive": True}]
    check_shared_storage("/home/u/runs", head_only, expected_nodes=0)
    with pytest.raises(RaycifarError, match="spans 2 nodes"):
        check_shared_storage("/home/u/runs", head_only, expected_nodes=2)
    check_shared_storage("s3://b/runs", head_only, expected_nodes=5)


def test_an_error_raised_in_a_ray_task_comes_back_as_its_one_line_message():
    from ray.exceptions import RayTaskError

    from raycifar.cluster.placement import user_error
    from raycifar.recipe.lr_finder import RangeTestError

    plain = RangeTestError("the loss never fell during the range test")
    # what Tune hands back for a trial that raised it: a RayTaskError that is also a
    # RangeTestError, whose message is the remote traceback
    remote = RayTaskError("train", "Traceback (most recent call last):\n  File \"x.py\"\n"
                          "    raise RangeTestError(...)\n", plain).as_instanceof_cause()
    assert isinstance(remote, RangeTestError) and "raise RangeTestError" in str(remote)
    assert user_error(remote) is plain
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = remote
    assert str(user_error(wrapped)) == "the loss never fell during the range test"
    assert user_error(RuntimeError("not ours")) is None
