"""report.html and compare.html in a real browser: Debian's headless Chromium driven by Playwright.

Every image loads (naturalWidth > 0), the console stays clean, nothing is fetched, the verdict is visible, and a
folder model whose file is named `<img src=x onerror=alert(1)>.png` (and whose folder name has quotes and a
newline) reaches the report as text: no dialog opens, no script runs. Skipped, with the reason printed, only
where Chromium or Playwright is missing (`make test` installs Chromium as root on Debian)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from audit.pipeline import Pipeline
from audit.run_config import resolve_run_config
from reports.browser import browser_unavailable, check_page
from reports.compare import compare_reports
from tests import pipeline_factory as pf

WHY_NOT = browser_unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"browser check skipped: {WHY_NOT}")

HOSTILE_FILE = "<img src=x onerror=alert(1)>.png"


def audit(world, model, out, registry=None):
    registry = registry or pf.registry_with()
    flags = {"model": model, "data": str(world["preset"]), "data_root": world["data"], "out": out,
             "gates": str(world["gates"])}
    return Pipeline(resolve_run_config(flags, None, registry), registry=registry, load_model=pf.load_fake,
                    command=["audit", "run"]).run()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    preset, data = pf.make_dataset(root)
    model = pf.make_folder_model(root, data)
    return {"root": root, "preset": preset, "data": data, "model": model,
            "gates": pf.lenient_gates(root / "gates.yaml")}


def assert_clean(check):
    assert check.images and not check.broken_images, check.images
    assert all(i["naturalWidth"] > 0 for i in check.images)
    assert check.console_errors == [] and check.page_errors == []
    assert check.dialogs == [] and check.requests == []


def test_report_html_in_chromium(world, tmp_path):
    result = audit(world, world["model"], tmp_path / "out")
    shot = tmp_path / "report.png"
    check = check_page(result.paths["html"], screenshot=shot)
    assert_clean(check)
    assert len(check.images) == 6  # gate chart + one plot per stage
    assert check.verdict_visible and check.verdict_text == "PASS"
    assert "Release may proceed" in check.body_text
    screenshot = np.asarray(Image.open(shot).convert("L"))
    assert screenshot.shape == (900, 1200)
    assert screenshot.std() > 10  # a rendered page, not a blank one


def test_a_hostile_file_name_reaches_the_report_as_text(world, tmp_path):
    folder = tmp_path / "model \"quoted\" 'name'\nline"
    folder.mkdir()
    # no manifest: the record id is the file name itself; an exact training copy, so the copy stage lists it
    shutil.copyfile(world["data"] / "r003.png", folder / HOSTILE_FILE)
    for j in range(4):
        pf.write_png(folder / f"new{j}.png", pf.blob(500 + j))
    broken = pf.planted_stage("utility", {}, error="<script>alert(2)</script> failed")
    result = audit(world, folder, tmp_path / "out", pf.registry_with(utility=broken))
    assert HOSTILE_FILE in result.report["flagged_ids"]
    html = result.paths["html"].read_text()
    assert "<img src=x" not in html and "<script>alert" not in html
    check = check_page(result.paths["html"])
    assert_clean(check)
    assert check.verdict_visible and check.verdict_text == "ERROR"
    assert HOSTILE_FILE in check.text_content  # in the collapsed list of flagged images, as text
    assert "<script>alert(2)</script> failed" in check.body_text
    assert 'model "quoted" \'name\'' in check.body_text


def test_compare_html_in_chromium(world, tmp_path):
    good = audit(world, world["model"], tmp_path / "good")
    leaky = audit(world, world["model"], tmp_path / "leaky", pf.registry_with(membership=pf.planted_stage(
        "membership", {"best/auc": pf.est(0.8, 0.7, 0.9)})))
    result = compare_reports([good.paths["json"], leaky.paths["json"]], tmp_path / "cmp")
    check = check_page(result["paths"]["html"], verdict_selector="h1")
    assert_clean(check)
    assert len(check.images) == 1 and check.verdict_visible
    assert "FAIL" in check.body_text and "PASS" in check.body_text


def test_the_check_sees_dialogs_broken_images_console_errors_and_requests(tmp_path):
    # the same checks on a page that breaks every rule: they must fire, or the tests above prove nothing
    page = tmp_path / "bad.html"
    page.write_text("<html><body><div id='verdict-word'>PASS</div>"
                    "<img src='data:image/png;base64,AAAA'><img src=x onerror=alert(1)>"
                    "<script>console.error('bad')</script></body></html>")
    check = check_page(page)
    assert check.dialogs == ["alert: 1"]
    assert len(check.broken_images) == 2
    assert "bad" in check.console_errors
    assert any(url.endswith("/x") for url in check.requests)
