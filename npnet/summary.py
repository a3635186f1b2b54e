"""A model summary in the style of torchsummary / Keras: one row per layer call."""
from __future__ import annotations

import numpy as np

from .autograd import call_name


def layers_of(model):
    """(name, layer) for every layer (a module with its own backward) in ``model``; a lone
    layer is named after its class."""
    if model._is_layer:
        return [(type(model).__name__, model)]
    return [(name, m) for name, m in model.named_modules() if m._is_layer and name]


def summary(model, input_size=(1, 28, 28), print_fn=print, batch_size=-1):
    """Print a table: Layer (type) | Output Shape | Param #, then totals and memory.

    Runs one forward pass on a zero batch of 2 in eval mode (every module's mode is
    restored) and prints one row per layer call, in the order of the calls; a layer called
    again ('relu#2') shows its parameters only the first time, so the column adds up to
    the total.  Shapes print with -1 for the batch, as torchsummary.

    Returns:
        dict with 'total_params', 'trainable_params', 'output_shapes' (per call name),
        and the memory estimates in MB ('input_mb', 'forward_backward_mb', 'params_mb',
        'total_mb') for a batch of one, float32.
    """
    if not isinstance(input_size, (tuple, list)) or any(
            not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1
            for d in input_size):
        raise ValueError(f"summary: input_size must be a tuple of positive ints such as "
                         f"(1, 28, 28), got {input_size!r}")
    rows, shapes, calls = [], {}, {}

    def record(name):
        def hook(layer, args, out):
            k = calls[id(layer)] = calls.get(id(layer), 0) + 1
            key = call_name(name, k)
            shapes[key] = tuple(out.shape[1:])
            n = sum(p.data.size for p in layer.parameters()) if k == 1 else 0
            rows.append((f"{key} ({type(layer).__name__})", [batch_size, *out.shape[1:]], n))
        return hook

    modes = [(m, m.training) for m in model.modules()]
    handles = [layer.register_forward_hook(record(name)) for name, layer in layers_of(model)]
    try:
        dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))
        model.eval()
        model(np.zeros((2, *input_size), dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:               # each module's own mode, as it was
            m.training = training

    total = model.num_parameters()
    first = max([24] + [len(name) + 2 for name, _, _ in rows])   # long names widen it
    width = first + 40
    print_fn("-" * width)
    print_fn(f"{'Layer (type)':<{first}}{'Output Shape':>25}{'Param #':>15}")
    print_fn("=" * width)
    for name, shape, n in rows:
        print_fn(f"{name:<{first}}{str(shape):>25}{n:>15,}")
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
