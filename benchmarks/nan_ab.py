"""A/B of the NaN-propagating max/min rewrite (convopt/backends/nan_semantics.py): one model, one variant per
process ("on": as shipped; "off": the rewrite replaced by the identity), 4 s of calls after 5 warm-up calls.

    for r in 1 2 3; do for v in on off; do python benchmarks/nan_ab.py resnet18 $v; done; done
"""
import sys, time, statistics, warnings, torch, timm
warnings.simplefilter("ignore")
name, variant = sys.argv[1], sys.argv[2]
import convopt.backends.tvm_backend as tb
if variant == "off":
    tb.PropagateNaN = lambda mod: mod
import convopt
torch.manual_seed(0)
m = timm.create_model(name).eval(); x = torch.randn(1,3,224,224)
f = convopt.optimize(m, x)
with torch.no_grad():
    for _ in range(5): f(x)
    ts=[]; end=time.time()+4
    while time.time()<end:
        s=time.perf_counter(); f(x); ts.append(time.perf_counter()-s)
print(f"RESULT {name} {variant} median {statistics.median(ts)*1e3:.3f} p10 {sorted(ts)[len(ts)//10]*1e3:.3f}")
