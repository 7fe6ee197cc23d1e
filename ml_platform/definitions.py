"""The code location: every definition under ``defs/``, each folder registering its own."""

import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from ml_platform.settings import require_safe_process_environment, settings

# ML_PLATFORM_PROFILE=deployed (compose, Helm): no definitions with a default, placeholder,
# empty or short credential; the load error names each variable (lib/credentials.py).
require_safe_process_environment()


def linked_to_source(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """Each asset with a link to the code that defines it: the repository's page of the file and
    line when ``ML_PLATFORM_GIT_URL`` is set, else the local file."""
    config = settings()
    # A folder's modules import each other's assets: the same definition is found more than once.
    unique = list({id(a): a for a in assets}.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        linked = dg.with_source_code_references(unique)
        if config.git_url:
            linked = dg.link_code_references_to_git(
                linked,
                git_url=config.git_url,
                git_branch=config.git_branch,
                file_path_mapping=dg.AnchorBasedFilePathMapping(
                    local_file_anchor=Path(__file__),
                    file_anchor_path_in_repository="ml_platform/definitions.py",
                ),
            )
    return list(linked)


def code_location(loaded: dg.Definitions) -> dg.Definitions:
    """The folders' definitions with their code links, and the location's executor."""
    return dg.Definitions(
        assets=linked_to_source(loaded.assets or []),
        asset_checks=loaded.asset_checks,
        jobs=loaded.jobs,
        schedules=loaded.schedules,
        sensors=loaded.sensors,
        resources=loaded.resources,
        loggers=loaded.loggers,
        metadata=loaded.metadata,
        component_tree=loaded.component_tree,
        # One process per run, no subprocess per step: saves ~3 s of re-import per step. An
        # executor is the code location's, not a folder's.
        executor=dg.in_process_executor,
    )


defs = code_location(dg.load_from_defs_folder(path_within_project=Path(__file__).parent))
