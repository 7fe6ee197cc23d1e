"""Request and response bodies of the prediction API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ml_platform.settings import settings

MAX_BATCH = settings().api_max_batch


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensor_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]],
        Field(min_length=1, max_length=MAX_BATCH, description="Sensors to score, 1 to the max."),
    ]
    as_of: datetime | None = Field(
        default=None,
        description="Score with the features known at this time (point in time, offline store) "
        "instead of the latest online values. Timezone-aware; naive means UTC.",
    )


class Prediction(BaseModel):
    sensor_id: str
    failure_probability: float
    predicted_failure: bool


class PredictResponse(BaseModel):
    model_name: str
    model_version: str
    request_id: str
    as_of: datetime | None
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    trained_at: str
    run_id: str
    threshold: float
    features: int
    # Set while the alias cannot be followed (the loaded version keeps being served).
    refresh_error: str | None = None


class Status(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None
