"""The report model (interactive tables, galleries, one self-contained HTML) and the paper's figures."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from raydetect.config import AttributionConfig
from raydetect.errors import RaydetectError
from raydetect.explain import Explainer
from raydetect.report import Cell, Gallery, Heading, Image, Report, Table, Thumb
from raydetect.report.document import to_html, to_markdown, write_report
from raydetect.report.figures import (
    Figures,
    attribution_values,
    distribution_figure,
    explain_pairs,
    figure_blocks,
    heatmap_thumbnail,
    pairs_figure,
    relative_path,
    reread_image,
    roc_figure,
    round_robin,
    shown_path,
    thumbnail,
)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a valid PNG (PIL verifies its structure and CRCs)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    PILImage.open(io.BytesIO(data)).verify()
    return PILImage.open(io.BytesIO(data)).size


@pytest.fixture(scope="module")
def pairs(digits_model, digits_test):
    """Four real digits and their BIM twins, explained with IG on the black baseline."""
    from raydetect.attacks import make_attack
    from raydetect.config import AttackConfig

    x = torch.from_numpy(digits_test.images[:4])
    res = make_attack(digits_model, AttackConfig(eps=0.3, steps=5))(x, torch.from_numpy(digits_test.labels[:4]), np.arange(4))
    explainer = Explainer(digits_model, AttributionConfig(n_steps=8, baseline="black"))
    return explain_pairs(
        explainer, ["bim-a", "bim-a", "bim-b", "bim-b"], x.numpy(), res.adversarial.numpy(), np.arange(4), np.arange(4)
    )


def test_explained_pairs_carry_maps_and_predictions(pairs, digits_model) -> None:
    assert len(pairs) == 4
    for p in pairs:
        assert p.clean_map.shape == p.adversarial_map.shape == (8, 8)
        assert np.abs(p.clean_map).sum() > 0 and 0 < p.clean_conf <= 1 and 0 < p.adversarial_conf <= 1
        assert p.clean_pred.isdigit() and p.adversarial_pred.isdigit()
    # IG's completeness on the black baseline: the map sums to the logit gain of the explained class.
    p = pairs[0]
    x = torch.from_numpy(p.clean[None])
    with torch.no_grad():
        gain = digits_model(x)[0, int(p.clean_pred)] - digits_model(torch.zeros_like(x))[0, int(p.clean_pred)]
    assert abs(float(p.clean_map.sum()) - float(gain)) < 0.05 * abs(float(gain)) + 0.05


def test_every_figure_is_a_png_of_sensible_size(pairs) -> None:
    rng = np.random.default_rng(0)
    dists = {"bim-a": (rng.lognormal(0, 1, 800), rng.lognormal(-1, 1, 800)), "bim-b": (np.zeros(10), rng.random(10))}
    y = np.repeat([0, 1], 30)
    roc = {"bim-a": {"lr": (y, y + rng.normal(0, 0.7, 60)), "rf": (y, rng.random(60))}, "bim-b": {"lr": (y, rng.random(60))}}
    w, h = png_size(pairs_figure(pairs))
    assert w >= 800 and h >= 4 * 200
    w, h = png_size(distribution_figure(dists, "|attribution|"))
    assert w >= 600 and h >= 250
    w, h = png_size(roc_figure(roc))
    assert w >= 600 and h >= 300
    assert png_size(thumbnail(pairs[0].clean)) == (128, 128)
    assert png_size(heatmap_thumbnail(pairs[0].clean, pairs[0].clean_map)) == (128, 128)


def test_figure_blocks_name_the_files_they_draw(pairs) -> None:
    figs = Figures(pairs=pairs[:2], roc={"a": {"lr": (np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.3, 0.6]))}})
    figs.notes.append("Figure 2 needs quantile descriptors.")
    blocks, files = figure_blocks(figs, "paper_")
    assert set(files) == {"paper_figure1_pairs.png", "paper_roc.png"}
    assert [b.file for b in blocks if isinstance(b, Image)] == ["paper_figure1_pairs.png", "paper_roc.png"]
    assert "quantile descriptors" in to_markdown(Report("t", list(blocks)))


def test_attribution_values_come_from_the_quantile_descriptors() -> None:
    names = ["q0", "q1", "q2", "absq0", "absq1", "stat_sum", "conc_top1pct"]
    X = np.array([[-2.0, 0.0, 3.0, 0.5, 4.0, 9.0, 9.0]])
    values, what = attribution_values(X, names)
    assert values.tolist() == [[0.5, 4.0]] and "channel-summed" in what  # abs_quantiles preferred
    values, _ = attribution_values(X[:, [0, 1, 2, 5]], ["q0", "q1", "q2", "stat_sum"])
    assert values.tolist() == [[2.0, 0.0, 3.0]]
    values, what = attribution_values(np.ones((1, 4)), ["c0q0", "c0q1", "c1q0", "conc_gini"])
    assert values.shape == (1, 3) and "channel group" in what
    assert attribution_values(X[:, 5:], ["stat_sum", "conc_top1pct"]) is None


def test_round_robin_takes_one_per_group_in_turn() -> None:
    assert round_robin({"a": [1, 2, 3], "b": [4], "c": [5, 6]}, 4) == [("a", 1), ("b", 4), ("c", 5), ("a", 2)]
    assert round_robin({}, 4) == []
    # With a key, the same image is not shown twice while another is left.
    same = {"a": ["x", "y"], "b": ["x", "z"], "c": ["x"]}
    assert round_robin(same, 4, key=str) == [("a", "x"), ("b", "z"), ("c", "x"), ("a", "y")]


def test_paths_are_shown_relative_to_the_audited_root(tmp_path) -> None:
    root = tmp_path / "imgs"
    assert relative_path(str(root / "sub" / "a.png"), str(root)) == "sub/a.png"
    assert relative_path(str(root / "sub" / "a.png"), str(root) + "/") == "sub/a.png"
    assert relative_path(str(root / "a.png"), str(root / "a.png")) == "a.png"  # a single audited file
    assert relative_path("s3://bucket/in/x/a.jpg", "s3://bucket/in") == "x/a.jpg"
    assert relative_path("/elsewhere/a.png", str(root)) == "/elsewhere/a.png"
    assert shown_path("sklearn:digits/test", "digits-test-4", "digits") == "digits-test-4"
    pq = str(root / "part.parquet")
    assert shown_path(pq, f"{pq}#7", str(root)) == "part.parquet#7"
    assert shown_path(pq, "img-42", str(root)) == "part.parquet: img-42"


def test_reread_image_decodes_like_the_pipeline(tmp_path, digits_model) -> None:
    from tests.helpers import digit_png

    (tmp_path / "d.png").write_bytes(digit_png(3))
    img = reread_image(str(tmp_path / "d.png"), "d.png", digits_model.info.preprocess)
    assert img.shape == (1, 8, 8) and img.min() >= 0 and img.max() <= 1
    assert reread_image("sklearn:digits/test", "digits-test-2", digits_model.info.preprocess).shape == (1, 8, 8)
    with pytest.raises(RaydetectError, match="Parquet"):
        reread_image(str(tmp_path / "x.parquet"), "x.parquet#0", digits_model.info.preprocess)
    with pytest.raises(RaydetectError, match="cannot read"):
        reread_image(str(tmp_path / "gone.png"), "gone.png", digits_model.info.preprocess)


def test_interactive_table_and_gallery_render_self_contained(tmp_path) -> None:
    png = thumbnail(np.zeros((1, 8, 8), np.float32))
    rows = [[i, f"`img{i}.png`", Cell(f"{i * 10}%", i / 10), 1 / (i + 1)] for i in range(60)]
    report = Report("t", figures={"thumbs/001-image.png": png})
    report.add(
        Heading("g"),
        Gallery([Thumb([("thumbs/001-image.png", "image")], ["**#1** `a.png`", "score 0.9"])]),
        Table(["#", "path", "share", "score"], rows, interactive=True, markdown_limit=5, more="see rows.csv"),
        Table(["plain"], [[1.5]]),
    )
    page = to_html(report)
    # One file: the thumbnail is embedded, sorting and filtering are inline script, nothing is fetched.
    assert "data:image/png;base64," in page and "src='thumbs/" not in page
    assert page.count("<script>") == 1 and not re.search(r"(src|href)=['\"]?https?:", page)
    assert "id='rd-table-1-filter'" in page and "class='rd-sortable'" in page
    assert "data-v='0.5'" in page and ">50%<" in page  # a Cell sorts by its value, shows its text
    assert page.count("class='rd-sortable'") == 1  # the plain table stays plain
    md = to_markdown(report)
    assert "![image](thumbs/001-image.png)" in md and "img4.png" in md and "img5.png" not in md
    assert "55 more rows: see rows.csv" in md
    write_report(str(tmp_path / "r"), report)
    assert (tmp_path / "r" / "thumbs" / "001-image.png").read_bytes() == png
    assert (tmp_path / "r" / "report.html").read_text() == page


def test_coarse_layer_maps_are_fitted_to_the_image(pairs) -> None:
    """Layer explainers attribute to a coarser grid than the pixels; the overlays resize it."""
    from dataclasses import replace

    from raydetect.report.figures import fit_map

    coarse = np.arange(16, dtype=np.float32).reshape(4, 4)
    fitted = fit_map(coarse, (32, 32))
    assert fitted.shape == (32, 32) and fitted[0, 0] < fitted[-1, -1]
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert png_size(heatmap_thumbnail(image, coarse)) == (128, 128)
    p = replace(pairs[0], clean_map=coarse, adversarial_map=coarse)
    assert png_size(pairs_figure([p]))[0] >= 800
