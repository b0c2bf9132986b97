"""The benchmark suite (bench/suite.py, `optdsl bench`) runs end to end on a tiny case and writes
the JSON and markdown it promises. Speed is never asserted: only fields and finite positive numbers."""

import json
import math

import pytest

from bench import suite
from optdsl.cli import main


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_shapes_hold_the_requested_size():
    assert len(suite.gpt2_small_shapes()) == 148
    assert sum(math.prod(s) for s in suite.gpt2_small_shapes()) == suite.GPT2_SMALL_NUMEL
    for numel in (10_000, 1_000_000, 123_456_789):
        for shape in suite.SHAPES:
            sizes = suite.shape_numels(shape, numel)
            assert sum(sizes) == numel and min(sizes) >= 1
    assert len(suite.shape_numels("gpt2", 10_000)) == 148
    assert suite.shape_numels("1000x64k", 65_536_000) == [65_536] * 1000
    assert suite.parse_size("1M") == 1_000_000 and suite.parse_size("1e4") == 10_000
    assert suite.parse_spec("sgd:momentum=0.9,nesterov=true") == ("sgd", {"momentum": 0.9, "nesterov": True})


def test_bench_cli_writes_json_and_markdown(tmp_path, capsys):
    status = main(["bench", "adamw", "sgd:momentum=0.9", "--device", "cpu", "--sizes", "1e4",
                   "--shapes", "one", "gpt2", "--dtypes", "fp32", "bf16", "--repeats", "2", "--warmup", "1",
                   "--copy-mib", "4", "--no-compile", "--out", str(tmp_path), "--name", "tiny"])
    assert status == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert (tmp_path / "tiny.md").read_text().startswith("# optdsl bench")
    assert result["schema"] == suite.SCHEMA and result["complete"] is True
    for key in ("type", "name", "cpu_count", "torch_threads"):
        assert key in result["device"]
    for key in ("torch", "triton", "python"):
        assert key in result["versions"]
    assert result["settings"]["sizes"] == [10_000] and result["settings"]["repeats"] == 2
    assert _positive(result["copy"]["bandwidth_gbps"]) and _positive(result["copy"]["median_s"])
    assert len(result["results"]) == 2 * 2 * 2  # specs x dtypes x shapes
    for entry in result["results"]:
        assert entry["status"] == "ok" and entry["size"] == 10_000
        assert entry["shape"] in ("one", "gpt2") and entry["dtype"] in ("fp32", "bf16")
        kinds = {row["kind"]: row for row in entry["candidates"]}
        assert {"optdsl", "for-loop", "foreach", "fused"} <= set(kinds)
        for kind in ("optdsl", "for-loop", "foreach"):
            row = kinds[kind]
            assert row["status"] == "ok", row
            assert len(row["times_s"]) == row["repeats"] == 2
            for key in ("median_s", "min_s", "bandwidth_gbps", "pct_copy_bandwidth", "bytes_per_param",
                        "optdsl_time_ratio"):
                assert _positive(row[key]), (kind, key, row[key])
            assert math.isfinite(row["cpu_s_per_step"]) and row["cpu_s_per_step"] >= 0
        ours = kinds["optdsl"]
        # fp32: param 4+4, grad 4, two states (adamw) or a momentum buffer (sgd) at 4+4 each.
        expected = {("adamw", "fp32"): 28, ("sgd", "fp32"): 20, ("adamw", "bf16"): 22, ("sgd", "bf16"): 14}
        assert ours["bytes_per_param"] == pytest.approx(expected[entry["optimizer"], entry["dtype"]])
        assert ours["state_dtypes"] == ["float32"]


def test_launch_counts_on_a_gpt2_shaped_list():
    """bench/launch_counts.py counts one step's launches: its GPT-2 structure has 148 tensors, and
    a rule with a global reduction steps them in a contribution launch and an update launch."""
    from bench import launch_counts
    from records import ALL_RECORDS

    assert len(launch_counts.gpt2_shapes()) == 148
    record = next(r for r in ALL_RECORDS if r.spec == "adamw_clip_global")
    kernels, ops = launch_counts.count(record, launch_counts.gpt2_shapes(layers=1))
    assert sum(kernels.values()) == 2 and 0 < sum(ops.values()) <= 8, (kernels, ops)
    assert launch_counts.markdown(dict(shapes="s", commit="c", torch="t", triton="t", date="d",
                                       specs={"x": dict(kernels=kernels, ops=ops)})).count("| x | 2 |") == 1
