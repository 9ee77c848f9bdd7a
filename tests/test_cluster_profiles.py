"""Cluster profiles: the examples in configs/cluster/ validate against the spec schema, and
the SLURM one renders a real dask-jobqueue job script (no SLURM needed to render it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixelquery_batch.errors import SpecError
from pixelquery_batch.executor import kubernetes_cluster_kwargs, slurm_cluster_kwargs
from pixelquery_batch.spec import load_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cluster"


def spec_with_cluster(tmp_path: Path, cluster: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "c", "repository": {"path": "repo"},
        "fields": {"path": "f.geojson"}, "indices": {"ndvi": "builtin"},
        "outputs": {"dir": "out"}, "cluster": cluster}))
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_example_cluster_profile_validates(name: str, tmp_path: Path) -> None:
    cluster = yaml.safe_load((CONFIGS / name).read_text())
    spec = load_spec(spec_with_cluster(tmp_path, cluster))
    dumped = spec.cluster.model_dump(mode="json")
    for key, value in cluster.items():  # every key of the example lands where it says
        if isinstance(value, dict):
            assert {k: dumped[key][k] for k in value} == {
                k: list(v) if isinstance(v, list) else v for k, v in value.items()}, key
        else:
            assert dumped[key] == value, key


def test_slurm_profile_renders_a_job_script(tmp_path: Path) -> None:
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    spec = load_spec(spec_with_cluster(tmp_path, yaml.safe_load((CONFIGS / "slurm.yaml").read_text())))
    with SLURMCluster(**slurm_cluster_kwargs(spec.cluster.slurm),
                      scheduler_options={"dashboard_address": ":0"}) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p compute" in script
    assert "#SBATCH -A agro-monitoring" in script
    assert "#SBATCH --cpus-per-task=8" in script
    assert "#SBATCH -t 04:00:00" in script
    assert "#SBATCH --constraint=avx2" in script
    assert "source /opt/pqb/venv/bin/activate" in script
    assert "--nworkers 2" in script and "--nthreads 4" in script and "--memory-limit 16.00GiB" in script
    assert "AWS_" not in script and "SECRET" not in script.upper()


def test_kubernetes_profile_maps_to_kubecluster_arguments(tmp_path: Path) -> None:
    spec = load_spec(spec_with_cluster(tmp_path, yaml.safe_load((CONFIGS / "kubernetes.yaml").read_text())))
    kw = kubernetes_cluster_kwargs(spec.cluster.kubernetes)
    assert kw == {"name": "pqb-nightly", "image": "registry.example.org/pixelquery-batch:0.3",
                  "n_workers": 8, "namespace": "agro",
                  "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
                  "env": {"OMP_NUM_THREADS": "1"}}


@pytest.mark.parametrize(("cluster", "message"), [
    ({"address": "tcp://h:8786", "slurm": {"cores": 2, "memory": "4GiB"}}, "address and slurm are exclusive"),
    ({"slurm": {"cores": 2, "memory": "lots"}}, "invalid memory size 'lots'"),
    ({"slurm": {"cores": 2, "memory": "4GiB", "walltime": "2h"}}, "walltime"),
    ({"kubernetes": {"name": "Bad_Name", "image": "x"}}, "name"),
    ({"kubernetes": {"name": "ok", "image": "x", "env": {"AWS_SECRET_ACCESS_KEY": "s"}}},
     "look like credentials"),
    ({"kubernetes": {"name": "ok", "image": "x", "resources": {"request": {}}}}, "unknown key"),
])
def test_bad_cluster_profiles_are_refused_naming_the_key(cluster: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with_cluster(tmp_path, cluster))


def test_scheduler_address_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelquery_batch.pipeline import _cluster_options

    spec = load_spec(spec_with_cluster(tmp_path, {}))
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.5:8786")
    assert _cluster_options(spec, None).address == "tcp://10.0.0.5:8786"
    named = load_spec(spec_with_cluster(tmp_path, {"address": "tcp://h:1"}))
    assert _cluster_options(named, None).address == "tcp://h:1"  # the spec's wins
    assert _cluster_options(spec, "tcp://cli:2").address == "tcp://cli:2"  # --cluster wins
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert _cluster_options(spec, None).address is None  # a LocalCluster
