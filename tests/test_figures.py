"""The prediction-distribution figure (tde_det.analysis.figures): its numbers by hand, and a picture at
6 classes and at LVIS v1's 1,203 (synthetic counts: studies/prediction_distribution_example.py)."""

from collections import OrderedDict

import numpy as np
import pytest
from helpers import load_script
from matplotlib.pyplot import imread

from tde_det.analysis.figures import SMOOTH_ABOVE, plot_prediction_distribution, prediction_shares


def assert_png(path, min_size=(300, 800)):
    pixels = imread(path)
    assert pixels.shape[0] >= min_size[0] and pixels.shape[1] >= min_size[1] and pixels.std() > 0.01


def test_shares_sorted_by_training_images_and_summed_per_group():
    train = [3, 100, 20, 60, 1, 40]  # sorted: classes 1, 3, 5, 2, 0, 4
    counts = OrderedDict([("plain", [0, 50, 5, 30, 0, 10]), ("ground truth", [1, 9, 3, 7, 1, 4])])
    freq = ["r", "f", "c", "c", "r", "c"]
    data = prediction_shares(train, counts, freq)
    assert data["order"].tolist() == [1, 3, 5, 2, 0, 4] and data["window"] == 1
    assert data["shares"]["plain"] == pytest.approx(np.array([50, 30, 10, 5, 0, 0]) / 95)
    assert data["smoothed"]["plain"] == pytest.approx(data["shares"]["plain"])  # few classes: no moving mean
    assert data["groups"]["plain"] == pytest.approx({"f": 50 / 95, "c": 45 / 95, "r": 0.0})
    assert list(data["groups"]["ground truth"]) == ["f", "c", "r"]
    assert data["groups"]["ground truth"] == pytest.approx({"f": 9 / 25, "c": 14 / 25, "r": 2 / 25})
    with pytest.raises(ValueError, match="has 2 counts"):
        prediction_shares([1, 2, 3], {"x": [1, 2]})
    with pytest.raises(ValueError, match="frequency has 2 entries"):
        prediction_shares([1, 2, 3], {"x": [1, 2, 3]}, ["r", "c"])


def test_many_classes_get_a_centred_moving_mean():
    rng = np.random.default_rng(0)
    num = 1203
    train = rng.integers(1, 5000, num)
    counts = {"x": rng.integers(0, 50, num)}
    data = prediction_shares(train, counts)
    w = data["window"]
    assert num > SMOOTH_ABOVE and w % 2 == 1 and w == 21  # about 1203 / 60, odd
    s, m = data["shares"]["x"], data["smoothed"]["x"]
    assert m[600] == pytest.approx(s[600 - w // 2 : 600 + w // 2 + 1].mean())
    assert m[0] == pytest.approx(s[: w // 2 + 1].mean()) and m[-1] == pytest.approx(s[-(w // 2 + 1) :].mean())


def test_figure_at_6_and_at_1203_classes(tmp_path):
    counts = OrderedDict([("plain", [50, 30, 10, 5, 0, 0]), ("TDE", [30, 25, 15, 10, 5, 5]),
                          ("ground truth", [9, 7, 4, 3, 1, 1])])  # fmt: skip
    assert_png(plot_prediction_distribution([100, 60, 40, 20, 3, 1], counts, str(tmp_path / "six.png"),
                                            frequency=list("fcccrr"), class_names=list("abcdef")))
    example = load_script("studies/prediction_distribution_example.py", "prediction_distribution_example")
    names, frequency, train, series = example.synthetic_lvis_counts(seed=0)
    assert len(names) == len(train) == 1203 and {f: frequency.count(f) for f in "rcf"} == {"r": 337, "c": 461, "f": 405}
    data = prediction_shares(train, series, frequency)
    # the made-up "plain" detector over-predicts frequent classes, "TDE" less so: the figure's story
    assert data["groups"]["plain"]["r"] < data["groups"]["TDE (alpha=1.5)"]["r"] < data["groups"]["ground truth"]["r"]
    example.main([str(tmp_path / "lvis.png")])
    assert_png(tmp_path / "lvis.png")


def test_visualize_labels_fit_the_panel_and_stay_inside_the_image():
    tool = load_script("tools/visualize.py", "tool_visualize_labels")
    image = np.zeros((96, 64, 3), dtype=np.uint8)  # a demo-sized image, drawn at PANEL_PX
    from detectron2.structures import Boxes, Instances
    import torch

    inst = Instances((96, 64), pred_boxes=Boxes(torch.tensor([[40.0, 80.0, 63.0, 95.0]])),
                     scores=torch.tensor([0.9]), pred_classes=torch.tensor([0]))
    seen = {}

    def draw(vis):
        vis.draw_text("a label far too long for this small image", (60.0, 95.0))
        out = vis.draw_instance_predictions(inst)
        seen["vis"] = out
        return out

    drawn = tool.draw_detections(image, None, draw)
    assert max(drawn.shape[:2]) == pytest.approx(tool.PANEL_PX, abs=1)
    out = seen["vis"]
    renderer = out.canvas.get_renderer()
    assert len(out.ax.texts) == 2
    for text in out.ax.texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= out.fig.bbox.width and box.y1 <= out.fig.bbox.height
        assert box.height <= 2 * tool.LABEL_PX  # the text's height in panel pixels, not 10 image pixels x scale
