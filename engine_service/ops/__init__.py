"""Device kernels behind one set of signatures.

`torch_ops` is the plain-torch path (CPU, and the reference every kernel is tested against);
`triton_ops` holds the Triton kernels used on CUDA. Layers call the functions re-exported here,
which pick the path from the tensor's device.
"""
