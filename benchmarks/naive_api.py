"""The reference the prediction API is measured against: what the scripts it replaces did, i.e.
open the feature store and load the champion from the registry on every request."""

from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    sensor_ids: list[str]


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(body: Body) -> dict:
        from ml_platform.defs.resources import build_resources
        from ml_platform.lib import feature_store as fs

        resources = build_resources()
        store = resources["feast"].store()
        model = resources["mlflow"].mlflow().sklearn.load_model("models:/failure_model@champion")
        frame = store.get_online_features(
            features=store.get_feature_service(fs.FEATURE_SERVICE),
            entity_rows=[{"sensor_id": s} for s in body.sensor_ids],
        ).to_df()
        proba = model.predict_proba(frame[list(model.feature_names_in_)].astype(float))[:, 1]
        return {"predictions": [float(p) for p in proba]}

    return app
