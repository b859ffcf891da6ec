from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADD_OUTCOME_UNSPECIFIED: _ClassVar[AddOutcome]
    ADDED: _ClassVar[AddOutcome]
    DUPLICATE: _ClassVar[AddOutcome]
    SKIPPED: _ClassVar[AddOutcome]
ADD_OUTCOME_UNSPECIFIED: AddOutcome
ADDED: AddOutcome
DUPLICATE: AddOutcome
SKIPPED: AddOutcome

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("height", "width", "values")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "box", "top_k", "query_expansion", "localize", "return_heatmaps", "return_concepts", "expansion", "rerank")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    QUERY_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    LOCALIZE_FIELD_NUMBER: _ClassVar[int]
    RETURN_HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    RETURN_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    EXPANSION_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    box: Box
    top_k: int
    query_expansion: int
    localize: bool
    return_heatmaps: bool
    return_concepts: bool
    expansion: str
    rerank: int
    def __init__(self, image: _Optional[bytes] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., top_k: _Optional[int] = ..., query_expansion: _Optional[int] = ..., localize: _Optional[bool] = ..., return_heatmaps: _Optional[bool] = ..., return_concepts: _Optional[bool] = ..., expansion: _Optional[str] = ..., rerank: _Optional[int] = ...) -> None: ...

class Concept(_message.Message):
    __slots__ = ("index", "heatmap", "kept", "weight")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    index: int
    heatmap: Heatmap
    kept: bool
    weight: float
    def __init__(self, index: _Optional[int] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., kept: _Optional[bool] = ..., weight: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("id", "path", "key", "score", "rank", "box", "image_missing", "heatmap", "width", "height", "shared_concept", "shared_concept_heatmap")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MISSING_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHARED_CONCEPT_FIELD_NUMBER: _ClassVar[int]
    SHARED_CONCEPT_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    id: int
    path: str
    key: str
    score: float
    rank: int
    box: Box
    image_missing: bool
    heatmap: Heatmap
    width: int
    height: int
    shared_concept: int
    shared_concept_heatmap: Heatmap
    def __init__(self, id: _Optional[int] = ..., path: _Optional[str] = ..., key: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., image_missing: _Optional[bool] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., shared_concept: _Optional[int] = ..., shared_concept_heatmap: _Optional[_Union[Heatmap, _Mapping]] = ...) -> None: ...

class StageLatency(_message.Message):
    __slots__ = ("stage", "milliseconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MILLISECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    milliseconds: float
    def __init__(self, stage: _Optional[str] = ..., milliseconds: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "stages", "query_factors", "query_heatmap", "query_width", "query_height", "query_concepts", "reranked", "notes")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    QUERY_FACTORS_FIELD_NUMBER: _ClassVar[int]
    QUERY_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    QUERY_WIDTH_FIELD_NUMBER: _ClassVar[int]
    QUERY_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUERY_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    RERANKED_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    stages: _containers.RepeatedCompositeFieldContainer[StageLatency]
    query_factors: int
    query_heatmap: Heatmap
    query_width: int
    query_height: int
    query_concepts: _containers.RepeatedCompositeFieldContainer[Concept]
    reranked: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[StageLatency, _Mapping]]] = ..., query_factors: _Optional[int] = ..., query_heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., query_width: _Optional[int] = ..., query_height: _Optional[int] = ..., query_concepts: _Optional[_Iterable[_Union[Concept, _Mapping]]] = ..., reranked: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class AddImageRequest(_message.Message):
    __slots__ = ("image", "key", "skip_invalid")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SKIP_INVALID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    key: str
    skip_invalid: bool
    def __init__(self, image: _Optional[bytes] = ..., key: _Optional[str] = ..., skip_invalid: _Optional[bool] = ...) -> None: ...

class AddedImage(_message.Message):
    __slots__ = ("id", "key", "path", "duplicate", "outcome", "reason", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    key: str
    path: str
    duplicate: bool
    outcome: AddOutcome
    reason: str
    message: str
    def __init__(self, id: _Optional[int] = ..., key: _Optional[str] = ..., path: _Optional[str] = ..., duplicate: _Optional[bool] = ..., outcome: _Optional[_Union[AddOutcome, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class AddImagesResponse(_message.Message):
    __slots__ = ("added", "count", "generation")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedCompositeFieldContainer[AddedImage]
    count: int
    generation: int
    def __init__(self, added: _Optional[_Iterable[_Union[AddedImage, _Mapping]]] = ..., count: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class RemoveImagesRequest(_message.Message):
    __slots__ = ("ids", "paths")
    IDS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveImagesResponse(_message.Message):
    __slots__ = ("removed", "count", "generation")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    removed: int
    count: int
    generation: int
    def __init__(self, removed: _Optional[int] = ..., count: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class GetIndexInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("count", "backbone", "method", "image_size", "dimension", "max_top_k", "manifest_json", "index_dir", "rerank", "max_rerank")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    INDEX_DIR_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    MAX_RERANK_FIELD_NUMBER: _ClassVar[int]
    count: int
    backbone: str
    method: str
    image_size: int
    dimension: int
    max_top_k: int
    manifest_json: str
    index_dir: str
    rerank: int
    max_rerank: int
    def __init__(self, count: _Optional[int] = ..., backbone: _Optional[str] = ..., method: _Optional[str] = ..., image_size: _Optional[int] = ..., dimension: _Optional[int] = ..., max_top_k: _Optional[int] = ..., manifest_json: _Optional[str] = ..., index_dir: _Optional[str] = ..., rerank: _Optional[int] = ..., max_rerank: _Optional[int] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("id", "max_side")
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    id: int
    max_side: int
    def __init__(self, id: _Optional[int] = ..., max_side: _Optional[int] = ...) -> None: ...

class ImageData(_message.Message):
    __slots__ = ("id", "data", "content_type", "width", "height", "path", "key")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    id: int
    data: bytes
    content_type: str
    width: int
    height: int
    path: str
    key: str
    def __init__(self, id: _Optional[int] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., path: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...
