"""The parts of diffusers' ``ModelMixin`` / ``ConfigMixin`` surface that scripts written for diffusers touch beyond
forward and the checkpoint methods: config access through the model, ``register_to_config``, ``from_config`` /
``load_config`` / ``save_config``, parameter counts, and the class attributes diffusers' loaders read.
"""
from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Set

import torch.nn as nn

from .checkpoints import loading
from .checkpoints.folders import CONFIG_NAME, read_json, resolve_model_folder
from .errors import UnsupportedOptionError
from .network.config import DEFAULTS, UNet3DConfig
from .pretrained_kwargs import check_local

log = logging.getLogger("unet3d")
_BUILD_KEYWORDS = ("dtype", "device", "operations")


class DiffusersModelSurface:
    """Mixed in before the network (its ``__getattr__`` must come before ``torch.nn.Module``'s)."""

    config_name = CONFIG_NAME
    _keep_in_fp32_modules = None   # diffusers' class attributes, read by its loaders and tests
    _no_split_modules = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("_config")
            if config is None or name not in config:
                raise
        # diffusers still answers config fields read from the model, with a deprecation warning; so do we.
        warnings.warn(f"Reading the config field `{name}` from the model is deprecated (as in diffusers); read it "
                      f"from the config: `model.config.{name}`.", FutureWarning, stacklevel=2)
        return config[name]

    # -- config
    def register_to_config(self, **kwargs: Any) -> None:
        """Record entries in the config (e.g. ``in_channels=8`` after widening ``conv_in`` yourself). Model fields
        are validated; other keys are kept as given and written to config.json."""
        kwargs.pop("kwargs", None)
        self._config = self._config.merged(kwargs)

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: Any, return_unused_kwargs: bool = False,
                    return_commit_hash: bool = False, **kwargs: Any):
        """The config.json of a local model folder (or ``subfolder``), or a config.json path, as a dict."""
        subfolder = kwargs.pop("subfolder", None)
        check_local(pretrained_model_name_or_path, subfolder)
        path = Path(pretrained_model_name_or_path)
        if not path.is_file():
            path = resolve_model_folder(path, subfolder) / CONFIG_NAME
        config = read_json(path)
        outputs = (config,) + ((kwargs,) if return_unused_kwargs else ()) + ((None,) if return_commit_hash else ())
        return outputs if len(outputs) > 1 else config

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Build (random weights) from a config mapping such as a diffusers config.json or ``model.config``.
        Keyword arguments that are config fields replace those entries; ``dtype``, ``device`` and ``operations``
        go to the constructor. Bookkeeping keys (``_class_name``...) and keys of other UNets are ignored."""
        if config is None:
            config = kwargs.pop("pretrained_model_name_or_path", None)
        if config is not None and not isinstance(config, Mapping):
            config = cls.load_config(config, subfolder=kwargs.pop("subfolder", None))
        parsed, ignored = UNet3DConfig.from_dict(config or {})
        ignored = [k for k in ignored if not k.startswith("_")]
        if ignored:
            log.info("%s.from_config ignores keys it does not use: %s", cls.__name__, ignored)
        init_names = _init_keywords(cls)
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in DEFAULTS}
        build = {k: kwargs.pop(k) for k in list(kwargs) if k in init_names}
        model = cls(**{**parsed, **fields}, **build)
        if return_unused_kwargs:
            return model, kwargs
        if kwargs:
            log.info("%s.from_config ignores keyword arguments it does not use: %s", cls.__name__, sorted(kwargs))
        return model

    def save_config(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> Path:
        """Write the config.json of this model (as ``save_pretrained`` does, without weights)."""
        if push_to_hub:
            raise UnsupportedOptionError("push_to_hub=True: uploading to the Hugging Face Hub is out of scope of "
                                         "unet3d; save the folder, then upload it with `huggingface-cli upload`.")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_NAME
        path.write_text(json.dumps(loading.config_as_json(self), indent=2, sort_keys=True) + "\n")
        return path

    # -- sizes
    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters; only those with ``requires_grad`` if ``only_trainable``; without the weights of
        ``nn.Embedding`` layers if ``exclude_embeddings`` (this UNet has none, as in diffusers)."""
        skip = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)} \
            if exclude_embeddings else set()
        return sum(p.numel() for name, p in self.named_parameters()
                   if name not in skip and (p.requires_grad or not only_trainable))

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """Bytes held by the parameters (and buffers)."""
        total = sum(p.numel() * p.element_size() for p in self.parameters())
        if return_buffers:
            total += sum(b.numel() * b.element_size() for b in self.buffers())
        return total

    # -- attention back-ends
    def enable_xformers_memory_efficient_attention(self, attention_op: Optional[Any] = None) -> None:
        """Kept for scripts that call it: attention already runs torch's scaled_dot_product_attention, which picks
        a memory-efficient or flash kernel itself, so nothing changes (xformers is not used)."""
        log.warning("enable_xformers_memory_efficient_attention: unet3d attends with torch's "
                    "scaled_dot_product_attention (memory-efficient / flash kernels chosen by torch); nothing changed")

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Nothing to undo (see ``enable_xformers_memory_efficient_attention``)."""


def _init_keywords(cls: Any) -> Set[str]:
    """Keyword arguments the constructors along ``cls``'s MRO name explicitly (besides the config fields)."""
    names = set(_BUILD_KEYWORDS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        names.update(p.name for p in inspect.signature(init).parameters.values()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self")
    return names
