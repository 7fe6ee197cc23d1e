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
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

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


def wait_for_backfill(instance, daemon) -> tuple[str, list[dg.DagsterRun]]:
    deadline = time.monotonic() + 240
    while True:
        assert daemon.poll() is None, "the daemon exited"
        backfills = instance.get_backfills()
        if backfills:
            [backfill] = backfills
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
            if runs and all(r.is_finished for r in runs) and backfill.status.value != "REQUESTED":
                return backfill.backfill_id, runs
        assert time.monotonic() < deadline, "the backfill did not finish"
        time.sleep(1)


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
        tool_missing(f"{CHROMIUM} (Debian's chromium package) is not installed")

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
            assert (run.tags["dagster/asset_partition_range_start"],
                    run.tags["dagster/asset_partition_range_end"]) == (DAYS[0], DAYS[-1])  # fmt: skip
            assert instance.get_materialized_partitions(dg.AssetKey("daily_aggregates")) == set(
                DAYS
            )
            # What the UI shows of it: the backfill completed, over three partitions.
            page.goto(f"{base}/runs/b/{backfill}", wait_until="networkidle")
            page.get_by_text("Completed").first.wait_for(timeout=60_000)

            page.goto(f"{base}/assets/daily_aggregates", wait_until="networkidle")
            # The newest materialization's metadata: one of its own keys, and its preview table.
            page.get_by_text("days_built").first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            asset_page = screenshot(page, tmp_path, "daily-aggregates.png")
            page.goto(f"{base}/asset-groups", wait_until="networkidle")
            page.get_by_role("button", name="settings", exact=True).click()
            page.get_by_role("menuitem", name="Expand all groups").click()
            page.keyboard.press("Escape")
            page.get_by_text("daily_aggregates").first.wait_for()
            page.wait_for_timeout(1500)  # the graph settles into place
            graph = screenshot(page, tmp_path, "asset-graph.png")
            browser.close()
        for image in (asset_page, graph):
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 20_000
    finally:
        stop_process_group(web)
