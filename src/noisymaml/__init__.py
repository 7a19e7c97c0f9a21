"""noisymaml: study and cure meta-overfitting (Gogoi, Tiwari & Verma, arXiv 2405.12299).

Subpackages, along the lines along which results change:
- `core`: the meta-learning core (inner loop, noise, trainer, evaluation, feedback, models, tasks);
- `methods`: one module per algorithm behind a registry (MAML and the baselines);
- `datasets`: one module per dataset behind a registry;
- `pipeline`: the adapter from params.yaml to plain values, and what the DVC stages call;
- `reporting`: the report and sweep tables and figures.
"""
