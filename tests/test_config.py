import pytest

from raycifar.recipe.config import ConfigError, TrainConfig, resolve_storage_path


def test_defaults_are_the_spec():
    c = TrainConfig()
    assert (c.epochs, c.peak_epoch, c.batch_size) == (24, 5, 512)
    assert c.optimizer == "sgd" and c.momentum == 0.9 and c.weight_decay == 5e-4


@pytest.mark.parametrize("changes, message", [
    ({"lr_min": 0.5, "lr_max": 0.4}, "lr_min=0.5 must be below lr_max=0.4; swap them"),
    ({"peak_epoch": 24}, "peak_epoch=24 must be in [1, epochs-1=23]"),
    ({"batch_size": 2, "num_workers": 3},
     "batch_size=2 cannot give each of num_workers=3 an image; use fewer workers"),
    ({"num_workers": 2, "min_workers": 3}, "min_workers=3 must be between 0 (a fixed size) and "
                                           "num_workers=2"),
    ({"precision": "fp8"}, "precision='fp8' is not one of"),
    ({"compile_mode": "max-autotune-no-cudagraphs"}, "compile_mode='max-autotune-no-cudagraphs' "
                                                     "is not one of"),
    ({"name": "a/b"}, "must be a non-empty folder name"),
    ({"use_gpu": True, "num_workers": 2, "gpus_per_worker": 0.5},
     "--num-workers 2 with --gpus-per-worker 0.5 would put ranks of one NCCL process group on "
     "the same GPU"),
    ({"compile": True, "compile_mode": "reduce-overhead", "num_workers": 2},
     "compile_mode='reduce-overhead' replays CUDA graphs, which DDP with BatchNorm is not known"),
])
def test_bad_values_name_key_value_and_fix(changes, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**changes)
    assert message in str(e.value)
    assert "\n" not in str(e.value)  # one problem: one line


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        TrainConfig(epochs=0, lr_min=-1, optimizer="lamb")
    assert len(e.value.problems) >= 3
    assert "epochs=0" in str(e.value) and "lr_min=-1" in str(e.value)
    assert "optimizer='lamb'" in str(e.value)


def test_from_dict_rejects_unknown_keys_and_round_trips():
    c = TrainConfig(epochs=3, peak_epoch=1)
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


def test_storage_path_made_absolute_but_uris_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_path("runs") == str(tmp_path / "runs")
    assert resolve_storage_path("s3://bucket/runs") == "s3://bucket/runs"


def test_gpu_fractions_are_for_one_worker_runs_and_whole_gpus_for_more():
    TrainConfig(use_gpu=True, num_workers=1, gpus_per_worker=0.25)   # trials packed on a GPU
    TrainConfig(use_gpu=True, num_workers=4, gpus_per_worker=1)      # DDP over four GPUs
    TrainConfig(use_gpu=False, num_workers=2, gpus_per_worker=0.5)   # CPUs: GPUs unused
    # left to the cluster: checked once it is known (cluster.check_gpu_sharing)
    TrainConfig(use_gpu=None, num_workers=2, gpus_per_worker=0.5)
    # graph modes are fine for one worker, and default compile for many
    TrainConfig(compile=True, compile_mode="max-autotune", num_workers=1)
    TrainConfig(compile=True, compile_mode="default", num_workers=2)
