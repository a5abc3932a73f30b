"""Modules whose buffers take their shape from the first data they see."""

from __future__ import annotations

from abc import ABCMeta

import torch
from torch import nn


class LazyStateModule(nn.Module, metaclass=ABCMeta):
    """An ``nn.Module`` whose buffers and parameters may be resized after construction (per-channel
    statistics, qparams of unknown length, learned rounding logits). Loading a state_dict resizes
    each to the saved shape and dtype, so the state of a calibrated module loads into a freshly
    built one. Abstract methods of subclasses are enforced (ABCMeta)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook signature
        for name, buf in list(self._buffers.items()):
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and (saved.shape != buf.shape or saved.dtype != buf.dtype):
                self._buffers[name] = torch.empty_like(saved, device=buf.device)
        for name, param in list(self._parameters.items()):
            saved = state_dict.get(prefix + name)
            if param is not None and saved is not None and (saved.shape != param.shape or saved.dtype != param.dtype):
                self._parameters[name] = nn.Parameter(torch.empty_like(saved, device=param.device), param.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
