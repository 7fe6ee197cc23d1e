"""Local stand-ins for the deployed services (tests, ``make dev-prod``). Needs the dev extras."""
