"""A missing or mismatched compiled extension is never a silent slow path: one warning names the fix."""

from __future__ import annotations

import warnings

import pytest
import torch

from fisherkit.ops import dispatch, extension
from fisherkit.ops.extension import DISABLE_ENV, ExtensionStatus


@pytest.fixture
def missing_extension(monkeypatch):
    status = ExtensionStatus(False, "built for torch 2.4.0 but torch 2.13.0 is running; rebuild it", "2.4.0")
    monkeypatch.setattr(extension, "extension_status", lambda: status)
    monkeypatch.setattr(dispatch, "extension_status", lambda: status)
    extension.warn_extension_unavailable.cache_clear()
    yield
    extension.warn_extension_unavailable.cache_clear()


def _cpu_call():
    return dispatch.implementation("kfac_factor_update", torch.zeros(3, 3), torch.ones(4, 3))


def test_the_reference_serving_for_a_missing_extension_warns_once(missing_extension, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match=r"built for torch 2\.4\.0.*pip install --no-build-isolation") as caught:
        assert _cpu_call().backend == "reference"
        assert _cpu_call().backend == "reference"
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1


def test_disabling_the_extension_on_purpose_does_not_warn(missing_extension, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cpu_call().backend == "reference"
