"""Response shapes of the HTTP API, for the OpenAPI schema at ``/openapi.json``."""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel

ItemId = Union[int, str]


class ErrorBody(BaseModel):
    error: str
    status: int


class Health(BaseModel):
    status: str
    items: int
    bits: int


class RouteStats(BaseModel):
    count: int
    errors: int
    p50_ms: Optional[float]
    p90_ms: Optional[float]
    p99_ms: Optional[float]


class Stats(BaseModel):
    items: int
    bits: int
    method: Optional[str]
    dataset: Optional[str]
    searcher: str
    index: str
    version: int
    id_kind: str
    class_names: Optional[list[str]]
    can_encode_images: bool
    uptime_s: float
    requests: dict[str, RouteStats]


class SearchResult(BaseModel):
    rank: int
    id: ItemId
    distance: int
    label: str
    image_url: Optional[str]


class SearchResponse(BaseModel):
    query: dict[str, ItemId]
    k: Optional[int]
    radius: Optional[int]
    count: int
    truncated: bool
    took_ms: float
    results: list[SearchResult]


class AddedItem(BaseModel):
    id: ItemId
    image_url: str


class AddResponse(BaseModel):
    added: list[AddedItem]
    replaced: int
    items: int


class DeleteResponse(BaseModel):
    deleted: ItemId
    items: int


class Item(BaseModel):
    id: ItemId
    label: str
    code: str
    image_url: Optional[str]


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422)}

_ID = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["id"], "properties": {"id": _ID}}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "additionalProperties": False,
                                       "properties": {"image": {"type": "string", "format": "binary"}}}}}}}
ITEMS_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["images"], "additionalProperties": False, "properties": {
        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}},
        "ids": {"type": "array", "items": {"type": "string"}},
        "labels": {"type": "array", "items": {"type": "string"},
                   "description": "class names separated by commas, one entry per image"}}}}}}}
