"""The binary bottleneck: a registered Keras layer, so saved models load in safe mode."""

from __future__ import annotations

from pipeline.backend import keras

ops = keras.ops

__all__ = ["Binarize"]


@keras.saving.register_keras_serializable(package="patchhash")
class Binarize(keras.layers.Layer):
    """Round sigmoid activations to {0, 1} with a straight-through gradient.

    Forward: ``round(x)``. Backward: identity, via ``x + stop_gradient(round(x) - x)``
    (seed 000's trick, as a real layer rather than a ``Lambda`` so that
    ``keras.saving.load_model(..., safe_mode=True)`` accepts the model).
    """

    def call(self, inputs):
        return inputs + ops.stop_gradient(ops.round(inputs) - inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
