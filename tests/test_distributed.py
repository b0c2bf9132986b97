"""Generated optimizers under torch.distributed, on CPU with gloo (docs/distributed.md).

Two process groups are spawned once per module (tests/distributed_worker.py runs the checks):
* 2 processes: FSDP2 `fully_shard` vs the plain model on the same global batch (AdamW, Lion,
  AdamWClipGlobal, Lamb, SPS and a test rule with per-row/column reductions), in float64 (the
  PyTorch reference) and float32 (the Triton kernels, in the interpreter); DDP; a
  torch.distributed.checkpoint save of the sharded optimizers.
* 4 processes: FSDP2 again (uneven shards: some ranks hold none of a tensor), and DTensor
  parameters on a 2 x 2 mesh with every kind of placement (rows split, columns split, a dim split
  twice, replicated), for row/column reductions and states.
Parameters and every state are compared after every step: float64 to 1e-12, float32 to 1e-5.
Then the world-size-2 checkpoint is loaded at world size 1 (this process, no process group).
"""

from __future__ import annotations

import pytest
import torch

import distributed_worker as worker

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("distributed")
    worker.compile_rowcol(path)
    return path


@pytest.fixture(scope="module")
def world2(out):
    return worker.spawn("world2", 2, out)


@pytest.fixture(scope="module")
def world4(out):
    return worker.spawn("world4", 4, out)


def _result(ranks, check):
    """The check's result on rank 0, after asserting it passed on every rank."""
    for rank, results in enumerate(ranks):
        assert check in results, f"{check} did not run (stopped after {results.get('stopped_after')})"
        assert results[check]["ok"], f"rank {rank}:\n{results[check]['error']}"
    return ranks[0][check]


def _calls(result):
    """(all-reduces, bytes) of the optimizer step, the same on every step."""
    per_step = {tuple(c) for c in result["all_reduces_per_step"]}
    assert len(per_step) == 1, per_step
    return per_step.pop()


# The model: Linear(6, 5) and Linear(5, 3), four tensors sharded on dim 0.
FSDP2_CALLS = {  # float64 reference: (all-reduces, bytes) per step
    "adamw": (0, 0),
    "lion": (0, 0),
    "adamw_clip_global": (1, 8),  # one all-reduce of the global sum of squares
    "lamb": (8, 64),  # ||w|| and ||u|| per tensor
    "sps": (1, 8),
    "rowcol": (44, 712),
}
# The kernels' partials: one all-reduce per reduce pass and op (float32); global totals in float64.
FSDP2_TRITON_CALLS = dict(FSDP2_CALLS, lamb=(4, 64), rowcol=(20, 340))


@pytest.mark.parametrize("name", worker.FSDP2_CASES + ["rowcol"])
def test_fsdp2_float64_equals_unsharded(world2, name):
    assert _calls(_result(world2, f"fsdp2/{name}/float64")) == FSDP2_CALLS[name]


@pytest.mark.parametrize("name", worker.TRITON_CASES)
def test_fsdp2_float32_triton_equals_unsharded(world2, name):
    assert _calls(_result(world2, f"fsdp2/{name}/float32-triton")) == FSDP2_TRITON_CALLS[name]


@pytest.mark.parametrize("name", worker.DDP_CASES)
def test_ddp_equals_single_process(world2, name):
    _result(world2, f"ddp/{name}")  # the optimizer itself communicates nothing (asserted by the worker)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, on purpose
@pytest.mark.parametrize("name", worker.CHECKPOINT_CASES)
def test_checkpoint_saved_at_world_size_2_loads_at_world_size_1(world2, out, name):
    _result(world2, f"fsdp2/{name}/float64")  # saved the checkpoint after its last step
    worker.load_at_world_size_1(name, out)


@pytest.mark.parametrize("name", worker.FSDP2_CASES)
def test_fsdp2_world_size_4_uneven_shards(world4, name):
    assert _calls(_result(world4, f"fsdp2/{name}/float64")) == FSDP2_CALLS[name]


MESH2D_CALLS = {  # float64: (all-reduces, bytes) per step, worker.MESH2D_PARAMS
    "adamw": (0, 0),
    "lion": (0, 0),
    # buckets of parameters sharded over the same groups: {0, 1} (two all-reduces), {1}, {0}
    "adamw_clip_global": (4, 32),
    "sps": (4, 32),
    "lamb": (16, 128),  # two norms per tensor, one all-reduce per mesh dim that shards it
    "gc_adam": (5, 112),  # row means: only where the columns are split
    "rowcol": (73, 928),
}


@pytest.mark.parametrize("name", worker.MESH2D_CASES)
def test_dtensor_2d_mesh_float64(world4, name):
    assert _calls(_result(world4, f"mesh2d/{name}/float64")) == MESH2D_CALLS[name]


@pytest.mark.parametrize("name", ["lamb", "rowcol", "adamw_clip_global"])
def test_dtensor_2d_mesh_float32_triton(world4, name):
    _result(world4, f"mesh2d/{name}/float32-triton")


@pytest.mark.parametrize("name", ["adamw_clip_global", "sps"])
def test_global_totals_with_empty_shards_in_different_groups(world4, name):
    """worker.EMPTY_SHARD_PARAMS: parameters whose shards are empty on different ranks, sharded
    over different mesh dims, with the Triton path's multi-tensor contributions: equal to the plain
    run, params and every state, every step."""
    _result(world4, f"mesh2d-empty-shards/{name}/float32-triton")
