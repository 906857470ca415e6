"""GFLOP/s of convopt's direct conv2d kernel (default schedule, no tuning) vs
torch.nn.functional.conv2d on resnet50 / mobilenet layers, batch 1.

    /work/venv/bin/python benchmarks/conv_kernels.py [--runs 20] [--threads 2] [--ow-tile T] [--oc-tile T]

Both are timed interleaved in one process, median of ``--runs`` runs each
(each run = the mean of back-to-back calls for about 20 ms, with a 30 ms pause
before each run so the other runtime's spinning threads are asleep).  Writes a
markdown table; "ratio" = torch time / convopt time (> 1: convopt faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _threads_arg(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


# TVM's runtime thread pool defaults to hardware_concurrency / 2 on x86 (it assumes
# SMT), i.e. ONE thread on a 2-vCPU machine.  It reads TVM_NUM_THREADS when the
# runtime starts, so set it before importing tvm to match torch.set_num_threads.
THREADS = _threads_arg(sys.argv)
os.environ["TVM_NUM_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import te  # noqa: E402

from convopt.schedules.direct_conv2d import (  # noqa: E402
    choose_oc_block,
    direct_conv2d_compute,
    pack_weight,
    schedule_direct_conv2d,
    vector_lanes,
)

# name, C, O, k, stride, pad, H(=W), groups
LAYERS = [
    ("64->64 3x3 s1 56", 64, 64, 3, 1, 1, 56, 1),
    ("128->128 3x3 s1 28", 128, 128, 3, 1, 1, 28, 1),
    ("256->256 3x3 s1 14", 256, 256, 3, 1, 1, 14, 1),
    ("64->256 1x1 56", 64, 256, 1, 1, 0, 56, 1),
    ("256->64 1x1 56", 256, 64, 1, 1, 0, 56, 1),
    ("512->512 3x3 s1 7", 512, 512, 3, 1, 1, 7, 1),
    ("3->64 7x7 s2 224", 3, 64, 7, 2, 3, 224, 1),
    ("dw 144 3x3 s1 56", 144, 144, 3, 1, 1, 56, 144),
]


def layers_of(model_name: str):
    """The distinct conv layers of a timm model after convopt's passes, as LAYERS rows (+ how many)."""
    import timm

    import convopt
    from convopt.ir import Op

    model = timm.create_model(model_name, pretrained=False).eval()
    graph = convopt.optimize(model, torch.randn(1, 3, 224, 224), target="torch").graph
    rows = {}
    for n in graph.nodes:
        if n.op is not Op.CONV2D:
            continue
        src, w = graph.types[n.inputs[0]], graph.types[n.inputs[1]]
        k, a = w.shape[2], n.attrs
        if w.shape[2] != w.shape[3] or src.shape[2] != src.shape[3] or a.dilation != (1, 1) or \
                a.stride[0] != a.stride[1] or a.padding[0] != a.padding[1]:
            continue
        key = (src.shape[1], w.shape[0], k, a.stride[0], a.padding[0], src.shape[2], a.groups)
        name = f"{key[0]}->{key[1]} {k}x{k} s{key[3]} {key[5]}" + (f" g{a.groups}" if a.groups > 1 else "")
        rows.setdefault(key, [name, 0])[1] += 1
    return [(f"{name} (x{count})", *key) for key, (name, count) in rows.items()]


def host_target():
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2}
    )


def build_layer(C, O, k, s, p, H, g, target, **sched_kw):
    lanes = vector_lanes(target)
    ob = choose_oc_block(O // g, lanes)
    X = te.placeholder((1, C, H, H), name="x")
    wshape = pack_weight(np.zeros((O, C // g, k, k), np.float32), g, ob).shape
    Wp = te.placeholder(wshape, name="w")
    B = te.placeholder((O,), name="b")
    out = direct_conv2d_compute(
        X, Wp, B, out_channels=O, kernel=(k, k), stride=(s, s), padding=(p, p),
        dilation=(1, 1), groups=g, oc_block=ob, activation="relu",
    )
    mod = tvm.IRModule({"conv": te.create_prim_func([X, Wp, B, out]).with_attr("global_symbol", "conv")})
    sch = tvm.s_tir.Schedule(mod)
    schedule_direct_conv2d(sch, "conv", target, **sched_kw)
    ex = tvm.compile(sch.mod, target=target)
    return ex, ob


def time_fn(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--ow-tile", type=int, default=None)
    ap.add_argument("--oc-tile", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="threads for both TVM and torch")
    ap.add_argument("--only", type=str, default=None, help="substring of layer names")
    ap.add_argument("--model", default=None, help="time every distinct conv layer of this timm model instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = host_target()
    dev = tvm.cpu()
    kw = {}
    if args.ow_tile:
        kw["ow_tile"] = args.ow_tile
    if args.oc_tile:
        kw["oc_tile"] = args.oc_tile
    print(
        f"target: {target}, fp32 lanes: {vector_lanes(target)}, "
        f"TVM threads: {tvm.runtime.num_threads()}, torch threads: {torch.get_num_threads()}\n"
    )
    print(
        "| layer | convopt ms (median) | convopt GFLOP/s (median / best) "
        "| torch ms (median) | torch GFLOP/s (median / best) | ratio (median) | rel err |"
    )
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, C, O, k, s, p, H, g in (layers_of(args.model) if args.model else LAYERS):
        if args.only and args.only not in name:
            continue
        ex, ob = build_layer(C, O, k, s, p, H, g, target, **kw)
        f = ex["conv"]
        x = rng.standard_normal((1, C, H, H), dtype=np.float32)
        w = rng.standard_normal((O, C // g, k, k), dtype=np.float32) * 0.1
        b = rng.standard_normal((O,), dtype=np.float32)
        OH = (H + 2 * p - k) // s + 1
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        ref = torch.relu(torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p, groups=g))
        tx = tvm.runtime.tensor(x, dev)
        tw = tvm.runtime.tensor(pack_weight(w, g, ob), dev)
        tb = tvm.runtime.tensor(b, dev)
        ty = tvm.runtime.tensor(np.zeros((1, O, OH, OH), np.float32), dev)
        f(tx, tw, tb, ty)
        err = float(np.abs(ty.numpy() - ref.numpy()).max() / np.abs(ref.numpy()).max())
        flops = 2.0 * O * OH * OH * (C // g) * k * k

        def run_tvm():
            f(tx, tw, tb, ty)

        def run_torch():
            torch.relu(torch.nn.functional.conv2d(xt, wt, bt, stride=s, padding=p, groups=g))

        # calibrate: ~20 ms per run
        t1 = time_fn(run_tvm, 3)
        number = max(1, int(0.02 / max(t1, 1e-6)))
        for _ in range(3):
            run_tvm()
            run_torch()
        tt, tp = [], []
        for _ in range(args.runs):
            # the pause lets the other runtime's spinning worker threads go to sleep
            # (TVM's pool and torch's OpenMP both spin after a parallel region)
            time.sleep(0.03)
            tt.append(time_fn(run_tvm, number))
            time.sleep(0.03)
            tp.append(time_fn(run_torch, number))
        mt, mp = statistics.median(tt), statistics.median(tp)
        bt, bp = min(tt), min(tp)
        print(
            f"| {name} | {mt * 1e3:.3f} | {flops / mt / 1e9:.0f} / {flops / bt / 1e9:.0f} | "
            f"{mp * 1e3:.3f} | {flops / mp / 1e9:.0f} / {flops / bp / 1e9:.0f} | {mp / mt:.2f} | {err:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
