"""Runs exported ONNX files with onnxruntime for tests/onnx_export.rs.

Usage: python3 scripts/onnx_run.py JOBS.json
JOBS.json is a list of {"model", "input", "output", "shape"}: each model is
checked by onnx.checker (full check, with shape inference), run on the
little-endian f32 input of that shape, and its `logits` written as
little-endian f32 to output. Any failure exits non-zero naming the model.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    jobs = json.load(open(sys.argv[1]))
    for job in jobs:
        model = onnx.load(job["model"])
        onnx.checker.check_model(model, full_check=True)
        options = ort.SessionOptions()
        # No graph rewrites (fusing BatchNormalization into Conv changes the
        # rounding): the file's own operations, as written.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
        x = np.fromfile(job["input"], dtype="<f4").reshape(job["shape"])
        (logits,) = session.run(["logits"], {"input": x})
        logits.astype("<f4").tofile(job["output"])
        print(f"{job['model']}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes, logits {logits.shape}")


if __name__ == "__main__":
    main()
