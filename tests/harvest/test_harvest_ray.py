"""The harvest on Ray (Ray Data map_batches, one model replica per worker): one and two local
workers write the same shards as the local harvest, byte for byte. One local cluster for the
module (Ray starts in seconds), shut down at the end with its worker processes."""
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from probe.harvest import harvest  # noqa: E402
from test_harvest import labelled, tiny  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_one_and_two_ray_workers_write_the_local_harvest(cluster, tmp_path):
    model = tiny()
    data = labelled(n_seq=10)
    options = dict(sites=["resid_post", "state"], shard_size=3, batch_size=2, max_dim=16, progress=False)
    local = harvest(model, data, tmp_path / "local", **options)
    for workers in (1, 2):
        on_ray = harvest(model, data, tmp_path / f"ray{workers}", ray=True, workers=workers, **options)
        assert on_ray.manifest["shards"] == local.manifest["shards"]
        for shard in local.shards:
            assert (on_ray.path / shard["file"]).read_bytes() == (local.path / shard["file"]).read_bytes()
    assert ray.is_initialized()  # a cluster the caller started is left running for the caller
    np.testing.assert_array_equal(on_ray.activations().features["1-state"][:],
                                  local.activations().features["1-state"][:])
