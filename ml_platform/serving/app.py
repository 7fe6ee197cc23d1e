"""The prediction API: failure probabilities from the Feast online store and the champion model.

``make serve`` runs it on 127.0.0.1:8000 (``uvicorn --factory ml_platform.serving.app:create_app``).
The model and the feature store are loaded once and kept in memory; a batch of sensors is one
online-store call. A background thread follows the ``champion`` alias and swaps the model in.

Configuration (environment): the platform's own variables for MLflow and Feast, plus
``ML_PLATFORM_API_KEY`` (when set, ``/predict`` requires it in ``X-API-Key``),
``ML_PLATFORM_API_RELOAD_S`` (alias polling interval, default 10 s), ``ML_PLATFORM_API_MAX_BATCH``
(sensors per request, default 500).
"""

from __future__ import annotations

import gc
import warnings
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from ml_platform.serving.feature_source import FeatureSource
from ml_platform.serving.logs import configure_logging
from ml_platform.serving.middleware import Envelope, internal_error
from ml_platform.serving.model_holder import ModelHolder
from ml_platform.serving.routes import router


def create_app(*, reload_interval_s: float | None = None) -> FastAPI:
    """The application; resources come from the platform's settings (``resources_for``)."""
    from ml_platform.defs.resources import resources_for
    from ml_platform.settings import require_safe_process_environment, settings

    # ML_PLATFORM_PROFILE=deployed: refuse to start with a default or weak credential.
    require_safe_process_environment()
    configure_logging()
    config = settings()
    interval = reload_interval_s or config.api_reload_s
    api_key = config.api_key
    resources = resources_for(config)
    app = FastAPI(
        title="ml-platform prediction API",
        version="1",
        description="Failure probabilities per sensor from the champion model and Feast features.",
        lifespan=lifespan,
    )
    app.state.reload_interval_s, app.state.api_key = interval, api_key
    app.state.holder = ModelHolder(resources["mlflow"])
    app.state.features = FeatureSource(resources["feast"])
    app.add_middleware(Envelope, holder=app.state.holder)
    app.add_exception_handler(Exception, internal_error)
    app.include_router(router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Load what can be loaded, follow the registry and the alias until shutdown."""
    from threadpoolctl import threadpool_limits

    # One row at a time: OpenMP threads in the trees only contend with the server's own.
    app.state.thread_limits = threadpool_limits(limits=1)
    # Rows arrive as arrays in the model's own feature order (checked at load).
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    holder: ModelHolder = app.state.holder
    holder.on_tick = partial(_follow_registry, holder, app.state.features)
    try:
        holder.on_tick()
        holder.refresh()
    except Exception as exc:  # start anyway: /ready says why, the watcher retries
        holder.last_error = f"{type(exc).__name__}: {exc}"
    holder.watch(app.state.reload_interval_s)
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise pause every request for a few hundred ms now and then.
    gc.collect()
    gc.freeze()
    yield
    holder.stop()


def _follow_registry(holder: ModelHolder, features: FeatureSource) -> None:
    """One registry tick: the feature service reread, so that the holder loads only a model
    whose features it serves."""
    holder.available_features = features.refresh()
