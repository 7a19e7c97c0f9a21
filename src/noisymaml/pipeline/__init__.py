"""The adapter layer: params.yaml -> plain values for the core, and what each DVC stage runs.

`params` validates params.yaml (its schema assembled from the method and dataset registries);
`run` turns one (dataset, method) pair into a frozen `Run` and plain core objects; `steps`
holds one function per stage, which the scripts in stages/ call after parsing their arguments.
"""
