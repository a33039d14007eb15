"""The daemon's model loader reads what botocore's own loader reads, and fails as it fails."""

from __future__ import annotations

from pathlib import Path

import botocore.session
import orjson
import pytest
from botocore.exceptions import DataNotFoundError, UnknownServiceError
from botocore.loaders import Loader

from event_processor.aws import botocore_models


@pytest.mark.parametrize("service", ["sqs", "kinesis"])
@pytest.mark.parametrize(
    "type_name", ["service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2"]
)
def test_service_models_are_botocores(service: str, type_name: str) -> None:
    """Gzipped or not, with the extras merged in; SQS has no waiters: the same error."""
    try:
        expected = Loader().load_service_model(service, type_name)
    except DataNotFoundError as botocore_error:
        with pytest.raises(type(botocore_error), match=str(botocore_error)):
            botocore_models.loader(None).load_service_model(service, type_name)
    else:
        assert botocore_models.loader(None).load_service_model(service, type_name) == expected


@pytest.mark.parametrize("name", ["endpoints", "partitions", "sdk-default-configuration", "_retry"])
def test_data_files_are_botocores(name: str) -> None:
    """Each data file the loader reads is what botocore's own loader reads."""
    assert botocore_models.loader(None).load_data(name) == Loader().load_data(name)


def test_an_unknown_service_is_botocores_error() -> None:
    """An unknown service raises botocore's own error, with its words."""
    with pytest.raises(UnknownServiceError) as botocore_error:
        Loader().load_service_model("no-such-service", "service-2")
    with pytest.raises(UnknownServiceError) as ours:
        botocore_models.loader(None).load_service_model("no-such-service", "service-2")
    assert str(ours.value) == str(botocore_error.value)


def test_aws_data_path_comes_first(tmp_path: Path) -> None:
    """A model in AWS_DATA_PATH is found, and wins over botocore's own, as botocore does it."""
    custom = tmp_path / "sqs" / "2012-11-05"
    custom.mkdir(parents=True)
    model = {"version": "2.0", "metadata": {"custom": True}, "operations": {}, "shapes": {}}
    (custom / "service-2.json").write_bytes(orjson.dumps(model))
    ours = botocore_models.loader(str(tmp_path)).load_service_model("sqs", "service-2")
    assert ours["metadata"] == {"custom": True}


def test_a_session_uses_it() -> None:
    """use_on makes a botocore session load its models through this loader."""
    session = botocore.session.get_session()
    botocore_models.use_on(session)
    assert isinstance(session.get_component("data_loader"), botocore_models.ModelLoader)
    assert session.get_service_model("kinesis").operation_model("PutRecords").name == "PutRecords"
