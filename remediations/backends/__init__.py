"""Backends of the ``rebalance`` plugin: one file each (slurm, kubernetes, gpu_fence)."""
