"""Runtime code of the exported package (copied there as portable/): numpy and onnxruntime only, relative imports."""
