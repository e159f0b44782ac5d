"""README.md is the front door: short, the two commands first, its Python snippets run as written, its
links lead somewhere, the CPU tour's commands parse and use each other's outputs, and the tools'
console stays quiet (Detectron2's config dump in OUTPUT_DIR/log.txt only)."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
TINY = "configs/demo/tde_mask_rcnn_tiny.yaml"


def readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", readme(), flags=re.S | re.M)


def commands(block):
    """The `.venv/bin/python ...` commands of a bash block, line continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line)[1:] for line in joined.splitlines() if line.startswith(".venv/bin/python ")]


def test_readme_is_short_with_the_two_commands_first_and_no_ci_jargon():
    lines = readme().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:40])
    assert "make demo" in head and "make test" in head
    text = readme()
    tour = text.index(f"tools/train_net.py --config-file {TINY}")
    assert tour < text.index("## Training and evaluating on LVIS") and tour < text.index("docs/ENVIRONMENT.md#")
    for jargon in (r"\blegs?\b", r"stand-in", r"peer suite", r"\b_C\b"):
        assert not re.search(jargon, text, flags=re.I), jargon


def _anchor(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_lead_to_files_and_headings():
    links = re.findall(r"\]\(([^)\s]+)\)", readme())
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10
    for link in local:
        path, _, anchor = link.partition("#")
        target = os.path.join(REPO, path) if path else README
        assert os.path.exists(target), f"README links to {link}, which does not exist"
        if anchor:
            with open(target, encoding="utf-8") as f:
                headings = re.findall(r"^#+ (.*)$", f.read(), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"README links to {link}: no such heading"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_readme_python_snippet_runs_as_written(index):
    """Each ```python block of the README, alone, in a fresh interpreter in the checkout."""
    code = blocks("python")[index]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert proc.returncode == 0, code + "\n" + proc.stderr[-3000:]


def test_tour_commands_parse_and_read_what_the_first_one_writes():
    from tde_det import get_tde_cfg

    tour = [c for block in blocks("bash") for c in commands(block) if TINY in c]
    scripts = [c[0] for c in tour]
    for tool in ("tools/train_net.py", "tools/sweep_alpha.py", "tools/visualize.py", "tools/export_model.py",
                 "datasets/check_lvis.py"):
        assert tool in scripts, f"the README's CPU tour does not run {tool}"
    assert tour[0][0] == "tools/train_net.py" and "--eval-only" not in tour[0]
    weights = os.path.join(get_tde_cfg(os.path.join(REPO, TINY)).OUTPUT_DIR, "model_final.pth")
    assert any("--eval-only" in c for c in tour)
    parsers = {
        "tools/train_net.py": lambda m: m.cli.add_arguments(m.default_argument_parser()).parse_args,
        "tools/sweep_alpha.py": lambda m: m.parse_args,
        "tools/visualize.py": lambda m: m.parse_args,
        "tools/export_model.py": lambda m: m.get_parser().parse_args,
    }
    for script, *argv in tour:
        assert os.path.isfile(os.path.join(REPO, script)), script
        assert os.path.isfile(os.path.join(REPO, argv[argv.index("--config-file") + 1]))
        if script in parsers:
            args = parsers[script](load_script(script, "readme_" + os.path.basename(script)[:-3]))(argv)
            if args.opts and "MODEL.WEIGHTS" in args.opts:  # later steps read the first step's weights
                assert args.opts[args.opts.index("MODEL.WEIGHTS") + 1] == weights


def test_tools_console_is_quiet_and_the_config_goes_to_the_log(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    for noise in ("Running with full config", "Environment info", "GeneralizedRCNN(", "FutureWarning",
                  "No CUDA runtime", "torch.meshgrid"):  # fmt: skip
        assert noise not in console, noise
    assert f"Environment, config and model: {out / 'log.txt'}" in console
    assert len(console.splitlines()) < 60
    log = (out / "log.txt").read_text()
    assert "Running with full config" in log and "Environment info" in log and "GeneralizedRCNN(" in log
    assert "MODEL:" in (out / "config.yaml").read_text()


def test_console_filter_keeps_warnings_and_drops_only_what_it_names():
    import logging

    from tde_det.engine import cli


    def record(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    keep = cli._FileOnly()
    table = record("detectron2.evaluation.lvis_evaluation", logging.INFO, "Evaluation results for bbox")
    assert keep.filter(table) and keep.filter(record("detectron2", logging.INFO, "Full config saved to x"))
    assert not keep.filter(record("detectron2", logging.INFO, "Running with full config:\nMODEL: ..."))
    with cli.info_to_file_only("detectron2.evaluation"):
        assert not keep.filter(table)
        assert keep.filter(record("detectron2.evaluation.lvis_evaluation", logging.WARNING, "No predictions!"))
        assert keep.filter(record("detectron2.evaluationx", logging.INFO, "another logger"))
    assert keep.filter(table)  # only inside the block
