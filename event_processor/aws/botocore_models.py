"""botocore's model files (service models, endpoint rules, partitions), read for less start-up CPU.

Most of the CPU the daemon's two clients cost to create is botocore's loader: before it loads
a service model it lists every service it ships (hundreds of directories, thousands of
`stat`s) only to check that the one asked for is among them, and it parses each file with the
stdlib's json into OrderedDicts. This loader checks for the one directory instead, and parses
with orjson (figures: docs/performance.md, "Choices that hold the cost down"); what it
loads is the same data (tests/unit/test_botocore_models.py compares it with botocore's own loader),
and anything it cannot answer that way goes to botocore's code, errors included.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache


class OrjsonFileLoader(JSONFileLoader):
    """botocore's JSON file loader (`.json`, `.json.gz`), parsing with orjson into dicts."""

    def _load_file(self, full_path: str, open_method: Callable[..., Any]) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            return orjson.loads(fp.read())


class ModelLoader(Loader):
    """botocore's Loader, without listing every service to load one."""

    FILE_LOADER_CLASS = OrjsonFileLoader

    @instance_cache
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        try:
            version = api_version
            if version is None:
                # Lists this service's own directory only; DataNotFoundError if it has none.
                version = self.determine_latest_version(service_name, type_name)
            model = self.load_data(os.path.join(service_name, version, type_name))
        except DataNotFoundError:
            # Unknown service, or no such model type: botocore's own answer and error.
            return super().load_service_model(service_name, type_name, api_version)
        # The SDK's extras merged in as botocore merges them (private parts the stubs leave
        # out; tests/unit/test_botocore_models.py compares every model the daemon loads).
        extras = self._find_extras(service_name, type_name, version)  # type: ignore[attr-defined]
        self._extras_processor.process(model, extras)  # type: ignore[attr-defined]
        return model


def loader(data_path: str | None) -> ModelLoader:
    """As botocore's `create_loader` builds one from AWS_DATA_PATH (`data_path`)."""
    if data_path is None:
        return ModelLoader()
    paths = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
    return ModelLoader(extra_search_paths=paths)


def use_on(session: Any) -> None:
    """Make `session` (a botocore or aiobotocore session) load its models with ModelLoader."""
    session.register_component("data_loader", loader(session.get_config_variable("data_path")))
