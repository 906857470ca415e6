"""Where a peer spends its time, layer by layer: OpenVINO's own per-node profile (PERF_COUNT) of the model it
runs in `benchmarks/compare.py` (openvino-reparam: timm's reparameterize_model, the ONNX export of
convopt/contenders.py, fp32, 2 threads), each node's median over the runs, with its FLOPs where it is a conv
and the fraction of the FMA peak that makes. Set beside `convopt report MODEL` to find the layers where the
peer is faster.

    python benchmarks/peer_layers.py timm:inception_next_atto [--runs 200] [--top 40] [--out FILE.md]

Session 38 (Zen 5): OpenVINO ran inception_next_atto's 160->640 1x1 at 14 px in 91 us and 640->160 in 78 us
(84% and 98% of the FMA peak); convopt's fused block runs both and the token mixer in 192 us.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.simplefilter("ignore")


def node_flops(runtime_model) -> dict[str, float]:
    """Executed node name (as the profile names it) -> FLOPs (2 x multiply-adds), for every node whose second
    input is a weight of a conv or a fully connected layer: 2 x output elements x weight elements per output
    channel (a conv's [O, C, kh, kw], a group conv's [G, O/G, C/G, kh, kw], a fully connected [N, K])."""
    flops = {}
    for op in runtime_model.get_ordered_ops():
        if op.get_input_size() < 2 or op.get_output_size() < 1:
            continue
        kind = op.get_rt_info()["layerType"].astype(str)
        if kind not in ("Convolution", "GroupConvolution", "FullyConnected"):
            continue
        out = list(op.get_output_partial_shape(0).to_shape())
        weight = list(op.get_input_partial_shape(1).to_shape())
        channels = out[-1] if kind == "FullyConnected" else out[1]
        outputs = per_output = 1
        for d in out:
            outputs *= d
        for d in weight:
            per_output *= d
        flops[op.get_friendly_name()] = 2.0 * outputs * per_output / channels
    return flops


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", help="timm:NAME, torchvision:NAME or path/to/file.py:factory")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out")
    args = parser.parse_args()

    import openvino
    from timm.utils.model import reparameterize_model

    from convopt.contenders import OPENVINO_CONFIG, onnx_bytes
    from convopt.cost.profile import load_profile
    from convopt.models import load_model, parse_shape
    from convopt.target import resolve_target

    torch.set_num_threads(2)
    model = reparameterize_model(load_model(args.model).eval())
    x = torch.randn(*parse_shape(args.input_shape))
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(onnx_bytes(model, x)), "CPU", {**OPENVINO_CONFIG, "PERF_COUNT": "YES"})
    flops = node_flops(compiled.get_runtime_model())
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    for _ in range(max(20, args.runs // 4)):
        request.infer(feed, share_inputs=True)
    per_node: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        request.infer(feed, share_inputs=True)
        walls.append(time.perf_counter() - start)
        for info in request.get_profiling_info():
            per_node[(info.node_name, info.node_type, info.exec_type)].append(info.real_time.total_seconds())
    rows = sorted(((statistics.median(v), k) for k, v in per_node.items() if statistics.median(v) > 0),
                  reverse=True)
    roof = load_profile(resolve_target("cpu"), measured_here=True).roof_flops
    total = sum(t for t, _ in rows)
    by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    for t, (_, kind, impl) in rows:
        by_kind[(kind, impl)] += t
    lines = [f"# OpenVINO per node: {args.model}", "",
             f"`python benchmarks/peer_layers.py {args.model}`; OpenVINO {openvino.__version__}, "
             f"{OPENVINO_CONFIG}; median of {args.runs} runs per node. A run: {statistics.median(walls) * 1e3:.3f} ms "
             f"(wall), the nodes' sum {total * 1e3:.3f} ms; FMA peak {roof / 1e9:.0f} GFLOP/s.", "",
             "| node type | implementation | us | share |", "|---|---|---|---|"]
    lines += [f"| {kind} | {impl} | {t * 1e6:.0f} | {t / total:.1%} |"
              for (kind, impl), t in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    lines += ["", "| node | type | implementation | us | GFLOP/s | of peak |", "|---|---|---|---|---|---|"]
    for t, (name, kind, impl) in rows[:args.top]:
        f = flops.get(name)
        rate = f"{f / t / 1e9:.0f} | {f / t / roof:.0%}" if f else "- | -"
        lines.append(f"| {name} | {kind} | {impl} | {t * 1e6:.0f} | {rate} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
