"""Model registry: every model is F(x_t, t, r, y=None) -> average velocity over [r, t]."""

from trainables.rcgm.errors import ConfigError

DIT_NAMES = ("DiT-XS/4", "DiT-T/4", "DiT-T/2", "DiT-S/4", "DiT-S/2", "DiT-B/4", "DiT-B/2", "DiT-L/2", "DiT-XL/2")
MODEL_NAMES = ("mlp",) + DIT_NAMES


def build_model(name: str, data_shape: tuple, num_classes: int | None = None, attention: str = "sdpa"):
    """Build the named model for samples of data_shape (and num_classes labels, or None).

    attention: a DiT's attention, sdpa (PyTorch's fused kernels) or math (explicit softmax); the MLP has none.
    """
    if name == "mlp":
        from trainables.models.mlp import VelocityMLP

        if len(data_shape) != 1:
            raise ConfigError("model", name, f"a DiT for image data of shape {data_shape}")
        return VelocityMLP(dim=data_shape[0], num_classes=num_classes)
    if name in DIT_NAMES:
        # timm is imported only here: 2-D trial processes never pay for it.
        from trainables.models.dit import build_dit

        if len(data_shape) != 3:
            raise ConfigError("model", name, f"'mlp' for point data of shape {data_shape}")
        return build_dit(name, data_shape, num_classes, fused_attn=attention == "sdpa")
    raise ConfigError("model", name, "one of " + ", ".join(MODEL_NAMES))
