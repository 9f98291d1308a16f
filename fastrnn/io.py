"""Load the weights of a model saved by Keras 3 into its fastrnn.layers twin, without TensorFlow or Keras.

    from fastrnn import io, layers
    model = layers.Sequential([layers.Input((None,)), layers.Embedding(1000, 64), layers.LSTM(128),
                               layers.Dense(10)])
    io.load_keras_weights(model, "model.keras")        # or "model.weights.h5"

Needs h5py (an optional dependency).

How Keras 3 lays out its weights file (``model.save_weights("x.weights.h5")``, or ``model.weights.h5``
inside the ``.keras`` zip): one HDF5 group per object, nested as the objects are; each group's ``vars``
holds that object's own variables as datasets ``0``, ``1``, ... in creation order.  A container
(a model's layers, a StackedRNNCells' cells) names its entries by their class name in snake case,
numbered on repeats: ``layers/lstm``, ``layers/lstm_1``, ``layers/dense`` -- not by ``layer.name``.
So a Sequential of Embedding, LSTM, Bidirectional(GRU) and Dense is::

    layers/embedding/vars/0                               embeddings
    layers/lstm/cell/vars/{0,1,2}                         kernel, recurrent_kernel, bias
    layers/bidirectional/forward_layer/cell/vars/{0,1,2}
    layers/bidirectional/backward_layer/cell/vars/{0,1,2}
    layers/dense/vars/{0,1}                               kernel, bias

fastrnn's layers keep the same variables in the same order (Keras layout, DESIGN section 2), so loading
walks the fastrnn model and this tree side by side, checks every count and shape (errors name the HDF5
path), and sets everything at once (nothing is written unless everything matches).
"""
import io as _io
import re
import zipfile

import numpy as np

__all__ = ["load_keras_weights"]


def _snake(name):
    """keras.src.utils.naming.to_snake_case (the container entry names)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _entries(items):
    """(key, item) with Keras's container names: snake-case class name, then _1, _2, ... on repeats."""
    used = {}
    out = []
    for item in items:
        name = _snake(type(item).__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        out.append((name, item))
    return out


def _children(layer):
    """(h5 sub-path, sublayer) in the order of `layer._sublayers()` (so weights come out in order)."""
    from fastrnn.layers import RNN, Bidirectional, Sequential, StackedRNNCells

    if isinstance(layer, Sequential):
        return [("layers/" + key, sub) for key, sub in _entries(layer.layers)]
    if isinstance(layer, Bidirectional):
        return [("forward_layer", layer.forward_layer), ("backward_layer", layer.backward_layer)]
    if isinstance(layer, StackedRNNCells):
        return [("cells/" + key, sub) for key, sub in _entries(layer._sublayers())]
    if isinstance(layer, RNN):
        return [("cell", sub) for sub in layer._sublayers()]
    subs = layer._sublayers()
    if subs:
        raise ValueError(f"load_keras_weights: {type(layer).__name__} {layer.name!r} has sublayers and no known "
                         "Keras file layout")
    return []


def _group(parent, key, path):
    node = parent.get(key)
    if node is None and key.startswith("layers/") and "_layer_checkpoint_dependencies" in parent:
        node = parent.get("_layer_checkpoint_dependencies/" + key[len("layers/"):])  # Keras 2.13+'s v3 format
    if node is None:
        have = sorted(parent.get(key.split("/")[0], {}).keys()) if "/" in key else sorted(parent.keys())
        raise ValueError(f"load_keras_weights: the file has no group {path + key!r} (found {have}); the fastrnn "
                         "model must have the same layers in the same order as the Keras one")
    return node


def _collect(layer, group, path, out):
    """Append the array of every weight of `layer` (in `layer.weights` order), read from `group`."""
    own = list(layer._weights)
    variables = group.get("vars")
    n = 0 if variables is None else len(variables)
    if n != len(own):
        raise ValueError(f"load_keras_weights: {path}vars holds {n} variables; fastrnn's "
                         f"{type(layer).__name__} {layer.name!r} has {len(own)} ({', '.join(own) or 'none'})")
    for k, key in enumerate(own):
        value = np.asarray(variables[str(k)][()])
        expected = layer._weights[key].shape
        if value.shape != expected:
            raise ValueError(f"load_keras_weights: {path}vars/{k} has shape {value.shape}; {layer.name!r}.{key} "
                             f"expects {expected}")
        out.append(value)
    for key, sub in _children(layer):
        _collect(sub, _group(group, key, path), f"{path}{key}/", out)


def _open(path):
    """An open h5py.File on the weights of a ``.weights.h5`` file or a ``.keras`` archive."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - exercised only without the optional dependency
        raise ImportError("load_keras_weights needs h5py (pip install h5py)") from exc
    path = str(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise ValueError(f"load_keras_weights: {path} is a zip without model.weights.h5 (found "
                                 f"{archive.namelist()}); expected a Keras 3 .keras file")
            data = archive.read("model.weights.h5")
        return h5py.File(_io.BytesIO(data), "r")
    f = h5py.File(path, "r")
    if "model_weights" in f or "layer_names" in f.attrs:
        f.close()
        raise ValueError(f"load_keras_weights: {path} is a legacy Keras 2 HDF5 file; re-save it with Keras 3 "
                         "(model.save_weights('x.weights.h5') or model.save('x.keras'))")
    return f


def load_keras_weights(model_or_layer, path, *, layer_path=None):
    """Set the weights of a fastrnn.layers model (or one layer) from a Keras 3 weights file.

    Parameters
    ----------
    model_or_layer : fastrnn.layers.Sequential or Layer
        The twin of the saved Keras model: the same layers, in the same order, with the same sizes
        (names may differ).  It is built first if it knows its input shape (an `Input`, or
        ``input_shape=``); otherwise build it (or call it once) before loading.
    path : str or path-like
        A ``.weights.h5`` file (``model.save_weights``) or a ``.keras`` file (``model.save``).
    layer_path : str, optional
        The HDF5 group of the saved object to read, e.g. ``"layers/lstm_1"`` to load one layer of a saved
        model into a single fastrnn layer.  Default: the whole model for a Sequential, else the first
        ``layers/<class name>`` of the file.

    Returns `model_or_layer`.  Raises ValueError naming the HDF5 path on any count or shape mismatch,
    before changing any weight.
    """
    from fastrnn.layers import Sequential

    target = model_or_layer
    if not target.built:
        if isinstance(target, Sequential) and target._build_shape is not None:
            target.build()
        else:
            raise ValueError(f"load_keras_weights: {target.name!r} is not built; build it (e.g. "
                             "model.build((None, None)) or call it once) so its weights exist")
    with _open(path) as f:
        if layer_path is None and not isinstance(target, Sequential):
            layer_path = "layers/" + _snake(type(target).__name__)
        root = f if layer_path is None else _group(f, layer_path.strip("/"), "")
        prefix = "" if layer_path is None else layer_path.strip("/") + "/"
        values = []
        _collect(target, root, prefix, values)
    target.set_weights(values)
    return target
