"""The checks and the report of scripts/device_check/device_check.sh (one subcommand per step; stdlib + torch).

    python scripts/device_check/device_report.py deps SITE                     # carried wheels' needs all met?
    python scripts/device_check/device_report.py env JSON                      # torch / CUDA / GPU facts
    python scripts/device_check/device_report.py tests JSON JUNIT LOG --mode M # counts; CUDA tests ran on a GPU?
    python scripts/device_check/device_report.py train JSON OUTPUT_DIR --iters N [--need-ap]
    python scripts/device_check/device_report.py final WORK OUT_JSON --mode M  # one JSON + the summary line

Each subcommand writes its findings as JSON and exits 1 when the step's check fails, with the reason
on stderr (``error: ...``). ``final`` gathers every step (status, seconds, findings) from WORK into
OUT_JSON and prints the ``device check:`` line: GPU, test counts, TDE/Detectron2 ratios, images/s.
"""

import argparse
import importlib.metadata
import json
import math
import os
import re
import statistics
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# A carried wheel's requirement satisfied by another distribution preinstalled there.
PROVIDED_BY = {"opencv-python": ["opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"]}
# A CUDA test: "cuda" is one of its parameters ("test_x[cuda]", "test_x[2-cuda]") or in its name, except
# the tests of what happens WITHOUT CUDA. A skip reason saying that a GPU / CUDA is missing.
CUDA_NAME = re.compile(r"^test_\w*cuda")
NOT_CUDA_NAME = re.compile(r"without_cuda|no_cuda")
NO_GPU_SKIP = re.compile(r"\bno (gpu|cuda)\b|\b(needs?|requires?) (a )?(gpu|cuda)|cuda (is )?not available|without (a )?(gpu|cuda)\b",
                         re.I)
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    return 1


def write(path, data):
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- deps
def cmd_deps(args):
    """Every Requires-Dist (markers evaluated, extras ignored) of the dists in SITE is installed in a
    matching version, in SITE or preinstalled: the run cannot die on a missing package."""
    from packaging.requirements import Requirement

    site = Path(args.site)
    problems, checked = [], []
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        checked.append(f"{name} {dist.version}")
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            candidates = [req.name, *PROVIDED_BY.get(_norm(req.name), [])]
            found = None
            for cand in candidates:
                try:
                    found = (cand, importlib.metadata.version(cand))
                    break
                except importlib.metadata.PackageNotFoundError:
                    continue
            if found is None:
                problems.append(f"{name} needs {req}, which is not installed")
            elif found[0] == req.name and req.specifier and not req.specifier.contains(found[1], prereleases=True):
                problems.append(f"{name} needs {req}, found {found[0]} {found[1]}")
    write(args.json, {"carried": sorted(checked), "problems": problems})
    print(f"carried and importable from {site}: {', '.join(sorted(checked))}")
    if not checked:
        return fail(f"no distribution installed in {site}")
    if problems:
        return fail("missing or wrong requirements of the carried wheels: " + "; ".join(problems))
    print("every requirement of the carried wheels is met")
    return 0


# ---------------------------------------------------------------- env
def cmd_env(args):
    import numpy
    import torch

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
    for dist in ("detectron2", "fvcore", "lvis", "pycocotools", "opencv-python-headless", "Pillow"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    write(args.json, info)
    print(json.dumps(info))
    if args.need_cuda and not info["cuda_available"]:
        return fail("torch sees no CUDA device on this machine")
    return 0


# ---------------------------------------------------------------- tests
def _junit_cases(path):
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        nodeid = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = el.get("message", "")
                break
        cases.append({"id": nodeid, "outcome": outcome, "message": message})
    return cases


_VERBOSE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
_VERBOSE_XDIST = re.compile(r"^\[gw\d+\]\s+\[\s*\d+%\]\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\s+(\S+::\S+)")


def _log_cases(path):
    """Outcomes read from pytest -v lines (when pytest was killed before writing its junit file)."""
    cases = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = _VERBOSE.match(line)
        if m:
            cases[m.group(1)] = m.group(2).lower()
            continue
        m = _VERBOSE_XDIST.match(line)
        if m:
            cases[m.group(2)] = m.group(1).lower()
    return [{"id": k, "outcome": v, "message": ""} for k, v in cases.items()]


def is_cuda_test(name):
    """`name` (pytest's, with parameters) is a test that runs on CUDA."""
    base, _, params = name.partition("[")
    if params.endswith("]") and any(p == "cuda" or p.startswith("cuda:") for p in params[:-1].split("-")):
        return True
    return bool(CUDA_NAME.search(base)) and not NOT_CUDA_NAME.search(base)


def cmd_tests(args):
    source = "junit"
    if os.path.isfile(args.junit) and os.path.getsize(args.junit) > 0:
        cases = _junit_cases(args.junit)
    else:
        cases, source = _log_cases(args.log), "log (no junit file: pytest did not finish)"
    counts = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    cuda = [c for c in cases if is_cuda_test(c["id"].split("::")[-1])]
    no_gpu_skips = [c["id"] for c in cases if c["outcome"] == "skipped" and NO_GPU_SKIP.search(c["message"])]
    report = {
        "source": source,
        "counts": counts,
        "total": len(cases),
        "cuda_tests": {c["id"]: c["outcome"] for c in cuda},
        "skipped_for_lack_of_gpu": no_gpu_skips,
        "skip_reasons": sorted({c["message"] for c in cases if c["outcome"] == "skipped"}),
        "failed": [c["id"] for c in cases if c["outcome"] in ("failed", "error")],
    }
    write(args.json, report)
    print(f"tests ({source}): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    print(f"CUDA tests: {sum(o == 'passed' for o in report['cuda_tests'].values())} passed of {len(cuda)}")
    if not cases:
        return fail("no test outcome found")
    if report["failed"]:
        return fail(f"{len(report['failed'])} failed: " + ", ".join(report["failed"][:10]))
    if args.mode == "device" and no_gpu_skips:
        return fail(f"{len(no_gpu_skips)} tests skipped for lack of a GPU on the GPU machine: " + ", ".join(no_gpu_skips))
    if args.mode == "device" and not any(o == "passed" for o in report["cuda_tests"].values()):
        return fail("no CUDA test passed")
    return 0


# ---------------------------------------------------------------- train
def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def cmd_train(args):
    out = Path(args.output_dir)
    metrics_file = out / "metrics.json"
    if not metrics_file.is_file():
        return fail(f"{metrics_file} not found: training did not log")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in records if "total_loss" in r]
    if not train:
        return fail(f"{metrics_file} holds no training losses")
    bad = [(r.get("iteration"), k, r[k]) for r in train for k in LOSS_KEYS if k in r and not _finite(r[k])]
    # Detectron2 logs "time" (median of the last 20 iterations) every 20 iterations; the first window
    # holds the warm-up (cuDNN autotuning, allocator growth), so it is left out when there are others.
    times = [r["time"] for r in train if "time" in r]
    steady = times[1:] if len(times) > 1 else times
    report = {
        "iterations": max(r.get("iteration", -1) for r in train) + 1,
        "max_iter": args.iters,
        "s_per_iter": statistics.median(steady) if steady else None,
        "s_per_iter_windows": times,
        "first_losses": {k: train[0][k] for k in LOSS_KEYS if k in train[0]},
        "last_losses": {k: train[-1][k] for k in LOSS_KEYS if k in train[-1]},
        "nonfinite_losses": bad,
    }
    problems = []
    if bad:
        problems.append(f"non-finite losses: {bad[:5]}")
    if report["iterations"] < args.iters:
        problems.append(f"trained {report['iterations']} of {args.iters} iterations")
    final = out / "model_final.pth"
    if final.is_file():
        import torch

        state = torch.load(final, map_location="cpu", weights_only=False)
        means = {k: v for k, v in state["model"].items() if k.endswith("mean_feature")}
        report["mean_feature"] = {
            k: {"finite": bool(torch.isfinite(v).all()), "norm": float(v.float().norm()), "dim": v.numel()}
            for k, v in means.items()
        }
        if not means:
            problems.append("model_final.pth holds no mean_feature buffer (not a TDE model?)")
        for k, m in report["mean_feature"].items():
            if not m["finite"] or m["norm"] == 0:
                problems.append(f"{k}: finite={m['finite']} norm={m['norm']}")
    else:
        problems.append(f"{final} not found")
    results = out / "lvis_results.json"
    if results.is_file():
        # {dataset: {variant key ("plain", "tde_alpha1.5"): {"results": {"segm": {...}, "bbox": {...}}, ...}}}
        res = json.loads(results.read_text())
        report["eval"] = {
            ds: {key: {task: {m: rec.get("results", {}).get(task, {}).get(m) for m in ("AP", "APr", "APc", "APf")}
                       for task in ("segm", "bbox")}
                 for key, rec in variants.items()}
            for ds, variants in res.items()
        }
        keys = sorted({key for variants in res.values() for key in variants})
        report["eval_modes"] = keys
        if "plain" not in keys or not any(k.startswith("tde") for k in keys):
            problems.append(f"evaluation did not report both inference modes, plain and tde (found {keys})")
        # An AP may be null (undefined: no detection above threshold after a few iterations); after a
        # real schedule (--need-ap, on the GPU machine) a null AP means the model predicts nothing.
        if args.need_ap:
            for ds, variants in report["eval"].items():
                for key, r in variants.items():
                    if not all(_finite(r[task]["AP"]) for task in ("segm", "bbox")):
                        problems.append(f"{ds} {key}: mask or box AP is not a number ({r})")
    else:
        problems.append(f"{results} not found: no evaluation after training")
    report["problems"] = problems
    write(args.json, report)
    print(f"trained {report['iterations']} iterations, {report['s_per_iter']} s/iter (median), "
          f"last total_loss {report['last_losses'].get('total_loss')}, "
          f"mean feature norms {[round(m['norm'], 3) for m in report.get('mean_feature', {}).values()]}")
    if problems:
        return fail("; ".join(problems))
    return 0


# ---------------------------------------------------------------- final
def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _rows(bench):
    rows = bench.get("rows", bench) if isinstance(bench, dict) else bench
    return {r["case"].split(",")[0].split(" ")[0] + ("_mem" if "memory" in r["case"] else ""): r for r in rows or []}


def cmd_final(args):
    work = Path(args.work)
    steps = []
    steps_file = work / "steps.jsonl"
    if steps_file.is_file():
        steps = [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
    for s in steps:
        found = _load(work / f"{s['name']}.json")
        if found is not None:
            s["result"] = found
    by_name = {s["name"]: s for s in steps}
    report = {"mode": args.mode, "steps": steps, "ok": bool(steps) and all(s["status"] in ("ok", "skipped") for s in steps)}
    write(args.out_json, report)

    def result(name):
        return by_name.get(name, {}).get("result") or {}

    env = result("env")
    if args.mode == "device":
        where = f"{env.get('gpu', 'no GPU found')}, torch {env.get('torch', '?')} CUDA {env.get('torch_cuda', '?')}"
    else:
        where = f"SIMULATED on CPU ({env.get('cpu_count', '?')} cores), torch {env.get('torch', '?')}, Python {env.get('python', '?')}"
    parts = [where]
    tests = result("tests")
    if tests:
        c = tests.get("counts", {})
        cuda = tests.get("cuda_tests", {})
        parts.append(f"tests {c.get('passed', 0)} passed, {c.get('failed', 0) + c.get('error', 0)} failed, "
                     f"{c.get('skipped', 0)} skipped; CUDA tests {sum(o == 'passed' for o in cuda.values())} passed"
                     f"/{len(cuda)}")
    else:
        parts.append("tests: no result")
    trains = []
    for name, label in (("train_fp32", "fp32"), ("train_amp", "AMP")):
        t, st = result(name), by_name.get(name, {})
        if t.get("s_per_iter") is not None:
            trains.append(f"{label} {t['s_per_iter']:.3f} s/iter")
        else:
            trains.append(f"{label} {st.get('status', 'not run')}")
    parts.append("demo training " + ", ".join(trains))
    model = _rows(result("bench_model"))
    pred = _rows(result("bench_predictor"))
    ratio = []
    for label, rows, key in (("inference", model, "inference"), ("train step", model, "training"),
                             ("peak memory", model, "peak_mem"), ("predictor inference", pred, "inference"),
                             ("predictor train", pred, "training")):
        if key in rows:
            ratio.append(f"{label} {rows[key]['ratio']:.3f}x")
    parts.append("TDE/Detectron2 " + (", ".join(ratio) if ratio else "no ratios"))
    if "inference" in model:
        bench = result("bench_model")
        dets, size = bench.get("detections"), bench.get("image_size") or [800, 1333]
        parts.append(f"{1000 / model['inference']['tde_ms']:.2f} images/s TDE vs "
                     f"{1000 / model['inference']['baseline_ms']:.2f} Detectron2 at {size[0]}x{size[1]}"
                     + (f", {dets[1]} detections" if dets else ""))
    failed = [s["name"] for s in steps if s["status"] not in ("ok", "skipped")]
    parts.append("all steps ok" if report["ok"] else f"FAILED: {', '.join(failed) or 'no step ran'}")
    print("device check: " + " | ".join(parts))
    return 0 if report["ok"] else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("deps")
    p.add_argument("site")
    p.add_argument("--json", required=True)
    p = sub.add_parser("env")
    p.add_argument("json")
    p.add_argument("--need-cuda", action="store_true")
    p = sub.add_parser("tests")
    p.add_argument("json")
    p.add_argument("junit")
    p.add_argument("log")
    p.add_argument("--mode", choices=["device", "simulate"], required=True)
    p = sub.add_parser("train")
    p.add_argument("json")
    p.add_argument("output_dir")
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--need-ap", action="store_true", help="fail unless every variant's mask and box AP is a number")
    p = sub.add_parser("final")
    p.add_argument("work")
    p.add_argument("out_json")
    p.add_argument("--mode", choices=["device", "simulate"], required=True)
    args = parser.parse_args(argv)
    return {"deps": cmd_deps, "env": cmd_env, "tests": cmd_tests, "train": cmd_train, "final": cmd_final}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
