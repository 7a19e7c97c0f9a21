"""Reporting: the report stage's page (`report`) and the sigma-sweep tables (`sweep`).

Nothing here changes a result: editing these modules re-runs only the report stage.
"""
