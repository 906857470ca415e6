"""Transfer-learning step with frozen BatchNorm: Eval mode vs convopt's Tune mode vs inductor's pass.

    python benchmarks/tune_conv_bn.py [--model resnet50] [--batch 16] [--steps 5]

The model trains with every parameter trainable and its BatchNorms in eval mode (running statistics).
Contenders, each in a fresh process so one's memory never counts for another:
  eval      eager PyTorch as the model is ("Eval mode")
  tune      convopt.optimize(model, x, mode="train") on the torch backend ("Tune mode")
  inductor  torch.compile with torch._inductor.config.efficient_conv_bn_eval_fx_passes = True
Per step (forward, loss, backward, SGD step) we measure wall time and, above the level just before the
step, the peak of malloc's in-use bytes (glibc mallinfo2: what CPU tensors occupy) and of resident
memory (psutil), sampled every 1 ms (freed heap is returned to the OS with malloc_trim before each
step); and, once, the bytes autograd saves for backward (saved_tensors_hooks, weights excluded). Medians over the steps after one warm-up (compilation) step. The tune
worker also reports the relative error of its gradients against Eval mode's.
Writes benchmarks/results/tune_conv_bn.{json,md}.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch


def frozen_bn_model(name: str):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    """Bytes malloc has handed out and not got back (heap + mmapped blocks): where tensors live on CPU."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakMemory:
    """Peak over a block of resident memory (psutil) and of malloc's in-use bytes, above their start."""

    def __init__(self, interval: float = 0.001):
        self.process, self.interval = psutil.Process(), interval
        self._stop = threading.Event()

    def _sample(self):
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        self.peak_heap = max(self.peak_heap, heap_in_use())

    def __enter__(self):
        self.base_rss, self.base_heap = self.process.memory_info().rss, heap_in_use()
        self.peak_rss, self.peak_heap = self.base_rss, self.base_heap
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def rss_mb(self) -> float:
        return (self.peak_rss - self.base_rss) / 2**20

    @property
    def heap_mb(self) -> float:
        return (self.peak_heap - self.base_heap) / 2**20


def saved_for_backward_mb(run, x, target) -> float:
    """Distinct storage autograd keeps for backward, parameters and buffers excluded."""
    owned = {t.untyped_storage().data_ptr() for t in [*run.parameters(), *run.buffers()]}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(run(x), target)
    del loss
    return sum(saved.values()) / 2**20


def worker(args) -> dict:
    torch.set_num_threads(2)
    model = frozen_bn_model(args.model)
    x = torch.randn(args.batch, 3, 224, 224)
    target = torch.randint(0, 1000, (args.batch,))
    result: dict = {"contender": args.worker}
    if args.worker == "tune":
        import copy

        import convopt

        reference = copy.deepcopy(model)
        start = time.perf_counter()
        run = convopt.optimize(model, x, mode="train")
        result["prepare_s"] = time.perf_counter() - start
        torch.nn.functional.cross_entropy(run(x), target).backward()
        torch.nn.functional.cross_entropy(reference(x), target).backward()
        grads = dict(run.named_parameters())
        errors = [_rel(grads[k].grad, p.grad) for k, p in reference.named_parameters()]
        result["grad_max_rel_error"] = max(errors)
        del reference
        run.zero_grad(set_to_none=True)
    elif args.worker == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.efficient_conv_bn_eval_fx_passes = True
        run = torch.compile(model)
    else:
        run = model
    optimizer = torch.optim.SGD(run.parameters(), lr=1e-3)
    times, rss, heap = [], [], []
    for step in range(args.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        _libc.malloc_trim(0)
        with PeakMemory() as mem:
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(run(x), target)
            loss.backward()
            optimizer.step()
            seconds = time.perf_counter() - start
        if step == 0:
            result["first_step_s"] = seconds  # includes compilation for inductor
            continue
        times.append(seconds)
        rss.append(mem.rss_mb)
        heap.append(mem.heap_mb)
    result.update(step_s=statistics.median(times), peak_rss_mb=statistics.median(rss),
                  peak_heap_mb=statistics.median(heap), steps=len(times),
                  saved_for_backward_mb=saved_for_backward_mb(run, x, target))
    return result


def _rel(a, b):
    from convopt.optimize import relative_error

    return relative_error(a, b)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--contenders", default="eval,tune,inductor")
    parser.add_argument("--worker", choices=("eval", "tune", "inductor"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune_conv_bn"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = {}
    for contender in args.contenders.split(","):
        cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--steps",
               str(args.steps), "--worker", contender]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            results[contender] = {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
        else:
            results[contender] = json.loads(out.stdout.strip().splitlines()[-1])
        print(contender, results[contender], flush=True)
    base = results.get("eval", {})
    rows = []
    for name, r in results.items():
        row = {"contender": name, **{k: v for k, v in r.items() if k != "contender"}}
        if "step_s" in r and "step_s" in base:
            row["time vs eval"] = r["step_s"] / base["step_s"]
            for key in ("peak_heap_mb", "peak_rss_mb", "saved_for_backward_mb"):
                row[key.replace("_mb", "") + " vs eval"] = r[key] / base[key]
        rows.append(row)
    from convopt.bench import markdown_table, write_report

    command = f"python benchmarks/tune_conv_bn.py --model {args.model} --batch {args.batch} --steps {args.steps}"
    table = markdown_table(rows, ["contender", "step_s", "time vs eval", "peak_heap_mb", "peak_heap vs eval",
                                  "peak_rss_mb", "peak_rss vs eval", "saved_for_backward_mb",
                                  "saved_for_backward vs eval", "grad_max_rel_error", "first_step_s"])
    write_report(args.out, command, "2 threads; medians over steps after one warm-up", table, {"results": results})
    print(table)


if __name__ == "__main__":
    main()
