"""Tensor parallelism: one engine across the GPUs of a machine (Megatron-style layers in layers/).

`multiproc.MultiProcExecutor` runs one `worker` process per rank and sends each step to all of them
as a `step_message.StepMessage`; `distributed` sets up the process group.
"""
