"""Networks that distilled data is trained on and evaluated with.

Every model is built through one registry so that configs, the CLI and the
attacks name architectures the same way, and so that a bad name or option is
reported as a `ConfigError` (one line, listing what is accepted) instead of a
`TypeError` deep inside a constructor.

All models take normalised images ``[B, channels, image_size, image_size]``
and return logits ``[B, num_classes]``. They avoid in-place operations and
extra randomness because the distillation and attack code runs them under
``torch.func`` (functional_call / vmap / grad) and through double backward.
"""

from ddbackdoor.models import alexnet, convnet, resnet, simple, vgg  # noqa: F401  (they register)
from ddbackdoor.models.registry import (
    MIN_IMAGE_SIZE,
    MODELS,
    check_choice,
    check_int,
    create_model,
    flat_features,
    model_names,
    model_options,
    register,
)

__all__ = [
    "MIN_IMAGE_SIZE",
    "MODELS",
    "check_choice",
    "check_int",
    "create_model",
    "flat_features",
    "model_names",
    "model_options",
    "register",
]
