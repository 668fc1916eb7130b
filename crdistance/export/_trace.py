"""torch.onnx.export with the settings of every torch part of an exported graph.

A featurizer's backbone (with an embedder's embedding, or a GRADDetector's
scorer behind it) and a GRADDetector alone are exported by the TorchScript
exporter at the operator set of the detector heads, with a dynamic batch axis.
torch is imported when a model is traced.
"""

import io
import warnings

import onnx

from crdistance.export._graph import OPSET

__all__ = ["trace"]


def trace(module, probe, input_name, output_name):
    """The ONNX model of `module` (in eval mode), traced on the tensor `probe`.

    Its one input and one output are named `input_name` and `output_name`, and
    their first axis is the dynamic batch ``n``. Exporting ends with
    ``module.train(module.training)``: pass a module whose top is in eval mode
    (or a copy), lest the batch norms inside it be left in training mode.
    """
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript; it warns it is deprecated.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shape comparisons in the embedding are fixed by the image size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # "Same" padding (EfficientNet) slices with steps the folding skips.
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(
            module,
            (probe,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "n"}, output_name: {0: "n"}},
        )
    return onnx.load_model_from_string(buffer.getvalue())
