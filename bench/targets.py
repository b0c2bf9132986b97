"""Check issue 4's performance targets against suite JSON files (bench/suite.py output); prints markdown.

    python bench/targets.py bench/results/cpu-1thread-1M-10M.json [more.json ...]

CPU target: the optdsl reference within 1.3x of torch.optim's default CPU implementation (the
for-loop) for Adam, AdamW and SGD at 10 M parameters, fp32 (also listed against foreach).
GPU targets (CUDA results only), AdamW fp32 at >= 100 M parameters: >= 85 % of the copy
bandwidth; >= 1.0x torch fused AdamW on every shape; >= 1.3x torch.compile; and
adamw_clip_global <= 1.2x plain adamw (same size, shape, dtype, run on the same device).
Nothing here is measured: it only reads what the suite wrote. A speedup is baseline median /
optdsl median (> 1: optdsl faster).
"""

import json
import sys
from pathlib import Path


def rows(paths):
    for path in paths:
        result = json.loads(Path(path).read_text())
        for entry in result["results"]:
            if entry["status"] == "ok":
                by_kind = {r["kind"]: r for r in entry["candidates"] if r.get("status") == "ok"}
                yield path, result, entry, by_kind


def verdict(ok):
    return "met" if ok else "**missed**"


def cpu_table(paths):
    lines = ["| file | optimizer | shape | dtype | params | threads | optdsl ms | for-loop ms | optdsl/for-loop | foreach ms | optdsl/foreach | target (<= 1.3x for-loop) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for path, result, entry, by_kind in rows(paths):
        if result["device"]["type"] != "cpu" or entry["size"] != 10_000_000 or entry["dtype"] != "fp32":
            continue  # bf16: torch keeps bf16 state where optdsl keeps fp32, not the target's comparison
        if entry["optimizer"] not in ("adam", "adamw", "sgd") or not {"optdsl", "for-loop"} <= set(by_kind):
            continue
        ours, loop, each = by_kind["optdsl"], by_kind["for-loop"], by_kind.get("foreach")
        ratio = ours["median_s"] / loop["median_s"]
        each_cells = (f"{each['median_s'] * 1e3:.1f} | {ours['median_s'] / each['median_s']:.2f}" if each else "- | -")
        lines.append(f"| {Path(path).name} | {entry['spec']} | {entry['shape']} | {entry['dtype']} | 10M | "
                     f"{result['device']['torch_threads']} | {ours['median_s'] * 1e3:.1f} | {loop['median_s'] * 1e3:.1f} | "
                     f"{ratio:.2f} | {each_cells} | {verdict(ratio <= 1.3)} |")
    return lines


def gpu_table(paths):
    lines = ["| file | device | optimizer | shape | params | % copy BW (>= 85) | vs fused (>= 1.0x) | vs compile (>= 1.3x) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    plain = {}
    clipped = {}
    for path, result, entry, by_kind in rows(paths):
        if result["device"]["type"] != "cuda" or entry["dtype"] != "fp32" or "optdsl" not in by_kind:
            continue
        key = (result["device"]["name"], entry["shape"], entry["size"])
        if entry["optimizer"] == "adamw":
            plain[key] = by_kind["optdsl"]["median_s"]
        if entry["optimizer"] == "adamw_clip_global":
            clipped[key] = by_kind["optdsl"]["median_s"]
        if entry["optimizer"] != "adamw" or entry["size"] < 100_000_000:
            continue
        ours = by_kind["optdsl"]
        pct = ours["pct_copy_bandwidth"]
        cells = [f"{pct:.1f} ({verdict(pct >= 85)})"]
        for kind, need in (("fused", 1.0), ("compile", 1.3)):
            if kind in by_kind:
                speedup = by_kind[kind]["median_s"] / ours["median_s"]
                cells.append(f"{speedup:.2f}x ({verdict(speedup >= need)})")
            else:
                cells.append("not measured")
        lines.append(f"| {Path(path).name} | {result['device']['name']} | adamw | {entry['shape']} | "
                     f"{entry['size']:,} | " + " | ".join(cells) + " |")
    clip = ["", "| device | shape | params | adamw_clip_global / adamw (<= 1.2x) |", "| --- | --- | ---: | ---: |"]
    for key in sorted(set(plain) & set(clipped)):
        ratio = clipped[key] / plain[key]
        clip.append(f"| {key[0]} | {key[1]} | {key[2]:,} | {ratio:.2f}x ({verdict(ratio <= 1.2)}) |")
    return lines + (clip if len(clip) > 3 else [])


def main(argv=None):
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        print(__doc__)
        return 2
    cpu = cpu_table(paths)
    if len(cpu) > 2:
        print("## CPU target (10 M parameters)\n")
        print("\n".join(cpu) + "\n")
    gpu = gpu_table(paths)
    if len(gpu) > 2:
        print("## GPU targets (AdamW fp32, >= 100 M parameters)\n")
        print("\n".join(gpu) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
