"""scripts/device_check/device_report.py, the checks and the report of scripts/device_check/device_check.sh (the GPU check).

The check itself runs on the borrowed GPU machine or with --simulate (minutes); these tests give its
parts made-up step outputs: each check must fail on what it exists to catch.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts", "device_check"))

import device_report  # noqa: E402


def junit(path, cases):
    """A pytest-style junit file; cases: (classname, name, outcome, message)."""
    body = []
    for cls, name, outcome, msg in cases:
        inner = {"passed": "", "failed": f'<failure message="{msg}">trace</failure>',
                 "skipped": f'<skipped type="pytest.skip" message="{msg}">skip</skipped>'}[outcome]
        body.append(f'<testcase classname="{cls}" name="{name}" time="0.1">{inner}</testcase>')
    path.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
                    + "".join(body) + "</testsuite></testsuites>")
    return str(path)


@pytest.mark.parametrize(
    "name, is_cuda",
    [
        ("test_logits[cuda-1]", True), ("test_predict_probs_modes[cuda]", True), ("test_x[2-cuda]", True),
        ("test_cuda_float16_autocast_scores_are_fp32", True), ("test_predict_probs_modes[cpu]", False),
        ("test_cuda_device_without_cuda_is_a_clear_error", False), ("test_x[cudax]", False),
        ("test_recognised[test_x[cuda-1]-True]", False), ("test_y[cuda:0]", True),
    ],
)
def test_gpu_tests_are_recognised_by_their_parameter_or_name(name, is_cuda):
    assert device_report.is_cuda_test(name) is is_cuda


def test_tests_report_on_the_gpu_machine_fails_on_gpu_skips_and_needs_a_gpu_test(tmp_path, capsys):
    cases = [("tests.test_a", "test_f[cpu]", "passed", ""), ("tests.test_a", "test_f[cuda]", "skipped", "no GPU"),
             ("tests.test_b", "test_g", "skipped", "checks the no-CUDA messages")]
    xml = junit(tmp_path / "j.xml", cases)
    out = tmp_path / "t.json"
    assert device_report.main(["tests", str(out), xml, str(tmp_path / "none.log"), "--mode", "simulate"]) == 0
    report = json.loads(out.read_text())
    assert report["counts"] == {"passed": 1, "skipped": 2}
    assert report["cuda_tests"] == {"tests.test_a::test_f[cuda]": "skipped"}
    assert report["skipped_for_lack_of_gpu"] == ["tests.test_a::test_f[cuda]"]
    assert device_report.main(["tests", str(out), xml, "x.log", "--mode", "device"]) == 1
    assert "skipped for lack of a GPU" in capsys.readouterr().err
    # on the machine with the CUDA test passing (the no-CUDA message test skipping is fine) ...
    cases[1] = ("tests.test_a", "test_f[cuda]", "passed", "")
    assert device_report.main(["tests", str(out), junit(tmp_path / "j.xml", cases), "x.log", "--mode", "device"]) == 0
    # ... but any failure fails the step
    cases.append(("tests.test_c", "test_h", "failed", "boom"))
    assert device_report.main(["tests", str(out), junit(tmp_path / "j.xml", cases), "x.log", "--mode", "device"]) == 1
    assert "1 failed: tests.test_c::test_h" in capsys.readouterr().err


def test_tests_report_reads_the_verbose_log_when_pytest_was_killed(tmp_path):
    log = tmp_path / "pytest.log"
    log.write_text("tests/test_a.py::test_f[cpu] PASSED [ 10%]\n"
                   "[gw1] [ 20%] PASSED tests/test_a.py::test_f[cuda] \n"
                   "[gw0] [ 30%] FAILED tests/test_b.py::test_g \n"
                   "tests/test_b.py::test_h \n")  # started, never finished
    out = tmp_path / "t.json"
    assert device_report.main(["tests", str(out), str(tmp_path / "missing.xml"), str(log), "--mode", "device"]) == 1
    report = json.loads(out.read_text())
    assert report["counts"] == {"passed": 2, "failed": 1} and report["source"].startswith("log")


def _training_output(tmp_path, losses, modes=("plain", "tde_alpha1.5"), mean=None, iters=40, ap=1.5):
    out = tmp_path / "train"
    out.mkdir()
    lines = [dict(iteration=i, time=0.05 + 0.001 * i, total_loss=loss, loss_cls=loss / 2)
             for i, loss in zip(range(19, iters, 20), losses)]
    (out / "metrics.json").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    mean = torch.rand(16) if mean is None else mean
    torch.save({"model": {"roi_heads.box_predictor.cls_score.mean_feature": mean}, "iteration": iters - 1},
               out / "model_final.pth")
    results = {"demo_val": {m: {"results": {"segm": {"AP": ap}, "bbox": {"AP": 2.5}}} for m in modes}}
    (out / "lvis_results.json").write_text(json.dumps(results))
    return out


def test_train_report_accepts_a_sound_run_and_times_the_steady_windows(tmp_path):
    out = _training_output(tmp_path, [3.0, 2.0])
    report_file = tmp_path / "r.json"
    assert device_report.main(["train", str(report_file), str(out), "--iters", "40"]) == 0
    report = json.loads(report_file.read_text())
    assert report["iterations"] == 40 and report["eval_modes"] == ["plain", "tde_alpha1.5"]
    assert math.isclose(report["s_per_iter"], 0.05 + 0.001 * 39)  # the first window (warm-up) left out
    (m,) = report["mean_feature"].values()
    assert m["finite"] and m["norm"] > 0
    assert device_report.main(["train", str(report_file), str(out), "--iters", "40", "--need-ap"]) == 0


def test_train_report_needs_numeric_aps_only_when_asked(tmp_path, capsys):
    out = _training_output(tmp_path, [3.0, 2.0], ap=None)  # null: no detection (a short CPU run)
    assert device_report.main(["train", str(tmp_path / "r.json"), str(out), "--iters", "40"]) == 0
    assert device_report.main(["train", str(tmp_path / "r.json"), str(out), "--iters", "40", "--need-ap"]) == 1
    assert "mask or box AP is not a number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(losses=[3.0, float("nan")]), "non-finite losses"),
        (dict(losses=[3.0, 2.0], modes=("plain",)), "both inference modes"),
        (dict(losses=[3.0, 2.0], mean=torch.zeros(16)), "norm=0.0"),
        (dict(losses=[3.0, 2.0], mean=torch.full((16,), float("inf"))), "finite=False"),
        (dict(losses=[3.0], iters=20), "trained 20 of 40 iterations"),
    ],
)
def test_train_report_fails_on_what_it_checks(tmp_path, capsys, kwargs, message):
    out = _training_output(tmp_path, **kwargs)
    assert device_report.main(["train", str(tmp_path / "r.json"), str(out), "--iters", "40"]) == 1
    assert message in capsys.readouterr().err


def test_deps_names_a_requirement_that_is_not_installed(tmp_path, capsys):
    site = tmp_path / "site"
    info = site / "carried-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: carried\nVersion: 1.0\n"
        "Requires-Dist: torch\nRequires-Dist: opencv-python>=4\n"
        "Requires-Dist: surely-not-installed-pkg-0\nRequires-Dist: other-missing; python_version < '3'\n"
        "Requires-Dist: docs-only; extra == 'docs'\n"
    )
    rc = device_report.main(["deps", str(site), "--json", str(tmp_path / "d.json")])
    problems = json.loads((tmp_path / "d.json").read_text())["problems"]
    # torch is there, and the markers / extras exclude the last two; opencv-python may be there (here)
    # or be met by the headless build (there): either way only the made-up name is missing.
    assert rc == 1 and problems == ["carried needs surely-not-installed-pkg-0, which is not installed"]
    assert "surely-not-installed-pkg-0" in capsys.readouterr().err


def _step(work, name, status, result=None):
    with open(work / "steps.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "status": status, "seconds": 1, "rc": 0, "limit_s": 9, "note": ""}) + "\n")
    if result is not None:
        (work / f"{name}.json").write_text(json.dumps(result))


def test_final_report_is_one_json_and_the_summary_line(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    _step(work, "env", "ok", {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "torch_cuda": "13.0"})
    _step(work, "tests", "ok", {"counts": {"passed": 170, "skipped": 3}, "cuda_tests": {"a[cuda]": "passed"}})
    _step(work, "train_fp32", "ok", {"s_per_iter": 0.051})
    _step(work, "train_amp", "ok", {"s_per_iter": 0.043})
    row = {"baseline_ms": 20.0, "tde_ms": 20.2, "ratio": 1.01}
    _step(work, "bench_predictor", "ok", {"rows": [dict(row, case="inference 2x1000 regions"),
                                                   dict(row, case="training 2x512 regions")]})
    _step(work, "bench_model", "ok", {"image_size": [800, 1333], "detections": [300, 300], "rows": [
        dict(row, case="inference, 1 image 800x1333"), dict(row, case="training step, 1 image"),
        dict(row, case="peak memory (max_memory_allocated), MiB")]})
    out = tmp_path / "out.json"
    assert device_report.main(["final", str(work), str(out), "--mode", "device"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("device check: NVIDIA H200, torch 2.11.0+cu130 CUDA 13.0 | tests 170 passed, 0 failed")
    assert "CUDA tests 1 passed/1" in line and "fp32 0.051 s/iter, AMP 0.043 s/iter" in line
    assert "inference 1.010x, train step 1.010x, peak memory 1.010x" in line
    assert "49.50 images/s TDE" in line and "800x1333, 300 detections" in line and line.endswith("all steps ok")
    assert [s["name"] for s in json.loads(out.read_text())["steps"]][:2] == ["env", "tests"]

    _step(work, "bench_extra", "timeout")
    assert device_report.main(["final", str(work), str(out), "--mode", "device"]) == 1
    assert capsys.readouterr().out.strip().endswith("FAILED: bench_extra")
    assert json.loads(out.read_text())["ok"] is False


def test_device_check_refuses_an_unknown_argument():
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "device_check", "device_check.sh"), "--simulat"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "error: unknown argument '--simulat'" in proc.stderr
