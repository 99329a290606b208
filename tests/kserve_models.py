"""Checks resources against the KServe SDK's models, in a process of its own.

``python tests/kserve_models.py`` reads a JSON list of ``[model name, resource, where]`` on stdin and
prints a JSON list with, for each, ``null`` (it fits) or the reason it does not. Exit status 3 when the
``kserve`` package is missing. tests/test_kubernetes.py runs it as a subprocess: importing ``kserve``
registers its own ``inference.*`` protobuf messages, which then clash with tritonclient's in the same
process (tests/test_triton_stats.py would skip).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any


def build(type_name: str, data: Any, where: str) -> Any:
    """``data`` built into the KServe SDK's (OpenAPI-generated) model ``type_name``, field by field.

    Raises ValueError naming the path of a field the model does not have, a value of the wrong type,
    or a missing required field (the generated models' own check). Types the SDK takes from the
    Kubernetes client (V1Container, V1ObjectMeta, ...) come from there.
    """
    from kserve import models as kserve_models
    from kubernetes.client import models as k8s_models

    # Containers as the SDK (list[X], dict(str, X)) and newer Kubernetes clients (List[X], Dict[str, X])
    # write them.
    container = re.fullmatch(r"(list|List)\[(.+)\]|(dict|Dict)[\[(]str, (.+)[\])]", type_name)
    if container and container.group(1):
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {data!r}")
        return [build(container.group(2), item, f"{where}[{i}]") for i, item in enumerate(data)]
    if container:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a map, got {data!r}")
        return {k: build(container.group(4), v, f"{where}.{k}") for k, v in data.items()}
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in simple:
        if not isinstance(data, simple[type_name]) or (type_name == "int" and isinstance(data, bool)):
            raise ValueError(f"{where}: expected {type_name}, got {data!r}")
        return data
    cls = getattr(kserve_models, type_name, None) or getattr(k8s_models, type_name)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a {type_name} object, got {data!r}")
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    unknown = set(data) - set(by_key)
    if unknown:
        raise ValueError(f"{where}: {sorted(unknown)} are not fields of {type_name}")
    kwargs = {by_key[k]: build(cls.openapi_types[by_key[k]], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def main() -> int:
    try:
        import kserve.models  # noqa: F401
    except ImportError as e:
        print(f"kserve is missing: {e}", file=sys.stderr)
        return 3
    results = []
    for type_name, data, where in json.load(sys.stdin):
        try:
            build(type_name, data, where)
            results.append(None)
        except ValueError as e:
            results.append(str(e))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
