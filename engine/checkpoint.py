"""One-file checkpoints: network + optimizer state + iteration + phase + config hash.

Written to a temporary file in the same directory, fsynced, then ``os.replace``d over the
target, so a run killed at any moment leaves either the previous or the new checkpoint.
Resume reads the iteration and phase from the file's contents, never from its name.
"""
import os

import mindspore as ms

OPTIM_PREFIX = "optim."
META_KEYS = ("iter", "phase", "cfg_hash", "finished", "seed")


class CheckpointError(ValueError):
    pass


def optimizer_state(optimizers, net_param_ids):
    """``[(name, Parameter)]`` of the optimizers' own state (moments, step), network params excluded."""
    items = []
    for group, opt in sorted(optimizers.items()):
        for name, param in opt.parameters_and_names():
            if id(param) not in net_param_ids:
                items.append((f"{OPTIM_PREFIX}{group}.{name}", param))
    return items


def save(path, net, optimizers=None, **meta):
    net_params = list(net.parameters_and_names())
    ids = {id(p) for _, p in net_params}
    entries = [{"name": n, "data": p} for n, p in net_params]
    entries += [{"name": n, "data": p} for n, p in optimizer_state(optimizers or {}, ids)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path[:-len('.ckpt')]}.tmp{os.getpid()}.ckpt"
    ms.save_checkpoint(entries, tmp, append_dict={k: v for k, v in meta.items() if v is not None})
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    meta = {}
    for key in META_KEYS:
        if key in data:
            value = data.pop(key)
            meta[key] = value if isinstance(value, str) else value.asnumpy().item()
    return data, meta


def _check_and_assign(targets, data, path, what):
    """Copy ``data[name]`` into each target Parameter; one error naming every mismatch."""
    missing = [n for n in targets if n not in data]
    shapes = [f"{n} {tuple(data[n].shape)} vs model {tuple(p.shape)}"
              for n, p in targets.items() if n in data and tuple(data[n].shape) != tuple(p.shape)]
    if missing or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameter(s) e.g. {', '.join(missing[:3])}")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        raise CheckpointError(f"{path} does not fit this {what} ({'; '.join(parts)}); "
                              "was it saved from a different config or backbone?")
    for name, param in targets.items():
        param.set_data(data[name].astype(param.dtype) if data[name].dtype != param.dtype else data[name])


def load(path, net, optimizers=None, strict_optim=True):
    """Restore ``net`` (and optimizers) from ``path``; returns the metadata dict."""
    data, meta = read(path)
    net_params = dict(net.parameters_and_names())
    _check_and_assign(net_params, data, path, "model")
    if optimizers:
        ids = {id(p) for p in net_params.values()}
        state = dict(optimizer_state(optimizers, ids))
        if strict_optim:
            _check_and_assign(state, data, path, "optimizer")
    return meta


def load_backbone_weights(backbone, path):
    """Load ImageNet (or other) weights into a backbone; keys may carry a ``backbone.`` prefix.

    Every backbone parameter must be in the file, except those of CrossNorm/SelfNorm plug-ins.
    A backbone with its own ``load_pretrained(path)`` (slimmable nets: one BatchNorm row per width)
    loads a plain network's weights its own way.
    """
    if hasattr(backbone, "load_pretrained"):
        return backbone.load_pretrained(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"pretrained weights not found: {path}. Convert the PyTorch weights once with "
            "`python tools/convert_torchvision.py <weights.pth> <out.ckpt> --arch <resnet50|deeplabv2_resnet101|...>` "
            "(see README), or set model.pretrained: null for random init")
    data, _ = read(path)
    data = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in data.items()}
    from models.cnsn import plugin_parameter_names

    plugins = plugin_parameter_names(backbone)  # CrossNorm/SelfNorm: not in ImageNet weights, they start fresh
    targets = {n: p for n, p in backbone.parameters_and_names() if n not in plugins}
    _check_and_assign(targets, data, path, "backbone")
