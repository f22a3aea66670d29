"""Runs of scenarios: the TOML scenario, the runner and its strategies,
the consistency oracle, shrinking, campaigns and their distribution."""
