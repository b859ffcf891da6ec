"""Protobuf answers of `dff-serve` -> the JSON the page reads (small: rounded numbers, file names
instead of server paths)."""

from __future__ import annotations

import json
from pathlib import PurePath

from dffsearch.v1 import search_pb2


def heatmap_json(message: search_pb2.Heatmap) -> dict | None:
    if message.height == 0 or message.width == 0:
        return None
    return {
        "height": message.height,
        "width": message.width,
        "values": [round(float(v), 3) for v in message.values],
    }


def box_json(message: search_pb2.Box) -> list[float]:
    return [round(float(v), 1) for v in (message.x0, message.y0, message.x1, message.y1)]


def search_json(response: search_pb2.SearchResponse) -> dict:
    results = []
    for result in response.results:
        results.append(
            {
                "rank": result.rank,
                "id": result.id,
                "score": round(float(result.score), 4),
                # the file name only: the page has no business with the server's folders
                "name": result.key or PurePath(result.path).name,
                "box": box_json(result.box) if result.HasField("box") else None,
                "image_missing": result.image_missing,
                "width": result.width,
                "height": result.height,
                "heatmap": heatmap_json(result.heatmap) if result.HasField("heatmap") else None,
                "shared_concept": result.shared_concept if result.HasField("shared_concept") else None,
                "shared_concept_heatmap": (
                    heatmap_json(result.shared_concept_heatmap) if result.HasField("shared_concept_heatmap") else None
                ),
            }
        )
    concepts = [
        {"index": c.index, "kept": c.kept, "weight": round(float(c.weight), 4), "heatmap": heatmap_json(c.heatmap)}
        for c in response.query_concepts
    ]
    return {
        "query": {
            "factors": response.query_factors,
            "heatmap": heatmap_json(response.query_heatmap) if response.HasField("query_heatmap") else None,
            "concepts": concepts,
        },
        "results": results,
        "stages_ms": {s.stage: round(s.milliseconds, 1) for s in response.stages},
        "reranked": response.reranked,
        "notes": list(response.notes),
    }


def index_info_json(info: search_pb2.IndexInfo) -> dict:
    try:
        manifest = json.loads(info.manifest_json) if info.manifest_json else {}
    except json.JSONDecodeError:
        manifest = {}
    faiss = manifest.get("faiss", {}) if isinstance(manifest.get("faiss"), dict) else {}
    whitening = manifest.get("whitening", {}) if isinstance(manifest.get("whitening"), dict) else {}
    return {
        "count": info.count,
        "backbone": info.backbone,
        "descriptor": info.method,
        "image_size": info.image_size,
        "dimension": info.dimension,
        "max_top_k": info.max_top_k,
        "rerank": info.rerank,
        "max_rerank": info.max_rerank,
        "faiss": faiss.get("factory", ""),
        "whitening_dim": whitening.get("dim", 0),
        "updated_at": manifest.get("updated_at"),
        "created_at": manifest.get("created_at"),
    }
