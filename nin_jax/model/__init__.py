"""The network: linen modules and the kernels they run on."""
