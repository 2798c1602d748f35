"""What an x86 CPU computes for an ONNX file's integer matrix products (MatMulInteger), whatever CPU runs this.

onnxruntime picks its integer kernel by the CPU's instruction set. With AVX-512 VNNI (Intel Ice Lake and later,
AMD Zen 4) or AMX, every product is exact. Without VNNI (AVX2 alone: Intel before Ice Lake, AMD before Zen 4,
many cloud instances) uint8 x int8 products go through vpmaddubsw, which adds each pair of neighbouring products
along the inner dimension into a 16-bit sum that saturates at +-32767: 255 x 127 x 2 does not fit, so a file with
int8 weights can answer wrongly there and nowhere else. uint8 x uint8 products it widens to 16 bits first (exact).

Two ways to know a file is safe on every x86-64 CPU, neither depending on the CPU at hand:
- `saturating_products`: the products that could saturate on AVX2 (an int8 operand whose values a pair of uint8
  products can push past 16 bits); an empty list means the file computes the same on every CPU.
- `emulate_isa`: a copy of the file whose integer products compute in float64 what the named kernel computes
  ("avx2": u8 x s8 pairs saturated to 16 bits; "vnni": exact), run in onnxruntime like the file itself. Its
  pair tensors are batch x length x inner/2 x outputs: for small models (tests), not for full-size ones.
"""

import numpy as np

ISA_PATHS = ("avx2", "vnni")
INT16_MAX = 32767


def _initializers(graph) -> dict:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _tensor_types(model) -> dict:
    """The element type of every tensor the graph names (inputs, initializers, inferred intermediates)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {init.name: init.data_type for init in inferred.initializer}
    for value in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        types[value.name] = value.type.tensor_type.elem_type
    return types


def saturating_products(model) -> list[str]:
    """The MatMulInteger nodes of an onnx ModelProto whose products may saturate on a CPU without VNNI: a uint8 x
    int8 product whose int8 side is not a weight within 7 bits (a pair of 255 x 64 fits in 16 bits, 255 x 65 may
    not). uint8 x uint8 products are exact everywhere."""
    import onnx

    weights = _initializers(model.graph)
    types = _tensor_types(model)
    risky = []
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        for name in node.input[:2]:
            if types.get(name) != onnx.TensorProto.INT8:
                continue
            values = weights.get(name)
            if values is None or values.min() < -64 or values.max() > 64:
                risky.append(node.name or node.output[0])
                break
    return risky


def emulate_isa(model, isa: str):
    """A copy of the onnx ModelProto whose MatMulInteger nodes compute, in float64 (exact for BERT-sized inner
    dimensions), what onnxruntime's kernel for `isa` computes: "vnni" the exact products; "avx2" the same, except
    that a uint8 x int8 product with a constant 2-D weight sums each neighbouring pair of raw products (2j, 2j+1) in
    a saturating 16-bit lane. The zero points' terms the kernels add exactly, so saturation moves a result by the
    pair sums' excess over 16 bits alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if isa not in ISA_PATHS:
        raise ValueError(f"isa must be one of {ISA_PATHS}, not {isa!r}")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = _tensor_types(model)
    weights = _initializers(graph)
    nodes = list(graph.node)
    del graph.node[:]

    def constant(name, values):
        graph.initializer.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def as_double(name, zero_point, out):
        """out: the input less its zero point, in float64; out_raw: the input itself."""
        cast = helper.make_node("Cast", [name], [out + "_raw"], to=TensorProto.DOUBLE)
        if not zero_point:
            return [cast, helper.make_node("Identity", [out + "_raw"], [out])]
        return [cast, helper.make_node("Cast", [zero_point], [out + "_zero"], to=TensorProto.DOUBLE),
                helper.make_node("Sub", [out + "_raw", out + "_zero"], [out])]

    for index, node in enumerate(nodes):
        if node.op_type != "MatMulInteger":
            graph.node.append(node)
            continue
        a, b, a_zero, b_zero = (list(node.input) + ["", ""])[:4]
        base = f"isa_{isa}_{index}"
        new = as_double(a, a_zero, base + "_a") + as_double(b, b_zero, base + "_b")
        new.append(helper.make_node("MatMul", [base + "_a", base + "_b"], [base + "_exact"]))
        result = base + "_exact"
        if isa == "avx2" and {types.get(a), types.get(b)} == {TensorProto.UINT8, TensorProto.INT8}:
            if types.get(a) != TensorProto.UINT8 or b not in weights or weights[b].ndim != 2:
                raise ValueError(f"{node.name}: the AVX2 emulation takes uint8 activations x a constant int8 matrix")
            inner, outputs = weights[b].shape
            padded = inner + inner % 2
            pairs = np.pad(weights[b].astype(np.float64), ((0, padded - inner), (0, 0))).reshape(-1, 2, outputs)
            new += [  # the kernel multiplies the raw uint8 values
                helper.make_node("Pad", [base + "_a_raw", constant(base + ".pads", np.array(
                    [0, 0, 0, 0, 0, padded - inner], np.int64))], [base + "_a_even"]),
                helper.make_node("Reshape", [base + "_a_even", constant(base + ".pair_shape", np.array(
                    [0, 0, padded // 2, 2, 1], np.int64))], [base + "_a_pairs"]),
                helper.make_node("Mul", [base + "_a_pairs", constant(base + ".b_pairs", pairs)], [base + "_products"]),
                helper.make_node("ReduceSum", [base + "_products", constant(base + ".pair_axis", np.array(
                    [-2], np.int64))], [base + "_pair_sums"], keepdims=0),
                helper.make_node("Clip", [base + "_pair_sums", constant(base + ".low", np.array(-INT16_MAX - 1.0)),
                                          constant(base + ".high", np.array(float(INT16_MAX)))], [base + "_saturated"]),
                helper.make_node("Sub", [base + "_saturated", base + "_pair_sums"], [base + "_lost"]),
                helper.make_node("ReduceSum", [base + "_lost", constant(base + ".inner_axis", np.array(
                    [-2], np.int64))], [base + "_excess"], keepdims=0),
                helper.make_node("Add", [base + "_exact", base + "_excess"], [base + "_saturating"]),
            ]
            result = base + "_saturating"
        new.append(helper.make_node("Cast", [result], [node.output[0]], to=TensorProto.INT32))
        graph.node.extend(new)
    return model


def with_int8_weights(model):
    """A copy of the onnx ModelProto with its uint8 MatMulInteger weights around 128 stored as int8 around 0 (the same
    numbers): the layout VNNI's kernel takes fastest and AVX2's saturates, as exports stored it before 2026-12; for
    measuring what exactness costs, and for tests."""
    import onnx
    from onnx import numpy_helper

    def shift(values):
        return (values.astype(np.int16) - 128).astype(np.int8)

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or node.input[1] not in initializers or len(node.input) < 4:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if weight.dtype != np.uint8:
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[3]])
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(shift(weight), node.input[1]))
        signed_zero = node.input[1] + "_signed_zero_point"  # the zero point may be shared with an activation
        model.graph.initializer.append(numpy_helper.from_array(shift(zero_point), signed_zero))
        node.input[3] = signed_zero
    return model
