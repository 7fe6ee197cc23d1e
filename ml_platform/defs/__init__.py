"""Dagster definitions, one subpackage per asset layer; ``ml_platform.definitions`` assembles them."""
