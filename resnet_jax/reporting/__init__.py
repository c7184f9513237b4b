"""Reporting: what a run tells its user.

- `metrics_io`: metrics.jsonl, TensorBoard events, the console lines.
- `plots`: curves.png and confusion.png.
- `progress`: the progress bar.
- `summary`: the model's one-screen description.
- `timing`: throughput timing shared by the benchmarks.

Imports: `resnet_jax.errors`, `resnet_jax.logs` and this folder only.
"""
