"""The code location: every definition under ``defs/``, each folder registering its own."""

from pathlib import Path

import dagster as dg

from ml_platform.settings import require_safe_process_environment

# ML_PLATFORM_PROFILE=deployed (compose, Helm): no definitions with a default, placeholder,
# empty or short credential; the load error names each variable (lib/credentials.py).
require_safe_process_environment()

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    # One process per run, no subprocess per step: saves ~3 s of re-import per step. An
    # executor is the code location's, not a folder's.
    dg.Definitions(executor=dg.in_process_executor),
)
