"""Code that runs both in the project and in an exported package (export.py copies this folder there as portable/):
image rules, resizing, TTA, post-processing, RLE, model building and the package's predictor. Relative imports among
themselves only, and nothing of sklearn, pandas, accelerate or the project's ledger, folds and config; the ONNX
package's path (package, images, maps, postprocess, rle, onnx_model) imports no torch."""
