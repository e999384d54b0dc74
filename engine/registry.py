"""Name -> builder registries. Unknown and duplicate names are errors that say what exists."""
import difflib


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._items = {}

    def register(self, name=None, params=None):
        """Decorator. ``params`` is an optional dataclass describing the YAML keys it takes."""

        def add(obj):
            key = name or obj.__name__.lower()
            if key in self._items:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = (obj, params)
            return obj

        return add

    def names(self):
        return sorted(self._items)

    def __contains__(self, name):
        return name in self._items

    def get(self, name):
        if name not in self._items:
            hint = difflib.get_close_matches(str(name), self.names(), n=1)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise KeyError(f"unknown {self.kind} {name!r}{near}; valid: {', '.join(self.names())}")
        return self._items[name][0]

    def params(self, name):
        self.get(name)
        return self._items[name][1]

    def build(self, name, *args, **kwargs):
        return self.get(name)(*args, **kwargs)


BACKBONES = Registry("backbone")
HEADS = Registry("head")
DISCRIMINATORS = Registry("discriminator")
METHODS = Registry("method")
REGULARIZERS = Registry("regularizer")
DATASETS = Registry("dataset")
SEGMENTERS = Registry("segmenter")   # dense models: (N, 3, H, W) -> ((N, K, h, w) logits, aux logits tuple)
EVALUATORS = Registry("evaluator")   # task -> scores of a model on a domain (accuracy, mIoU)
