"""Side-by-side: diffusers' schedulers vs this crate's samplers, per model call, same machine.

    cargo bench --bench steps                                     # writes target/criterion
    CRITERION_HOME=target/criterion-rayon \
        cargo bench --bench steps --features rayon -- 'scaling|noise'  # optional: rayon figures
    /path/to/venv/bin/python benches/diffusers_compare.py           # times diffusers, prints tables

The Rust figures are criterion's medians from `target/criterion` (benches/steps.rs: a model
that copies its input into the run's output buffer, then the step). The diffusers figures are
measured here, per call: `scale_model_input`, a copy standing in for the model (`x.clone()`),
and `step`, over a 50-step run (`set_timesteps` not timed), with torch on CPU and 2 threads.
The median over repeated runs is reported. Pinned versions: see tests/fixtures/generate.py.
"""

import glob
import inspect
import json
import os
import platform
import statistics
import sys
import time

import torch
import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    IPNDMScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

# Our bench name -> (diffusers scheduler, its options, stochastic?, our floor (written, read)).
# The floor is the fused pass over the arrays our steady-state step touches: e.g. DPM-Solver++
# 2M writes the sample and the output buffer (which joins the history) and reads one history
# array. Heun alternates a predictor (2 written, 1 read) and a corrector (1 written, 3 read).
SAMPLERS = {
    "ddim": (DDIMScheduler, dict(clip_sample=False), False, ["1w+1r"]),
    "euler": (EulerDiscreteScheduler, {}, False, ["1w+1r"]),
    "heun": (HeunDiscreteScheduler, {}, False, ["2w+1r", "1w+3r"]),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}, False, ["2w+1r"]),
    "dpmpp_3m": (DPMSolverMultistepScheduler, dict(solver_order=3), False, ["2w+2r"]),
    "dpmpp_singlestep_2": (DPMSolverSinglestepScheduler, {}, False, ["2w+1r", "2w+2r"]),
    "unipc_2": (UniPCMultistepScheduler, {}, False, ["3w+2r"]),
    "unipc_3": (UniPCMultistepScheduler, dict(solver_order=3), False, ["3w+3r"]),
    "deis_2": (DEISMultistepScheduler, {}, False, ["2w+1r"]),
    "dpm_2": (KDPM2DiscreteScheduler, {}, False, ["1w+2r"]),
    "lms_4": (LMSDiscreteScheduler, {}, False, ["2w+3r"]),
    "plms": (PNDMScheduler, dict(skip_prk_steps=True), False, ["2w+3r"]),
    "ipndm": (IPNDMScheduler, {}, False, ["2w+3r"]),
    "ddpm": (DDPMScheduler, dict(clip_sample=False), True, ["1w+2r"]),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}, True, ["1w+2r"]),
    "dpm_2_ancestral": (KDPM2AncestralDiscreteScheduler, {}, True, ["1w+2r"]),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++"), True, ["2w+2r"]),
    "lcm": (LCMScheduler, {}, True, ["1w+2r"]),
}
SHAPES = [(1, 4, 64, 64), (1, 4, 128, 128), (8, 4, 64, 64)]
DETERMINISTIC_TARGET = {"ddim", "euler", "heun", "dpmpp_2m", "unipc_2"}
STOCHASTIC_TARGET = {"ddpm", "euler_ancestral", "dpmpp_2m_sde"}


def diffusers_per_call(cls, opts, shape, min_time=0.5):
    """Median seconds per model call over repeated 50-step runs."""
    base = {"num_train_timesteps": 1000} if cls is IPNDMScheduler else SD  # iPNDM has no betas
    sched = cls(**base, **opts)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=gen)
    kw = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
    per_call = []
    spent = 0.0
    while spent < min_time or len(per_call) < 5:
        sched.set_timesteps(50)
        x = x0.clone()
        calls = 0
        start = time.perf_counter()
        for t in sched.timesteps:
            inp = sched.scale_model_input(x, t)
            out = inp.clone()  # the "model"
            x = sched.step(out, t, x, **kw).prev_sample
            calls += 1
        el = time.perf_counter() - start
        spent += el
        per_call.append(el / calls)
    return statistics.median(per_call)


def randn_ns(n=1 << 20, dtype=torch.float32):
    a = torch.empty(n, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(20):
        s = time.perf_counter()
        torch.randn(n, out=a, generator=gen)
        best = min(best, time.perf_counter() - s)
    return best / n * 1e9


def criterion_results(root):
    res = {}
    for f in glob.glob(os.path.join(root, "**", "new", "benchmark.json"), recursive=True):
        with open(f) as fh:
            full_id = json.load(fh)["full_id"]
        with open(os.path.join(os.path.dirname(f), "estimates.json")) as fh:
            res[full_id] = json.load(fh)["median"]["point_estimate"] * 1e-9
    return res


def fit(xs, ys):
    """Least-squares line y = a + b x: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def scaling(ours, rayon):
    import math

    for name in ["ddim_step", "dpmpp_2m_sde_step"]:
        pts = sorted(
            (int(k.rsplit("/", 1)[1]), v) for k, v in ours.items() if k.startswith(f"scaling/{name}/")
        )
        if len(pts) < 3:
            continue
        _, slope = fit([math.log(n) for n, _ in pts], [math.log(t) for _, t in pts])
        a, b = fit([n for n, _ in pts], [t for _, t in pts])
        print(f"{name}: log-log slope {slope:.3f} over {pts[0][0]}..{pts[-1][0]} elements; "
              f"linear fit {b * 1e9:.3f} ns/element + {a * 1e6:.1f} µs")
        print("| elements | time | ns/element |" + (" rayon (2 threads) | speed-up |" if rayon else ""))
        print("|---:|---:|---:|" + ("---:|---:|" if rayon else ""))
        for n, t in pts:
            row = f"| {n} | {t * 1e6:.1f} µs | {t / n * 1e9:.3f} |"
            r = rayon.get(f"scaling/{name}/{n}")
            if rayon:
                row += f" {r * 1e6:.1f} µs | {t / r:.2f}× |" if r else " | |"
            print(row)
        print()


def main():
    torch.set_num_threads(2)
    diffusers.utils.logging.set_verbosity_error()
    here = os.path.dirname(os.path.abspath(__file__))
    ours = criterion_results(os.path.join(here, "..", "target", "criterion"))
    if not ours:
        sys.exit("no criterion results: run `cargo bench --bench steps` first")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"diffusers {diffusers.__version__}\n")
    for shape in SHAPES:
        key = "x".join(map(str, shape))
        print(f"### {key}, f32, per model call\n")
        print("| sampler | diffusers | ours | speed-up | floor | ours / floor |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, (cls, opts, _, floors) in SAMPLERS.items():
            our = ours.get(f"step/{key}/f32/sampler/{name}")
            fl = [ours.get(f"step/{key}/f32/floor/{f}") for f in floors]
            if our is None or any(v is None for v in fl):
                continue
            floor = sum(fl) / len(fl)
            theirs = diffusers_per_call(cls, opts, shape)
            mark = " (target)" if name in DETERMINISTIC_TARGET | STOCHASTIC_TARGET else ""
            print(f"| {name}{mark} | {theirs * 1e6:.1f} µs | {our * 1e6:.2f} µs | {theirs / our:.1f}× | "
                  f"{floor * 1e6:.2f} µs ({'/'.join(floors)}) | {our / floor:.2f} |")
        print()
    rayon = criterion_results(os.path.join(here, "..", "target", "criterion-rayon"))
    print("### Scaling (f32, 1 x 4 x side x side)\n")
    scaling(ours, rayon)
    ours_noise = ours.get("noise/seeded_ziggurat_f32")
    t = randn_ns()
    line = f"torch.randn: {t:.2f} ns/sample"
    if ours_noise:
        n = 1 << 20
        line += f"; SeededNoise f32: {ours_noise / n * 1e9:.2f} ns/sample ({t / (ours_noise / n * 1e9):.1f}× faster)"
    print(line)
    n = 1 << 20
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        ours_torch = ours.get(f"noise/torch_generator_{name}")
        if ours_torch:
            t = randn_ns(dtype=dtype)
            o = ours_torch / n * 1e9
            print(f"torch.randn {name}: {t:.2f} ns/sample; TorchGenerator (same values): {o:.2f} ns/sample "
                  f"({t / o:.2f}× torch's speed)")
    r = rayon.get("noise/seeded_ziggurat_f32")
    if ours_noise and r:
        print(f"SeededNoise f32 with rayon (2 threads): {r / (1 << 20) * 1e9:.2f} ns/sample ({ours_noise / r:.2f}×)")


if __name__ == "__main__":
    main()
