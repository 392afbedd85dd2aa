"""WGSL kernels generated with Apache TVM, with the metadata a runtime needs to launch them."""
