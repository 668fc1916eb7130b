"""What requests carry, checked: uploaded image files and Open Inference
Protocol (KServe v2) tensors. Every refusal is a :class:`RequestError` with
the HTTP status to answer and a message naming the problem."""

import io
import math
import warnings

import numpy as np

from crdistance.serve._model import RequestError

IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
DATATYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP64": np.float64,
             "FP16": np.float16}


def decode_image(data, filename, *, max_pixels):
    """An uploaded file as a uint8 array (height, width, 3).

    The pixel count is checked from the header before any pixel is decoded,
    so a small file that claims a huge image (a decompression bomb) costs
    nothing; truncated and non-image files are refused.
    """
    from PIL import Image

    if not data:
        raise RequestError(f"{filename}: the file is empty.", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise RequestError(
                        f"{filename}: {width} x {height} pixels exceed the "
                        f"server's limit of {max_pixels:,} pixels.", 413)
                if getattr(image, "n_frames", 1) > 1:
                    image.seek(0)
                image.load()
                return np.asarray(image.convert("RGB"))
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(f"{filename}: {exc} The server takes at most "
                           f"{max_pixels:,} pixels.", 413) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        if "cannot identify" in str(exc):
            raise RequestError(f"{filename}: not a {'/'.join(IMAGE_FORMATS)} "
                               "image.", 415) from exc
        raise RequestError(f"{filename}: a damaged or truncated image ({exc}).",
                           400) from exc


def parse_infer(body, *, feature_shape, max_pixels, max_images):
    """The images or features of a v2 ``infer`` request body (parsed JSON).

    Returns
    -------
    kind : {"images", "features"}
    array : ndarray
        uint8 (n, height, width, 3) images, or float32 (n, h, w, d) features.
    input_name : str
    parameters : dict
    """
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError('an infer request is a JSON object with an "inputs" list.')
    if len(body["inputs"]) != 1:
        raise RequestError(
            f'expected exactly 1 input tensor ("images" or "features"), got '
            f'{len(body["inputs"])}.')
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError("an input tensor is a JSON object.")
    name, shape, datatype = (tensor.get(key) for key in ("name", "shape", "datatype"))
    if name not in ("images", "features"):
        raise RequestError(f'input name must be "images" or "features", got {name!r}.')
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                       for n in shape)):
        raise RequestError(f"shape must be a list of positive integers, got {shape!r}.")
    expected = ("UINT8",) if name == "images" else ("FP32", "FP64", "FP16")
    if datatype not in expected:
        raise RequestError(
            f"{name} must have datatype {' or '.join(expected)}, got {datatype!r}.")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError('"data" must be a (flat or nested) list of numbers.')
    size = math.prod(shape)
    if name == "images":
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise RequestError(
                f"images must have shape (n, height, width) or (n, height, width, "
                f"1 or 3), got {shape}.")
        if shape[0] > max_images:
            raise RequestError(
                f"{shape[0]} images exceed the server's limit of {max_images} per "
                "request.", 413)
        if math.prod(shape[1:3]) > max_pixels:
            raise RequestError(
                f"{shape[1]} x {shape[2]} pixels exceed the server's limit of "
                f"{max_pixels:,} pixels.", 413)
    elif shape[0] > max_images:
        raise RequestError(f"{shape[0]} feature maps exceed the server's limit of "
                           f"{max_images} per request.", 413)
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RequestError(f'"data" must hold numbers only ({exc}).') from exc
    if array.size != size:
        raise RequestError(f"data holds {array.size} values, shape {shape} needs "
                           f"{size}.")
    array = array.reshape(shape)
    if name == "images":
        if not np.all((array >= 0) & (array <= 255) & (array == np.round(array))):
            raise RequestError("UINT8 images hold integers from 0 to 255 only.")
        array = array.astype(np.uint8)
        if array.ndim == 3:
            array = array[..., None]
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
    else:
        if tuple(shape[1:]) != tuple(feature_shape):
            raise RequestError(
                f"features must have shape (n, {', '.join(map(str, feature_shape))}) "
                f"for this model; got {tuple(shape)}.")
        if not np.all(np.isfinite(array)):
            raise RequestError("features hold NaN or infinite values.")
        array = array.astype(np.float32)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError('"parameters" must be a JSON object.')
    return name, array, parameters


def optional_number(value, what):
    """A request's number field (str or number) as float, or None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RequestError(f"{what} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise RequestError(f"{what} must be finite, got {value!r}.")
    return number


def flag(value):
    """A request's boolean field: true/1/yes/on (any case) or a JSON true."""
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")
