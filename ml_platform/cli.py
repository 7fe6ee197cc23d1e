"""Command line: ``python -m ml_platform generate|land|reproduce|check-credentials`` (also
installed as ``ml-platform``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _store_for(url: str):
    from ml_platform.lib.store import open_store

    # boto3 reads AWS_ENDPOINT_URL_S3 and the credentials from the environment itself.
    return open_store(url)


def _upload_tree(local: Path, url: str) -> list[str]:
    store = _store_for(url)
    uris = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = path.relative_to(local).as_posix()
        store.put_file(path, key)
        uris.append(store.uri(key))
    return uris


def cmd_generate(args: argparse.Namespace) -> int:
    from ml_platform.lib.generator import GeneratorConfig, write_files

    cfg = GeneratorConfig(
        days=args.days,
        sensors=args.sensors,
        start=args.start,
        interval_s=args.interval_s,
        seed=args.seed,
        fmt=args.format,
        failures_per_sensor_month=args.failures_per_sensor_month,
    )
    started = time.perf_counter()
    if "://" in args.out and not args.out.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="generate-") as tmp:
            result = write_files(cfg, Path(tmp))
            uris = _upload_tree(Path(tmp), args.out)
        where = f"{len(uris)} objects under {args.out.rstrip('/')}/"
    else:
        out = Path(args.out.removeprefix("file://"))
        result = write_files(cfg, out)
        where = f"{len(result.readings)} readings files in {out / 'readings'}, labels in {result.labels}"
    print(
        f"generated {result.rows:,} readings rows ({cfg.days} days x {cfg.sensors} sensors, "
        f"seed {cfg.seed}) and {result.failures} failure events in "
        f"{time.perf_counter() - started:.1f} s: {where}"
    )
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    from ml_platform.lib import paths
    from ml_platform.settings import settings

    store = _store_for(args.store or settings().store_url)
    prefix = paths.LANDING_PREFIXES[args.dataset]
    sub = args.prefix.strip("/") + "/" if args.prefix.strip("/") else ""
    keys = []
    for name in args.files:
        path = Path(name)
        key = prefix + sub + path.name
        store.put_file(path, key)
        partition = paths.partition_key(sub + path.name, store.etag(key))
        keys.append(partition)
        print(f"landed {path} -> {store.uri(key)}\n  version: {partition}")
    if keys:
        # What the landing sensor does, for people who run `dagster asset materialize` by hand.
        import json
        from datetime import UTC, datetime

        asset = f"raw_{args.dataset}"
        config = {"ops": {asset: {"config": {"versions": keys}}}}
        print(
            f"ingest now (the landing sensor does it too) with:\n  dagster asset materialize "
            f"-m ml_platform.definitions --select {asset} "
            f"--partition {paths.landing_day(datetime.now(UTC))} --config-json '{json.dumps(config)}'"
        )
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """0: reproduced within tolerance; 1: not reproduced (the report says what differs);
    2: nothing to reproduce (unknown version, no manifest, ...)."""
    import contextlib

    from ml_platform.lib.reproduce import render
    from ml_platform.reproduce import ReproduceError, default_out_dir, reproduce
    from ml_platform.settings import settings

    home = settings().dagster_home
    with contextlib.ExitStack() as stack:
        instance = None
        if home and Path(home).is_dir():
            import dagster as dg

            # Read only: the latest materialization of each input partition.
            instance = stack.enter_context(dg.DagsterInstance.get())
        try:
            report = reproduce(
                args.version,
                instance=instance,
                out_dir=Path(args.out) if args.out else default_out_dir(),
                tolerance=args.tolerance,
                strict=args.strict,
            )
        except ReproduceError as exc:
            print(f"ml-platform reproduce: {exc}", file=sys.stderr)
            return 2
    print(render(report))
    print(f"report: {report['report']}")
    return 0 if report["reproduced"] else 1


def cmd_check_credentials(args: argparse.Namespace) -> int:
    from ml_platform.lib import credentials
    from ml_platform.settings import process_environment

    # Every variable of the environment, not only the platform's settings: a credential is
    # recognised by its name.
    env, names = process_environment(), args.names or None
    checked = sorted(set(names)) if names else credentials.checked_names(env)
    problems = credentials.check(env, names, distinct=args.distinct)
    if problems:
        print(credentials.report(problems), file=sys.stderr)
        return 1
    if not checked:
        print("no credential found in the environment: nothing was checked", file=sys.stderr)
        return 1
    print(f"{len(checked)} credentials checked: none is empty, a default, a placeholder, short"
          f"{' or reused' if args.distinct else ''} ({', '.join(checked)})")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml-platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write realistic sensor readings and failure labels")
    gen.add_argument("--days", type=int, default=7)
    gen.add_argument("--sensors", type=int, default=20)
    gen.add_argument("--start", default="2024-01-01", help="first UTC day (YYYY-MM-DD)")
    gen.add_argument("--interval-s", type=int, default=60, help="seconds between readings")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--format", choices=["csv", "csv.gz", "parquet"], default="csv")
    gen.add_argument(
        "--failures-per-sensor-month",
        type=float,
        default=1.0,
        help="expected failure events per sensor per 30 days (the labels file)",
    )
    gen.add_argument(
        "--out",
        required=True,
        help="a folder or s3://bucket/prefix; files go to <out>/readings/ and <out>/labels/ "
        "(use <store>/landing to drop them straight into the landing zone)",
    )
    gen.set_defaults(func=cmd_generate)

    land = sub.add_parser("land", help="upload files into the landing zone of the object store")
    land.add_argument("files", nargs="+")
    land.add_argument("--dataset", choices=["readings", "labels"], default="readings")
    land.add_argument("--prefix", default="", help="sub-folder below landing/<dataset>/")
    land.add_argument(
        "--store", default="", help="store URL (default: $ML_PLATFORM_STORE_URL or .lake)"
    )
    land.set_defaults(func=cmd_land)

    rep = sub.add_parser(
        "reproduce",
        help="rebuild a failure_model version from its manifest and compare its metrics "
        "(changes nothing live)",
    )
    rep.add_argument("--version", type=int, required=True, help="registered model version")
    rep.add_argument(
        "--out", default="", help="folder for the rebuilt set and report (default: reproductions/)"
    )
    rep.add_argument(
        "--tolerance", type=float, default=None, help="largest metric difference (1e-6)"
    )
    rep.add_argument(
        "--strict",
        action="store_true",
        help="also fail when recorded inputs changed (data versions, registry hash, code versions)",
    )
    rep.set_defaults(func=cmd_reproduce)

    cred = sub.add_parser(
        "check-credentials",
        help="exit 1 naming every credential of the environment that is empty, a well-known "
        "default or placeholder, or short (never printing a value)",
    )
    cred.add_argument(
        "names", nargs="*", help="variables to check, each required (default: every secret, "
        "access key, user and password-bearing URL of the environment)",
    )  # fmt: skip
    cred.add_argument(
        "--distinct", action="store_true",
        help="also refuse two variables holding the same value (one credential per principal)",
    )  # fmt: skip
    cred.set_defaults(func=cmd_check_credentials)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
