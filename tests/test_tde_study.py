"""studies/tde_study.py: the held-out split, the study JSON (schema, resume) and the mean ± std table."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "studies"))
import tde_study  # noqa: E402

METRICS = ("AP", "AP50", "APr", "APc", "APf", "APbox", "AP_fixed")


SHORT = {"iters": 350, "ims_per_batch": 4}
FULL = {"iters": 700, "ims_per_batch": 8}


def _run(dataset, model, seed, ap, rule=None, alpha=None, apr=None, gamma=None, schedule=SHORT):
    metrics = {m: ap + k for k, m in enumerate(METRICS)}
    if apr is not None:
        metrics["APr"] = apr
    return {"dataset": dataset, "model": model, "alpha": alpha, "alpha_rule": rule, "gamma": gamma, "seed": seed,
            "schedule": dict(schedule), "metrics": metrics}


def _softmax(dataset, seed, ap, norcal_ap, schedule=SHORT):
    return [_run(dataset, "softmax", seed, ap, schedule=schedule),
            _run(dataset, "softmax_norcal", seed, norcal_ap, "heldout", gamma=0.5, schedule=schedule)]


def _deconfound(dataset, seed, plain_ap, tde_ap, schedule=SHORT):
    return [_run(dataset, "plain", seed, plain_ap, schedule=schedule)] + [
        _run(dataset, "tde", seed, tde_ap, rule, a, schedule=schedule)
        for rule, a in (("paper", 1.5), ("heuristic", 1.1), ("heldout", 0.5))
    ] + [_run(dataset, "plain_norcal", seed, plain_ap + 0.5, "heldout", gamma=0.25, schedule=schedule)]


def test_heldout_split_is_deterministic_disjoint_and_keeps_every_class():
    # 40 images; class 1 in every image, class 2 in images 0-1 only, class 3 in images 0-9
    images = [{"id": i} for i in range(40)]
    anns = [{"image_id": i, "category_id": 1} for i in range(40)]
    anns += [{"image_id": i, "category_id": 2} for i in range(2)] + [{"image_id": i, "category_id": 3} for i in range(10)]
    train = {"images": images, "annotations": anns}
    fit, held = tde_study.heldout_split(train, fraction=0.25, seed=3)
    assert (fit, held) == tde_study.heldout_split(train, fraction=0.25, seed=3)
    assert sorted(fit + held) == list(range(40)) and not set(fit) & set(held)
    assert len(held) == 10
    for c in (1, 2, 3):  # every class keeps >= 1 training image
        assert any(a["category_id"] == c and a["image_id"] in set(fit) for a in anns)
    assert tde_study.heldout_split(train, fraction=0.25, seed=4) != (fit, held)
    with pytest.raises(ValueError, match="fraction"):
        tde_study.heldout_split(train, fraction=1.5)


def test_check_study_rejects_schema_violations():
    good = {"runs": _softmax("demo", 0, 10.0, 11.0) + _deconfound("demo", 0, 20.0, 19.0, FULL)}
    tde_study.check_study(good)
    bad_cases = [
        {"runs": [_run("demo", "softmax_norcal", 0, 1.0, "heldout")]},  # NorCal without gamma
        {"runs": [_run("demo", "softmax_norcal", 0, 1.0, gamma=0.5)]},  # ... or without its rule
        {"runs": [_run("demo", "plain", 0, 1.0, gamma=0.5)]},  # gamma on a non-NorCal run
        {"runs": [_run("demo", "softmax", 0, 1.0, schedule={"iters": 350})]},
        {"runs": [{k: v for k, v in _run("demo", "softmax", 0, 1.0).items() if k != "schedule"}]},
        {"rows": []},
        {"runs": [dict(_run("demo", "softmax", 0, 1.0), extra=1)]},
        {"runs": [_run("demo", "tde", 0, 1.0)]},  # tde without alpha / rule
        {"runs": [_run("demo", "plain", 0, 1.0, "paper", 1.5)]},  # plain with a rule
        {"runs": [_run("demo", "cosine", 0, 1.0)]},
        {"runs": [dict(_run("demo", "softmax", 0, 1.0), seed="0")]},
        {"runs": [dict(_run("demo", "softmax", 0, 1.0), metrics={"AP": 1.0})]},
    ]
    for bad in bad_cases:
        with pytest.raises(ValueError):
            tde_study.check_study(bad)


def test_append_runs_resume_and_plan(tmp_path):
    path = str(tmp_path / "study.json")
    assert tde_study.load_study(path) == {"runs": []}
    assert not tde_study.unit_done({"runs": []}, "demo", "softmax", 0)
    tde_study.append_runs(path, _softmax("demo", 0, 10.0, 11.0))
    data = tde_study.append_runs(path, _deconfound("demo", 0, 20.0, 19.0)[:2])  # a partly written unit
    assert tde_study.unit_done(data, "demo", "softmax", 0)
    assert not tde_study.unit_done(data, "demo", "softmax", 0, FULL)  # another schedule is another unit
    assert not tde_study.unit_done(data, "demo", "deconfound", 0)
    assert not tde_study.unit_done(data, "demo", "softmax", 1) and not tde_study.unit_done(data, "fine", "softmax", 0)
    data = tde_study.append_runs(path, _deconfound("demo", 0, 21.0, 18.0))  # re-run replaces, no duplicates
    assert tde_study.unit_done(data, "demo", "deconfound", 0)
    assert len(data["runs"]) == 7 and json.load(open(path)) == data
    data = tde_study.append_runs(path, _deconfound("demo", 0, 30.0, 31.0, FULL))  # same unit, other schedule: kept apart
    assert len(data["runs"]) == 12 and tde_study.unit_done(data, "demo", "deconfound", 0, FULL)
    assert [r["metrics"]["AP"] for r in data["runs"] if r["model"] == "plain"] == [21.0, 30.0]
    # seed-major order: both data sets and models of seed 0 before any of seed 1
    units = tde_study.plan([0, 1, 2], ["demo", "fine"])
    assert units[:4] == [("demo", "softmax", 0), ("demo", "deconfound", 0), ("fine", "softmax", 0),
                         ("fine", "deconfound", 0)]
    assert [u[2] for u in units] == [0] * 4 + [1] * 4 + [2] * 4
    with open(path, "w") as f:
        json.dump({"runs": [{"dataset": "demo"}]}, f)
    with pytest.raises(ValueError, match="run 0"):
        tde_study.load_study(path)


def test_mean_std_table_and_paired_differences():
    runs = []
    for seed, (soft, plain, tde) in enumerate([(10.0, 20.0, 19.0), (12.0, 22.0, 23.0), (14.0, 24.0, 21.0)]):
        runs += _softmax("demo", seed, soft, soft + seed)
        runs += _deconfound("demo", seed, plain, tde)
    runs.append(_run("fine", "softmax", 0, 5.0))
    runs += _deconfound("demo", 0, 40.0, 41.0, FULL)  # another schedule: a table of its own
    data = {"runs": runs}
    table = tde_study.mean_std_table(data, "demo", SHORT).splitlines()
    assert table[0].startswith("| model | rule | seeds |")
    assert len(table) == 2 + 7
    softmax = table[2].split("|")
    # AP 10, 12, 14 -> mean 12.0, sample std 2.0; AP50 = AP + 1 -> 13.0 ± 2.0; 3 seeds
    assert softmax[3].strip() == "3" and softmax[5].strip() == "12.0 ± 2.0" and softmax[6].strip() == "13.0 ± 2.0"
    paper = next(line for line in table if "| paper |" in line).split("|")
    # TDE AP 19, 23, 21 -> 21.0 ± 2.0; alphas listed per seed
    assert paper[5].strip() == "21.0 ± 2.0" and paper[4].strip() == "α 1.50, 1.50, 1.50"
    norcal = next(line for line in table if "softmax + NorCal" in line).split("|")
    assert norcal[4].strip() == "γ 0.50, 0.50, 0.50" and norcal[5].strip() == "13.0 ± 3.0"  # 10, 13, 16
    fine = tde_study.mean_std_table(data, "fine", SHORT).splitlines()
    assert len(fine) == 3 and fine[2].split("|")[5].strip() == "5.0"  # one seed: no std
    diffs = tde_study.paired_differences(data, "demo", schedule=SHORT)
    assert diffs["TDE paper − plain"] == [-1.0, 1.0, -3.0] and diffs["TDE heldout − plain"] == [-1.0, 1.0, -3.0]
    assert diffs["NorCal − softmax"] == [0.0, 1.0, 2.0] and diffs["plain NorCal − plain"] == [0.5, 0.5, 0.5]
    assert diffs["TDE paper − softmax NorCal"] == [9.0, 10.0, 5.0]
    assert tde_study.paired_differences(data, "demo", schedule=FULL)["TDE paper − plain"] == [1.0]
    assert tde_study.schedules_in(data, "demo") == [SHORT, FULL]
    text = tde_study.format_tables(data)
    assert "AP TDE paper − plain -1.0 ± 2.0" in text and "**fine**" in text
    assert "schedule 350 × 4" in text and "schedule 700 × 8" in text


def test_classifier_stats_norms_and_alignment_by_hand():
    import numpy as np
    import torch
    from tde_study_figures import classifier_stats

    # 2 foreground classes + background, D = 4, K = 2 heads of 2
    w = torch.tensor([[3.0, 4.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mean = torch.tensor([1.0, 0.0, 0.0, 5.0])  # d̂ = (1, 0) in head 1, (0, 1) in head 2
    norms, align = classifier_stats({"roi_heads.box_predictor.cls_score.weight": w,
                                     "roi_heads.box_predictor.cls_score.mean_feature": mean})
    assert np.allclose(norms, [np.sqrt(29.0), np.sqrt(2.0)])  # background row dropped
    # class 0: head 1 cos((3,4),(1,0)) = 0.6, head 2 cos((0,2),(0,1)) = 1 -> 0.8; class 1: (0 + 0) / 2
    assert np.allclose(align, [0.8, 0.0])
    norms, align = classifier_stats({"roi_heads.box_predictor.cls_score.weight": w})
    assert align is None and len(norms) == 2


def test_update_doc_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text(f"# R\n\nbefore\n{tde_study.TABLE_BEGIN}\nold table\n{tde_study.TABLE_END}\nafter\n")
    tde_study.update_doc(str(doc), "| new |")
    text = doc.read_text()
    assert "old table" not in text and "| new |" in text and text.startswith("# R\n\nbefore\n") and text.endswith("after\n")
    tde_study.update_doc(str(doc), "| newer |")  # idempotent block
    assert "| new |" not in doc.read_text() and doc.read_text().count(tde_study.TABLE_BEGIN) == 1
    (tmp_path / "S.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="no"):
        tde_study.update_doc(str(tmp_path / "S.md"), "x")


def test_group_shares_from_details():
    details = {"350x4/demo/deconfound/seed0": {"val": {"mean_cos": 0.5, "top1_plain": [6, 3, 1, 0],
                                                        "top1": {"alpha=1.5": [4, 3, 2, 1]}}},
               "350x4/demo/softmax/seed0": {},
               "350x4/fine/deconfound/seed0": {"val": {"mean_cos": 0.4, "top1_plain": [1], "top1": {"alpha=1.5": [1]}}},
               "700x8/demo/deconfound/seed0": {"val": {"mean_cos": 0.9, "top1_plain": [1, 0, 0, 0],
                                                        "top1": {"alpha=1.5": [1, 0, 0, 0]}}}}
    shares = tde_study.group_shares(details, "demo", ["f", "c", "r", "r"])
    assert list(shares) == ["seed0"]
    cos, sh = shares["seed0"]
    assert cos == 0.5 and sh["plain"] == {"f": 0.6, "c": 0.3, "r": 0.1} and sh["alpha=1.5"] == {"f": 0.4, "c": 0.3, "r": 0.3}
    assert tde_study.group_shares(details, "demo", ["f", "c", "r", "r"], schedule=FULL)["seed0"][0] == 0.9
    text = tde_study.format_tables({"runs": [_run("demo", "softmax", 0, 1.0)]}, details, {"demo": ["f", "c", "r", "r"]})
    assert "plain 0.60/0.30/0.10, TDE α=1.5 0.40/0.30/0.30" in text
