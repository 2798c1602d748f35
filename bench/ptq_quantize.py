"""onnxruntime's post-training quantization of one ONNX file; runs in the PTQ environment (bench/ptq.py builds it
from bench/ptq-requirements.txt), not in ours.

    python bench/ptq_quantize.py dynamic model.onnx model-dynamic.onnx
    python bench/ptq_quantize.py static model.onnx model-static.onnx calibration.npz

Both quantize the matrix products (MatMul, Gemm) with uint8 weights and uint8 activations: uint8 x uint8 products
are exact on every x86-64 CPU, with or without VNNI, as our QAT exports are (uint8 x int8 saturates without VNNI).
dynamic: activation ranges measured per batch at run time (MatMulInteger). static: ranges calibrated once on task
data (calibration.npz: one array per model input, examples along axis 0), stored as QuantizeLinear /
DequantizeLinear pairs (QDQ), which onnxruntime and OpenVINO fuse into integer kernels.
"""

import os
import sys

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

OPS = ["MatMul", "Gemm"]
CALIBRATION_BATCH = 8


class CalibrationBatches(CalibrationDataReader):
    def __init__(self, path: str):
        arrays = dict(np.load(path))
        count = len(next(iter(arrays.values())))
        self.batches = iter([{name: values[i:i + CALIBRATION_BATCH] for name, values in arrays.items()}
                             for i in range(0, count, CALIBRATION_BATCH)])

    def get_next(self):
        return next(self.batches, None)


def main(mode: str, source: str, target: str, calibration: str | None = None):
    prepared = target + ".prepared.onnx"  # shapes inferred and graph optimized first, as onnxruntime advises
    quant_pre_process(source, prepared, skip_symbolic_shape=True)  # onnx's own inference suffices for BERT
    try:
        if mode == "dynamic":
            quantize_dynamic(prepared, target, op_types_to_quantize=OPS, weight_type=QuantType.QUInt8)
        elif mode == "static":
            quantize_static(prepared, target, CalibrationBatches(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=OPS, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QUInt8)
        else:
            raise SystemExit(f"error: mode {mode!r}: dynamic or static")
    finally:
        os.remove(prepared)


if __name__ == "__main__":
    main(*sys.argv[1:])
