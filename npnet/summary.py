"""A model summary in the style of torchsummary / Keras: one row per layer."""
from __future__ import annotations

import numpy as np

from .sequential import Sequential


def _leaves(model, prefix=""):
    """(name, layer) for every non-Sequential layer, in forward order."""
    if isinstance(model, Sequential):
        for name, layer in model.layers.items():
            yield from _leaves(layer, f"{prefix}{name}.")
    else:
        yield prefix.rstrip("."), model


def summary(model, input_size=(1, 28, 28), print_fn=print, batch_size=-1):
    """Print a table: Layer (type) | Output Shape | Param #, then totals and memory.

    Runs one forward pass on a zero batch of 2 in eval mode (the model's mode is restored)
    to find every output shape; shapes print with -1 for the batch, as torchsummary.

    Returns:
        dict with 'total_params', 'trainable_params', 'output_shapes' (per layer name),
        and the memory estimates in MB ('input_mb', 'forward_backward_mb', 'params_mb',
        'total_mb') for a batch of one, float32.
    """
    if not isinstance(input_size, (tuple, list)) or any(
            not isinstance(d, (int, np.integer)) or d < 1 for d in input_size):
        raise ValueError(f"summary: input_size must be a tuple of positive ints such as "
                         f"(1, 28, 28), got {input_size!r}")
    leaves = list(_leaves(model))
    modes = [(layer, layer.training) for layer in (model, *(lay for _, lay in leaves))]
    model.eval()
    rows, shapes = [], {}
    try:
        dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))
        x = np.zeros((2, *input_size), dtype=dtype)
        for name, layer in leaves:
            x = layer.forward(x)
            shapes[name] = tuple(x.shape[1:])
            n = sum(p.size for p in layer.params.values())
            rows.append((f"{name} ({type(layer).__name__})", [batch_size, *x.shape[1:]], n))
    finally:
        for layer, training in modes:            # each layer's own mode, as it was
            layer.training = training

    total = sum(r[2] for r in rows)
    width = 64
    print_fn("-" * width)
    print_fn(f"{'Layer (type)':<24}{'Output Shape':>25}{'Param #':>15}")
    print_fn("=" * width)
    for name, shape, n in rows:
        print_fn(f"{name:<24}{str(shape):>25}{n:>15,}")
    print_fn("=" * width)
    mb = 1024 ** 2
    input_mb = int(np.prod(input_size)) * 4 / mb
    # every output is kept once for forward and once more for its gradient
    fwd_bwd_mb = 2 * sum(int(np.prod(s)) for s in shapes.values()) * 4 / mb
    params_mb = total * 4 / mb
    total_mb = input_mb + fwd_bwd_mb + params_mb
    print_fn(f"Total params: {total:,}")
    print_fn(f"Trainable params: {total:,}")
    print_fn("Non-trainable params: 0")
    print_fn("-" * width)
    print_fn(f"Input size (MB): {input_mb:.2f}")
    print_fn(f"Forward/backward pass size (MB): {fwd_bwd_mb:.2f}")
    print_fn(f"Params size (MB): {params_mb:.2f}")
    print_fn(f"Estimated Total Size (MB): {total_mb:.2f}")
    print_fn("-" * width)
    return {"total_params": total, "trainable_params": total, "output_shapes": shapes,
            "input_mb": input_mb, "forward_backward_mb": fwd_bwd_mb, "params_mb": params_mb,
            "total_mb": total_mb}
