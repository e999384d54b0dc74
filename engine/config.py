"""YAML configs: ``_base_`` inheritance, ``--opt a.b=c`` overrides, strict dataclass schema.

* ``_base_`` (a path or a list, relative to the including file) is merged first; dicts merge
  recursively, lists and scalars replace, ``_delete_: true`` in a dict replaces it whole.
  Bases may nest at most ``MAX_BASE_DEPTH`` levels; a missing or cyclic base is an error.
* Every section is a dataclass: an unknown key is an error naming the file and the nearest
  valid key; a value of the wrong type is an error too.
* The resolved config (no ``_base_`` left) is written beside each run with its hash and is
  enough to reproduce the run.
"""
import copy
import dataclasses
import difflib
import hashlib
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import yaml

MAX_BASE_DEPTH = 2


class ConfigError(ValueError):
    """A one-line, user-facing problem with a config file or override."""


# --------------------------------------------------------------------------- schema
@dataclass
class DomainCfg:
    name: str = "optdigits"          # DATASETS registry key
    domain: Union[str, List[str], None] = None  # sub-domain (office31: A/W/D); source: a list joins several
    root: str = "data"               # where the files live (ignored by embedded datasets)
    download: bool = False           # fetch missing files (checksummed) when a mirror exists
    image_list: Optional[str] = None  # TLlib-style "path label" list overriding the folder scan
    verify_counts: bool = True       # check image/class counts against the published dataset
    resize: Optional[List[int]] = None  # segmentation: [w, h] images are resized to (None: the dataset's default)


@dataclass
class DataCfg:
    source: DomainCfg = field(default_factory=DomainCfg)
    target: DomainCfg = field(default_factory=lambda: DomainCfg(name="optdigits_m"))
    batch_size: int = 64             # per domain and per card
    image_size: int = 28
    channels: int = 3
    resize_size: int = 0             # resize before crop (0 = image_size); imagenet style: 256
    # source (per-channel mean/std of source train) | imagenet | none | center | symmetric ((x-0.5)/0.5) | caffe
    normalize: str = "source"
    train_transform: str = "none"    # none | flip_crop | imagenet | identity (segmentation: no resize, no crop)
    seg_augment: Dict[str, Any] = field(default_factory=dict)  # segmentation: {scale: [lo, hi], crop: [w, h], flip: bool}
    source_sampler: str = "balanced"  # several source domains: balanced (fixed share of each per batch) | random (the union)
    strong_transform: str = "digits_strong"  # augmentation of the extra views regularizers ask for (OCR, IIMT)
    num_workers: int = 2
    prefetch: int = 2                # batches prepared ahead of the step on a background thread (0 = inline)
    source_val_fraction: float = 0.1  # labelled source images held out for label-free selection
    target_labeled_per_class: int = 0  # SSDA (MME, PAC): labelled target train images per class, 1 or 3 (0 = UDA)
    target_val_per_class: int = 3     # SSDA: labelled target validation images per class (MME's split)
    few_shot_seed: int = 0            # seed of the few-shot split (not train.seed: every seed sees the same labels)
    # class-split settings (datasets/class_split.py), class indices of the dataset; all None = closed set.
    # open-set: target_private set; partial: source_private set; open-partial: both
    shared_classes: Optional[List[int]] = None
    source_private: Optional[List[int]] = None
    target_private: Optional[List[int]] = None


@dataclass
class ModelCfg:
    backbone: str = "lenet"
    backbone_kwargs: Dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None  # path to a MindSpore .ckpt of the backbone
    bottleneck_dim: int = 0           # 0 = no bottleneck (features go straight to the head)
    head: str = "linear"
    head_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. cosine: {temperature: 0.05}
    num_classes: int = 10
    backbone_lr_mult: float = 1.0
    head_lr_mult: float = 1.0         # the classifier's lr multiplier (DeepLab/AdaptSegNet: 10)
    norm_plugins: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimCfg:
    name: str = "sgd"                 # sgd | adam
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: str = "inv"          # inv: lr * (1 + gamma * it) ** -power | poly: lr * (1 - it / total) ** power | cosine | constant
    lr_gamma: float = 0.01
    lr_power: float = 0.75
    lr_total_iters: int = 0           # poly, cosine: iterations the decay runs over (0 = the phase's); may exceed them
    lr_step_every: int = 1            # cosine: iterations between LR changes; 0 = one epoch (needs train.epochs), as Dassl
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class TrainCfg:
    seed: int = 0
    iters: int = 1000                 # iterations of the main phase
    epochs: int = 0                   # > 0: iters = epochs x (source images // global batch), set from the data
    log_every: int = 50
    eval_every: int = 250
    ckpt_every: int = 250
    output_dir: str = "runs/{config_name}/seed{seed}"
    select_by: str = "last"           # last | a validator name (engine/validators.py); never target labels
    validators: Optional[List[str]] = None  # scored at every eval point (None: all that the data allows)
    validator_samples: int = 2000     # target (and source) training images the validators score, evenly spaced
    amp_level: str = "auto"           # auto | O0 | O1 | O2 | O3
    grad_accum: int = 1
    loss_scale: float = 1024.0        # initial dynamic loss scale under amp


@dataclass
class MethodParams:
    """Base of every method's parameter dataclass (registered beside the method)."""
    name: str = "source_only"


@dataclass
class RegularizerParams:
    """Base of every regularizer's parameter dataclass."""
    name: str = ""
    weight: float = 1.0


@dataclass
class Config:
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    method: Any = field(default_factory=MethodParams)
    regularizers: List[Any] = field(default_factory=list)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    name: str = ""                    # run name; defaults to the config file's stem


# --------------------------------------------------------------------------- loading
def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and value.get("_delete_"):
            out[key] = {k: v for k, v in value.items() if k != "_delete_"}
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_yaml(path, _chain=()):
    """Read ``path`` and merge its ``_base_`` files under it (recursively, depth-limited)."""
    path = os.path.abspath(path)
    if path in _chain:
        cycle = " -> ".join(os.path.relpath(p) for p in (*_chain, path))
        raise ConfigError(f"cyclic _base_ chain: {cycle}")
    if len(_chain) > MAX_BASE_DEPTH:
        raise ConfigError(f"{os.path.relpath(path)}: _base_ nested deeper than {MAX_BASE_DEPTH} levels; "
                          "flatten it into configs/_base_/ files")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            raise ConfigError(f"{os.path.relpath(path)}: _base_ file not found: {base}")
        merged = _merge(merged, load_yaml(base_path, (*_chain, path)))
    return _merge(merged, data)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _parse_value(raw):
    """YAML scalar/list, plus ``1e-3`` as a float (YAML 1.1 reads it as a string)."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def apply_overrides(data, overrides):
    """``["optim.lr=0.02", "data.source.name=usps"]``; values are parsed as YAML scalars/lists."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        value = _parse_value(raw)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


# --------------------------------------------------------------------------- validation
def _type_ok(value, tp):
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, List):
        return isinstance(value, list)
    if origin in (dict, Dict):
        return isinstance(value, dict)
    return isinstance(value, tp)


def _unknown_key(key, valid, where, source):
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    near = f"; did you mean '{where}{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{source}: unknown key '{where}{key}'{near}")


def from_dict(cls, data, where="", source="config"):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where.rstrip('.')}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, names, where, source)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}{key}.", source)
            continue
        if isinstance(value, str) and _FLOAT.match(value.strip()) and float in typing.get_args(tp) + (tp,):
            value = float(value)  # "1e-3" in a YAML file
        if isinstance(value, float) and tp is int and value.is_integer():
            value = int(value)
        if not _type_ok(value, tp):
            want = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            raise ConfigError(f"{source}: '{where}{key}' must be {want}, got {value!r}")
        kwargs[key] = float(value) if tp is float else value
    return cls(**kwargs)


def _named_params(registry, entry, where, source):
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{source}: '{where}' needs a 'name' (one of {', '.join(registry.names())})")
    try:
        params_cls = registry.params(entry["name"])
    except KeyError as err:
        raise ConfigError(f"{source}: {err.args[0]}") from None
    return from_dict(params_cls, entry, f"{where}.", source)


def build_config(data, source="config"):
    """Validate a merged dict into a :class:`Config` (methods/regularizers by their registries)."""
    import losses  # noqa: F401  (fills METHODS/REGULARIZERS)
    from engine.registry import METHODS, REGULARIZERS

    data = dict(data)
    method = data.pop("method", {"name": "source_only"})
    regs = data.pop("regularizers", []) or []
    cfg = from_dict(Config, data, "", source)
    cfg.method = _named_params(METHODS, method, "method", source)
    if not isinstance(regs, list):
        raise ConfigError(f"{source}: 'regularizers' must be a list of {{name, weight, ...}}")
    cfg.regularizers = [_named_params(REGULARIZERS, r, f"regularizers[{i}]", source) for i, r in enumerate(regs)]
    return cfg


def load_config(path, overrides=()):
    data = apply_overrides(load_yaml(path), overrides)
    cfg = build_config(data, source=os.path.relpath(path))
    if not cfg.name:
        cfg.name = os.path.splitext(os.path.basename(path))[0]
        if cfg.name == "config":  # a run directory's saved config: keep the original run name
            cfg.name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return cfg


def to_dict(cfg):
    return dataclasses.asdict(cfg)


def dump_config(cfg):
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_hash(cfg):
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]
