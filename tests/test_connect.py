"""Which cluster a driver joins (no Ray started here: `ray.init` is recorded, not run), the
private Ray surface it reads, and how many search trials a cluster can place."""

from __future__ import annotations

import pytest

from raycifar.cluster import connect, ray_compat
from raycifar.cluster.placement import trial_concurrency as search_concurrency
from raycifar.recipe.config import RaycifarError

from conftest import tiny_train_config


@pytest.fixture
def no_cluster(monkeypatch):
    """Nothing to join unless a test says so: no RAY_ADDRESS, no `ray start` on this node."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: None)


@pytest.fixture
def recorded_init(monkeypatch, no_cluster):
    """`ray.init` calls, recorded instead of made; SIGTERM left as pytest has it."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(connect, "_sigterm_like_ctrl_c", lambda: None)
    monkeypatch.setattr(connect, "_connected", None)  # what this process joined: nothing yet
    return calls


def test_the_address_flag_wins(monkeypatch, no_cluster):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: "10.0.0.3:6379")
    assert connect.cluster_to_join("10.0.0.1:6379") == "10.0.0.1:6379"


def test_without_the_flag_ray_address_wins(monkeypatch, no_cluster):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # what every `ray job submit` job has
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: "10.0.0.3:6379")
    assert connect.cluster_to_join(None) == "10.0.0.2:6379"


def test_then_the_cluster_ray_start_runs_on_this_node(monkeypatch, no_cluster):
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: "10.0.0.3:6379")
    assert connect.cluster_to_join(None) == "10.0.0.3:6379"


def test_with_none_of_them_a_local_ray_starts(no_cluster):
    assert connect.cluster_to_join(None) is None


def test_a_dashboard_address_is_a_clear_error(monkeypatch, no_cluster):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # set for `ray job` commands
    with pytest.raises(RaycifarError, match="dashboard address.*--address auto"):
        connect.cluster_to_join(None)


def test_joining_passes_the_address_and_nothing_else(recorded_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert connect.init_ray(None) is True
    assert recorded_init == [{"address": "10.0.0.2:6379"}]  # no resources, no private args


def test_the_ray_start_cluster_is_joined_as_ray_finds_it(recorded_init, monkeypatch):
    """As "auto": Ray 2.60 enables token auth only for a cluster it found itself."""
    monkeypatch.setattr(ray_compat, "started_cluster_address", lambda: "10.0.0.3:6379")
    assert connect.init_ray(None) is True
    assert connect.init_ray("10.0.0.1:6379") is True
    assert recorded_init == [{"address": "auto"}, {"address": "10.0.0.1:6379"}]


def test_a_local_ray_gets_its_own_port_and_tells_its_jobs(recorded_init, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert connect.init_ray("local") is False
    (kw,) = recorded_init
    assert kw["address"] == "local" and "resources" not in kw  # new, whatever RAY_ADDRESS says
    port = kw["runtime_env"]["env_vars"]["RAY_ADDRESS"].rsplit(":", 1)[1]
    assert port.isdigit()  # the placement-group cleaner of its jobs looks up this cluster


def test_a_later_call_reuses_the_ray_it_joined_and_leaves_it_for_another(recorded_init,
                                                                       monkeypatch):
    """A notebook's second fit: the same cluster is reused, another one is joined instead
    (ours shut down first), and a Ray the user connected is used as it is."""
    import ray

    up, shutdowns = [False], []
    monkeypatch.setattr(ray, "is_initialized", lambda: up[0])
    monkeypatch.setattr(ray, "init", lambda **kw: (recorded_init.append(kw), up.__setitem__(0, 1)))
    monkeypatch.setattr(ray, "shutdown", lambda: (shutdowns.append(1), up.__setitem__(0, 0)))
    assert connect.init_ray("local") is False and connect.init_ray("local") is False
    assert len(recorded_init) == 1 and not shutdowns
    assert connect.init_ray("10.0.0.1:6379") is True
    assert recorded_init[-1] == {"address": "10.0.0.1:6379"} and len(shutdowns) == 1
    assert connect.init_ray("10.0.0.1:6379") is True and len(recorded_init) == 2
    monkeypatch.setattr(connect, "_connected", None)  # as if the user had called ray.init()
    assert connect.init_ray("local") is True and len(recorded_init) == 2


def test_an_unreachable_cluster_is_one_line(monkeypatch, no_cluster):
    import ray

    def refuse(**kw):
        raise ConnectionError("Could not find any running Ray instance.\nmore lines")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(RaycifarError, match=r"cannot reach the Ray cluster at 10\.9\.9\.9:6379 "
                                            r"\(Could not find any running Ray instance\.\)") as e:
        connect.init_ray("10.9.9.9:6379")
    assert "needs RAY_AUTH_MODE=token" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user chose: no token hint
    with pytest.raises(RaycifarError) as e:
        connect.init_ray("10.9.9.9:6379")
    assert "RAY_AUTH_MODE" not in str(e.value)


def test_ray_start_leaves_the_address_where_we_read_it(monkeypatch, tmp_path):
    """Pins the private surface: `ray start` writes <ray temp dir>/ray_current_cluster (that
    it does is shown for real in test_multinode.py) and `started_cluster_address` reads it."""
    from raycifar.cluster.ray_compat import started_cluster_address

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert started_cluster_address() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:41234")
    assert started_cluster_address() == "127.0.0.1:41234"


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus, "memory": 8e9}}


def test_search_trials_run_as_many_at_once_as_their_workers_fit(tmp_path):
    two_nodes = [node(2), node(2), node(8, alive=False)]
    one_cpu = tiny_train_config(tmp_path, num_workers=1, cpus_per_worker=1)
    assert search_concurrency(two_nodes, one_cpu, False, trials=8) == 4
    assert search_concurrency(two_nodes, one_cpu, False, trials=3) == 3
    spans_both = one_cpu.replace(num_workers=2, cpus_per_worker=2)
    assert search_concurrency(two_nodes, spans_both, False, trials=4) == 1
    gpus = [node(8, gpus=1), node(8, gpus=2)]
    assert search_concurrency(gpus, one_cpu, True, trials=8) == 3  # GPUs, not CPUs, bound it
    quarter = one_cpu.replace(gpus_per_worker=0.25)  # four trials share each GPU
    assert search_concurrency(gpus, quarter, True, trials=16) == 12
    assert search_concurrency([node(2, gpus=1)], quarter, True, trials=8) == 2  # CPUs bind


def test_a_search_that_cannot_place_one_trial_fails_at_once(tmp_path):
    head_only = [node(2)]  # an autoscaling cluster before its GPU nodes come
    cfg = tiny_train_config(tmp_path, num_workers=1, cpus_per_worker=1)
    with pytest.raises(RaycifarError, match=r"cannot place one trial: each trains 1 worker\(s\) "
                                            r"of 1 CPU \+ 1 GPU.*room for 0 \(1 node\(s\): 2 CPU,"
                                            r" 0 GPU in all\).*--max-concurrent N"):
        search_concurrency(head_only, cfg, True, trials=4)
    assert search_concurrency(head_only, cfg, True, trials=4, max_concurrent=2) == 2
    assert search_concurrency(head_only, cfg, True, trials=4, max_concurrent=9) == 4


def test_a_multi_worker_run_on_gpu_fractions_is_refused_wherever_it_would_run(tmp_path):
    from raycifar.cluster.placement import check_gpu_sharing, check_placement

    gpus = [node(16, gpus=1), node(16, gpus=1)]
    packed = tiny_train_config(tmp_path, num_workers=2, cpus_per_worker=1, gpus_per_worker=0.5)
    for call in (lambda: check_placement(packed, gpus, True, local=True),
                 lambda: check_placement(packed, gpus, True, local=False),  # no mere warning
                 lambda: search_concurrency(gpus, packed, True, trials=4),
                 lambda: search_concurrency(gpus, packed, True, trials=4, max_concurrent=2)):
        with pytest.raises(RaycifarError, match=r"^--num-workers 2 with --gpus-per-worker 0.5 "
                                                r"would put ranks of one NCCL process group on "
                                                r"the same GPU.*--gpus-per-worker 1\)$"):
            call()
    check_gpu_sharing(packed, use_gpu=False)  # on CPUs the GPU share is not asked for
    assert check_placement(packed.replace(gpus_per_worker=1), gpus, True, local=True) == 2
    assert search_concurrency(gpus, packed.replace(num_workers=1), True, trials=8) == 4
