"""Real servers for tests (from :mod:`ml_platform.devstack.servers`) and a Dagster daemon on the
repository's own instance config."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

from ml_platform.devstack.servers import (  # noqa: F401  (re-exported for the tests)
    Postgres,
    S3Server,
    _wait,
    free_port,
    moto_server,
    postgres_bin_dir,
    postgres_cluster,
    stop_process_group,
)

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def dagster_daemon(
    home: Path, env: dict[str, str], log: Path | None = None, config: str = "dagster.yaml"
):
    """``dagster-daemon run`` on the repository's workspace, with ``home`` as DAGSTER_HOME holding
    the repository's own instance ``config`` (by default the deployed profile, PostgreSQL).
    Yields ``(instance, process)``.

    The instance is opened in this process, so the variables ``dagster.yaml`` reads must be set
    in ``os.environ`` too.
    """

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / config, home / "dagster.yaml")
    out = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
         str(ROOT / "workspace.yaml")],
        cwd=ROOT, env={**env, "DAGSTER_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,  # its code server and run workers die with the group
    )  # fmt: skip
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        yield instance, process
    finally:
        stop_process_group(process)
        instance.dispose()
        if log:
            out.close()
