"""Fingerprints: stable hashes of named settings, and what changed between two of them."""

from __future__ import annotations

import torch

from ptqsam import __version__
from ptqsam.fingerprint import changed_settings, fingerprint, machine, mismatch, settings_hash, tensors_sha256


def test_the_hash_depends_on_content_not_key_order():
    a = {"recipe": {"rules": [1, 2], "name": "x"}, "bits": "W4A4"}
    b = {"bits": "W4A4", "recipe": {"name": "x", "rules": [1, 2]}}
    assert settings_hash(a) == settings_hash(b)
    assert settings_hash(a) != settings_hash({**a, "bits": "W4A8"})
    assert settings_hash(a) != settings_hash({**a, "recipe": {"rules": [2, 1], "name": "x"}})


def test_fingerprint_records_the_settings_and_the_version():
    stamp = fingerprint({"model": "testbed", "bits": ("W4A4",)})
    assert stamp["settings"] == {"ptqsam": __version__, "model": "testbed", "bits": ["W4A4"]}
    assert stamp["hash"] == settings_hash(stamp["settings"])


def test_changed_settings_name_nested_keys():
    old = {"model": "testbed", "calibration": {"seed": 0, "images": 4}, "recipe": {"rules": [1]}}
    new = {"model": "testbed", "calibration": {"seed": 1, "images": 4}, "recipe": {"rules": [2]}, "extra": 1}
    assert changed_settings(old, new) == ["calibration.seed", "extra", "recipe.rules"]


def test_mismatch_of_records():
    current = fingerprint({"model": "testbed", "bits": "W8A8"})
    assert mismatch(current, current) == []
    assert mismatch(fingerprint({"model": "testbed", "bits": "W4A4"}), current) == ["bits"]
    assert mismatch(None, current) == ["fingerprint (missing or altered)"]
    altered = {"hash": current["hash"], "settings": {**current["settings"], "bits": "W4A4"}}
    assert mismatch(altered, current) == ["fingerprint (missing or altered)"]  # settings edited by hand


def test_tensor_hash_is_order_and_layout_independent_and_sees_one_value():
    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16), "c": torch.tensor(True)}
    reference = tensors_sha256(weights.items())
    assert tensors_sha256(reversed(list(weights.items()))) == reference
    assert tensors_sha256([("a", weights["a"].t().contiguous().t()), ("b", weights["b"]), ("c", weights["c"])]) == reference
    changed = weights["a"].clone()
    changed[1, 2] = torch.nextafter(changed[1, 2], torch.tensor(10.0))
    assert tensors_sha256([("a", changed), ("b", weights["b"]), ("c", weights["c"])]) != reference
    assert tensors_sha256([("a", weights["a"].double()), ("b", weights["b"]), ("c", weights["c"])]) != reference
    assert tensors_sha256([("z", weights["a"]), ("b", weights["b"]), ("c", weights["c"])]) != reference


def test_the_machine_names_the_cpu_and_the_instruction_set_its_kernels_use():
    described = machine("cpu")
    assert described.endswith(f"({torch.backends.cpu.get_cpu_capability()})")
    assert len(described) > len(" (AVX2)") and described == machine(torch.device("cpu"))



def test_the_code_hash_names_the_packages_sources():
    from ptqsam.fingerprint import code_hash

    assert code_hash() == code_hash() and len(code_hash()) == 16 and int(code_hash(), 16) >= 0


def test_a_module_a_recipe_imports_is_known_by_its_source(tmp_path, monkeypatch):
    import os

    from ptqsam.fingerprint import module_hashes

    source = tmp_path / "my_quantizers_mod.py"
    source.write_text("ROUNDING = 'up'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = module_hashes(["my_quantizers_mod", "json"])
    source.write_text("ROUNDING = 'nearest'\n")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    second = module_hashes(["my_quantizers_mod", "json"])
    assert first["my_quantizers_mod"] != second["my_quantizers_mod"] and first["json"] == second["json"]
    assert module_hashes(["sys"]) == {"sys": None}  # built in: no source file


def test_a_file_hash_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    import os

    from ptqsam.fingerprint import file_sha256

    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea"  # SHA-256("abc"), FIPS 180-2
    stat = path.stat()
    path.write_bytes(b"abd")  # the same size, maybe within the same clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert file_sha256(path) != "ba7816bf8f01cfea"
