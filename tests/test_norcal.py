"""NorCal post-hoc calibration (issue 22): the formula, the class counts, the model hook, the
config key and its rows in the one-pass sweep. Tiny random-weight models; nothing is timed."""

import json
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from helpers import load_script, set_means
from test_alpha_sweep import NUM_CLASSES, Recorder, assert_same_detections, make_batches, tiny_cfg

from tde_det.data.class_counts import class_counts_from_json, dataset_class_counts, norcal_class_counts
from tde_det.engine import Trainer, check_config, inference_variants
from tde_det.errors import ConfigError, FilesMissing
from tde_det.analysis.alpha_sweep import AlphaSweep, check_gammas, inference_on_dataset_alphas, metric_rows
from tde_det.modeling.calibration import apply_norcal, norcal_probs

COUNTS = [400.0, 90.0, 30.0, 8.0, 2.0, 1.0]
SOFTMAX = ("MODEL.ROI_HEADS.NAME", "StandardROIHeads")


def reference_norcal(logits, counts, gamma):
    """NorCal "exps" with renormalisation, written out: s_c = exp(z_c) / N_c^γ, s_bg = exp(z_bg)."""
    z = logits.double().numpy()
    out = np.empty_like(z)
    for r in range(z.shape[0]):
        s = [math.exp(z[r, c]) / counts[c] ** gamma for c in range(len(counts))] + [math.exp(z[r, -1])]
        out[r] = np.array(s) / sum(s)
    return out


# ------------------------------------------------------------------- the formula
def test_norcal_probs_match_the_written_out_formula():
    z = torch.randn(7, len(COUNTS) + 1, generator=torch.Generator().manual_seed(0)) * 3
    for gamma in (0.25, 0.5, 1.0, 1.5):
        got = norcal_probs(z, COUNTS, gamma)
        np.testing.assert_allclose(got.double().numpy(), reference_norcal(z, COUNTS, gamma), rtol=1e-5, atol=1e-7)
        # the background is exempt: only the foreground logits move, rarer classes up
        assert not torch.allclose(got, torch.softmax(z, dim=1))
    assert torch.equal(norcal_probs(z, COUNTS, 0.0), torch.softmax(z, dim=1))  # γ = 0 is exactly softmax
    # fp16 logits give fp32 probabilities (scores are never low precision)
    assert norcal_probs(z.half(), COUNTS, 0.5).dtype == torch.float32


def test_norcal_bad_input_gets_clear_errors():
    z = torch.zeros(2, len(COUNTS) + 1)
    for counts, gamma, words in [
        (COUNTS, -0.5, ">= 0"), (COUNTS, float("nan"), "finite"), (COUNTS[:-1] + [0.0], 0.5, "count > 0"),
        ([[1.0, 2.0]], 0.5, "list of C numbers"), (COUNTS[:-1] + [float("inf")], 0.5, "count > 0"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            norcal_probs(z, counts, gamma)
    with pytest.raises(ValueError, match=r"\[R, C\+1\] = \[R, 6\]"):
        norcal_probs(z, COUNTS[:-1], 0.5)


# ------------------------------------------------------------------- class counts
def test_class_counts_from_json_files(tmp_path):
    listed = tmp_path / "counts.json"
    listed.write_text(json.dumps([3, 1, 2]))
    assert class_counts_from_json(str(listed)) == [3.0, 1.0, 2.0]
    lvis = tmp_path / "lvis.json"  # categories out of id order, with LVIS's image_count
    lvis.write_text(json.dumps({"categories": [{"id": 9, "image_count": 4}, {"id": 2, "image_count": 7}],
                                "annotations": []}))
    assert class_counts_from_json(str(lvis)) == [7.0, 4.0]
    coco = tmp_path / "coco.json"  # no image_count: images with the class, not instances
    anns = [(1, 5), (1, 5), (2, 5), (2, 3)]
    coco.write_text(json.dumps({"categories": [{"id": 5}, {"id": 3}],
                                "annotations": [{"image_id": i, "category_id": c} for i, c in anns]}))
    assert class_counts_from_json(str(coco)) == [1.0, 2.0]
    with pytest.raises(FilesMissing, match="MODEL.NORCAL.CLASS_COUNTS"):
        class_counts_from_json(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ConfigError, match="neither a JSON list"):
        class_counts_from_json(str(tmp_path / "bad.json"))


def test_class_counts_of_a_registered_dataset_without_json():
    name = "norcal_counts_dicts_only"
    records = [{"annotations": [{"category_id": 0}, {"category_id": 0}, {"category_id": 2}]},
               {"annotations": [{"category_id": 2}]}, {"annotations": []}]
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    assert dataset_class_counts([name]) == [1.0, 0.0, 2.0]
    assert dataset_class_counts([name, name]) == [2.0, 0.0, 4.0]
    cfg = tiny_cfg("standard", "DATASETS.TRAIN", f"('{name}',)")
    assert norcal_class_counts(cfg) == [1.0, 0.0, 2.0]


# ------------------------------------------------------------------- on a model
def _model(*opts):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts)).eval()
    set_means(model, 1)
    return model


@pytest.mark.parametrize("heads, opts", [("standard", SOFTMAX), ("cascade", ("MODEL.TDE.INFERENCE", "plain"))])
@torch.no_grad()
def test_apply_norcal_scores_every_stage_and_leaves_training_alone(heads, opts):
    model = _model(heads, *opts)
    predictors = model.roi_heads.box_predictor
    predictors = list(predictors) if isinstance(predictors, torch.nn.ModuleList) else [predictors]
    x = torch.randn(5, predictors[0].cls_score.weight.shape[1])
    raw = [p(x)[0] for p in predictors]
    apply_norcal(model, COUNTS, 0.5)
    for p, z in zip(predictors, raw):
        probs = torch.softmax(p(x)[0], dim=1)  # what Detectron2's predict_probs makes of the scores
        np.testing.assert_allclose(probs.double().numpy(), reference_norcal(z, COUNTS, 0.5), rtol=1e-5, atol=1e-7)
        p.train()
        assert torch.equal(p(x)[0], p.cls_score(x))  # training logits are untouched
        p.eval()
    apply_norcal(model, COUNTS, 0.0)  # γ = 0 removes it
    for p, z in zip(predictors, raw):
        assert torch.equal(p(x)[0], z)


def test_apply_norcal_refuses_what_it_cannot_calibrate():
    tde = _model("standard")  # MODEL.TDE.INFERENCE tde
    with pytest.raises(ConfigError, match="MODEL.TDE.INFERENCE plain"):
        apply_norcal(tde, COUNTS, 0.5)
    with pytest.raises(ConfigError, match="model has 6 classes"):
        apply_norcal(_model("standard", *SOFTMAX), COUNTS[:-1], 0.5)


@torch.no_grad()
def test_config_key_builds_a_calibrated_model_and_names_its_row(tmp_path):
    counts = tmp_path / "counts.json"
    counts.write_text(json.dumps(COUNTS))
    opts = ["MODEL.NORCAL.GAMMA", 0.5, "MODEL.NORCAL.CLASS_COUNTS", str(counts)]
    cfg = tiny_cfg("standard", *SOFTMAX, *opts)
    (key, label, _), = inference_variants(cfg)
    assert key == "softmax_norcal_gamma0.5" and label == "softmax (baseline) + NorCal (gamma=0.5)"
    model = Trainer.build_model(cfg).eval()
    x = torch.randn(4, model.roi_heads.box_predictor.cls_score.weight.shape[1])
    z = model.roi_heads.box_predictor.forward(x)[0]  # forward() skips the hook: the raw logits
    calibrated = torch.softmax(model.roi_heads.box_predictor(x)[0], dim=1)
    np.testing.assert_allclose(calibrated.double().numpy(), reference_norcal(z, COUNTS, 0.5), rtol=1e-5, atol=1e-7)
    # TDE heads: NorCal rescoring the plain logits only
    check_config(tiny_cfg("standard", "MODEL.TDE.INFERENCE", "plain", *opts), [])
    with pytest.raises(ConfigError, match="MODEL.TDE.INFERENCE plain"):
        check_config(tiny_cfg("standard", *opts), [])


# ------------------------------------------------------------------- in the one-pass sweep
@pytest.mark.parametrize("heads, opts, alphas", [("standard", SOFTMAX, []), ("cascade", (), [0.0, 1.5])])
def test_sweep_norcal_rows_equal_the_calibrated_model(heads, opts, alphas):
    model = _model(heads, *opts)
    batches = make_batches()
    recorders = {}

    def make(name):
        recorders[name] = recorders.get(name) or Recorder()
        return recorders[name]

    result = inference_on_dataset_alphas(model, batches, alphas, make, gammas=[0.0, 0.5, 1.0], class_counts=COUNTS)
    names = ["plain"] + [f"alpha={a:g}" for a in alphas] + ["norcal_gamma=0", "norcal_gamma=0.5", "norcal_gamma=1"]
    assert list(result.results) == names
    rows = metric_rows(result.results, alphas, [0.0, 0.5, 1.0])
    assert [r["gamma"] for r in rows][-3:] == [0.0, 0.5, 1.0] and rows[-1]["alpha"] is None
    state = model.state_dict()
    for gamma in (0.5, 1.0):
        ref = build_model(tiny_cfg(heads, *opts, "MODEL.TDE.INFERENCE", "plain")).eval()
        ref.load_state_dict(state)
        apply_norcal(ref, COUNTS, gamma)
        with torch.no_grad():
            expected = [o["instances"] for batch in batches for o in ref(batch)]
        got = recorders[f"norcal_gamma={gamma:g}"].outputs
        assert len(got) == len(expected) == 4
        for g, e in zip(got, expected):
            assert_same_detections(g, e)
    plain, calibrated = recorders["plain"].outputs, recorders["norcal_gamma=1"].outputs
    assert any(not torch.equal(p.scores, c.scores) for p, c in zip(plain, calibrated))  # γ matters here


def test_sweep_refuses_alpha_on_a_softmax_model_and_gammas_without_counts():
    softmax = _model("standard", *SOFTMAX)
    with pytest.raises(ConfigError, match="--gammas"):
        AlphaSweep(softmax, [1.0], gammas=[0.5], class_counts=COUNTS)
    with pytest.raises(ConfigError, match="class training counts"):
        AlphaSweep(_model("standard"), [1.0], gammas=[0.5])
    assert AlphaSweep(softmax, [0.0], gammas=[0.5], class_counts=COUNTS).values == ["plain", "norcal_gamma=0.5"]
    # tools/sweep_alpha.py: a softmax model has no alpha; by default its sweep has no "alpha=0" row, only plain
    tool = load_script("tools/sweep_alpha.py", "tool_sweep_alpha")
    args = tool.parse_args(["--config-file", "x.yaml", "--gammas", "0.5"])
    assert tool.sweep_alphas(tiny_cfg("standard", *SOFTMAX), args) == []
    assert tool.sweep_alphas(tiny_cfg("standard"), args) == tool.DEFAULT_ALPHAS
    assert NUM_CLASSES == len(COUNTS)
    assert check_gammas([]) == [] and check_gammas(["0.5", 1]) == [0.5, 1.0]
    for bad, words in [([0.5, -1], ">= 0"), ([1, 1.0], "twice"), (["x"], "numbers"), ([float("inf")], "finite")]:
        with pytest.raises(ConfigError, match=words):
            check_gammas(bad)
