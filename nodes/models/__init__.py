"""Data models: `model` nodes define the point types (value type, unit, min/max) that devices
referencing them (`model` point) may send; batches that break them are refused at the API."""

from siot.nodes.models.cache import MODEL_NODE_TYPE, ModelCache
from siot.nodes.models.client import REJECTED_POINT, ModelValidation, model_client
from siot.nodes.models.rules import SYSTEM_TYPES, FieldRule, Model, ValueType, compile_model

__all__ = [
    "MODEL_NODE_TYPE",
    "REJECTED_POINT",
    "SYSTEM_TYPES",
    "FieldRule",
    "Model",
    "ModelCache",
    "ModelValidation",
    "ValueType",
    "compile_model",
    "model_client",
]
