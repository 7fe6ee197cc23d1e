"""The Dagster UI in a real Chromium (Debian's, driven by Playwright): open ``daily_aggregates``,
launch a backfill of three days from its Materialize dialog, see it complete in the UI as one
run, and take the README's screenshots (``make screenshots`` writes them to docs/images/)."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from ml_platform.definitions import defs
from ml_platform.defs.lakehouse import checks
from ml_platform.defs.lakehouse.assets import sensor_chunks
from ml_platform.defs.lakehouse.sensors import RANGE_END, RANGE_START
from ml_platform.defs.resources import build_resources
from ml_platform_tests.defs.test_lakehouse import DAYS
from ml_platform_tests.feature_helpers import copy_feature_repo
from ml_platform_tests.helpers import tool_missing
from ml_platform_tests.servers import ROOT, dagster_daemon, free_port, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
#: Where the screenshots go besides the test's folder (``make screenshots``: docs/images).
SCREENSHOTS = os.environ.get("ML_PLATFORM_SCREENSHOTS")
#: The backfill page's status tag for a backfill that succeeded (Dagster's ``BackfillStatusTag``);
#: a failed one reads "Failed".
SUCCEEDED_TAGS = {BulkActionStatus.COMPLETED_SUCCESS: "Succeeded",
                  BulkActionStatus.COMPLETED: "Completed"}  # fmt: skip


def webserver(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    web = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p",
         str(port), "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        process_group=0,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
            return web, port
        except OSError:
            assert time.monotonic() < deadline, "webserver did not start"
            time.sleep(0.5)


def dismiss_welcome(page) -> None:
    """Dagster's community dialog may greet a first visit at any moment (seconds late on a busy
    machine) and cover the page: whenever it blocks an action, skip it."""
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())


def launch_backfill_from_the_asset_page(page, base: str, first: str, last: str) -> None:
    dismiss_welcome(page)
    page.goto(f"{base}/assets/daily_aggregates", wait_until="networkidle")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Show all partitions").click()
    select_partition_range(page, dialog, f"[{first}...{last}]", "3 partitions")
    dialog.get_by_role("button", name="Launch backfill").click()
    dialog.wait_for(state="hidden")


def select_partition_range(page, dialog, selection: str, shown: str, attempts: int = 6) -> None:
    """Type the range until the dialog counts it: on a busy machine the dialog may still be
    loading the partitions' status and reset the field after the first typing."""
    field = dialog.locator("input[type=text]").first
    for _ in range(attempts):
        page.wait_for_load_state("networkidle")
        field.fill(selection)
        field.press("Enter")
        try:
            dialog.get_by_text(shown).wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(
        f"the dialog never showed {shown!r}; field {field.input_value()!r}, dialog:\n"
        + dialog.inner_text()
    )


def wait_for_backfill(instance, daemon) -> tuple[PartitionBackfill, list[dg.DagsterRun]]:
    deadline = time.monotonic() + 240
    while True:
        assert daemon.poll() is None, "the daemon exited"
        backfills = instance.get_backfills()
        if backfills:
            [backfill] = backfills
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
            if runs and all(r.is_finished for r in runs) and backfill.status.value != "REQUESTED":
                return backfill, runs
        assert time.monotonic() < deadline, "the backfill did not finish"
        time.sleep(1)


def backfill_counts(page, asset: str) -> dict[str, str]:
    """The backfill page's partition counts of ``asset``, by column (its table is a grid of
    divs, no ARIA table: found by the classes of Dagster's ``VirtualizedTable``)."""
    headers = page.locator("[class*=VirtualizedTable_headerCell]").all_inner_texts()
    row = page.locator("[class*=VirtualizedTable_row_]").filter(has_text=asset)
    cells = row.locator("[class*=VirtualizedTable_cellBox]").all_inner_texts()
    assert headers[0] == "Asset name" and len(cells) == len(headers), (headers, cells)
    return {h.strip(): c.strip() for h, c in zip(headers[1:], cells[1:], strict=True)}


def fit_the_whole_graph(page) -> None:
    """Show every asset of the global lineage: all groups expanded, the explorer's sidebar hidden,
    then the graph zoomed to fit its canvas (a double click on the background, as a user would),
    and every asset's label asserted to lie inside the canvas, clear of its toolbar and zoom
    controls."""
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.get_by_text("daily_aggregates").first.wait_for()
    sidebar = page.get_by_placeholder("Jump to…")
    sidebar.locator("xpath=ancestor::div[.//button][1]").get_by_role("button").last.click()
    sidebar.wait_for(state="hidden")
    graph = page.locator("[data-svg-viewport]")  # Dagster's pannable, zoomable canvas
    names = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    for _ in range(5):
        page.wait_for_timeout(1000)  # the expanded groups' layout, and the last zoom, settle
        canvas = graph.bounding_box()
        # Nothing behind the toolbar or the zoom controls, which lie over the canvas.
        toolbar = page.locator("[class*=AssetGraphExplorer_topbarWrapper]").bounding_box()
        top = toolbar["y"] + toolbar["height"]
        right = page.locator("#zoom-slider-container").bounding_box()["x"]
        # A double click on the background zooms to fit: the bottom left corner (the toolbar
        # covers the top, the zoom controls the bottom right).
        graph.dblclick(position={"x": 5, "y": canvas["height"] - 5})
        page.wait_for_timeout(1000)
        boxes = {n: graph.get_by_text(n, exact=True).first.bounding_box(timeout=5000)
                 for n in names}  # fmt: skip
        outside = [n for n, b in boxes.items() if b is None or b["x"] < canvas["x"] or
                   b["y"] < top or b["x"] + b["width"] > right
                   or b["y"] + b["height"] > canvas["y"] + canvas["height"]]  # fmt: skip
        if not outside:
            return
    raise AssertionError(f"not inside the canvas after zooming to fit: {outside}")


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SCREENSHOTS) / name)
    return path


def test_a_backfill_launched_in_the_ui_runs_three_days_as_one_run(
    tmp_path, store, landed, monkeypatch
):
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} (Debian's chromium package) is not installed"
        if SCREENSHOTS:  # make screenshots exists to take them: never a quiet skip
            pytest.fail(f"{missing}: no screenshots taken", pytrace=False)
        tool_missing(missing)

    # SQLite instance (the local profile) shared by the daemon, the webserver and this test.
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # Automation reaches the feature store: keep its state out of the checkout.
    monkeypatch.setenv("ML_PLATFORM_FEAST_REPO", str(copy_feature_repo(tmp_path / "feature_repo")))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:  # the days' chunks, upstream
        built = dg.materialize(
            [sensor_chunks, checks.sensor_chunks_checks], instance=instance,
            resources=build_resources(), tags={RANGE_START: DAYS[0], RANGE_END: DAYS[-1]},
        )  # fmt: skip
        assert built.success
    web, port = webserver(home, env)
    base = f"http://127.0.0.1:{port}"
    try:
        with (
            dagster_daemon(home, env, tmp_path / "daemon.log", "dagster.yaml") as (
                instance,
                daemon,
            ),
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            launch_backfill_from_the_asset_page(page, base, DAYS[0], DAYS[-1])
            backfill, runs = wait_for_backfill(instance, daemon)

            [run] = runs
            assert run.status == dg.DagsterRunStatus.SUCCESS
            assert backfill.status in SUCCEEDED_TAGS, backfill.status
            assert (run.tags["dagster/asset_partition_range_start"],
                    run.tags["dagster/asset_partition_range_end"]) == (DAYS[0], DAYS[-1])  # fmt: skip
            assert instance.get_materialized_partitions(dg.AssetKey("daily_aggregates")) == set(
                DAYS
            )
            # What the UI shows of it: the backfill's Status field says it succeeded (the page
            # also has "Succeeded" and "Failed" columns, and "100% completed" when some failed),
            # and its row counts three partitions, all succeeded.
            page.goto(f"{base}/runs/b/{backfill.backfill_id}", wait_until="networkidle")
            status = page.get_by_text("Status", exact=True).locator("xpath=..")
            expect(status).to_have_text(f"Status{SUCCEEDED_TAGS[backfill.status]}", timeout=60_000)
            assert backfill_counts(page, "daily_aggregates") == {
                "Partitions targeted": "3", "In progress": "0", "Succeeded": "3", "Failed": "0"
            }  # fmt: skip

            page.goto(f"{base}/assets/daily_aggregates", wait_until="networkidle")
            # The newest materialization's metadata: one of its own keys, and its preview table.
            page.get_by_text("days_built").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            asset_page = screenshot(page, tmp_path, "daily-aggregates.png")
            page.goto(f"{base}/asset-groups", wait_until="networkidle")
            fit_the_whole_graph(page)
            graph = screenshot(page, tmp_path, "asset-graph.png")
            browser.close()
        for image in (asset_page, graph):
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 20_000
    finally:
        stop_process_group(web)
