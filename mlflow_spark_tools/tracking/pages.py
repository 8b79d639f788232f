"""Requests that answer in pages: following page tokens, and one page of a run search.

Every page-token loop of the package goes through :func:`follow_pages`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

SEARCH_ENDPOINT = "/api/2.0/mlflow/runs/search"
ACTIVE_ONLY, DELETED_ONLY, ALL = "ACTIVE_ONLY", "DELETED_ONLY", "ALL"

T = TypeVar("T")


def follow_pages(fetch: Callable[[str | None], tuple[T, str | None]], start: str | None = None) -> Iterator[T]:
    """Every page: ``fetch(start)`` first (None: the first page), then ``fetch(token)`` with
    each next-page token until a page comes without one (an empty token ends it too)."""
    token = start
    while True:
        page, token = fetch(token)
        yield page
        if not token:
            return


def search_runs_json(
    store: Any,
    experiment_ids: list[str],
    filter_string: str = "",
    view: str = ACTIVE_ONLY,
    max_results: int = 1000,
    order_by: list[str] | None = None,
    page_token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs in the REST API's JSON shape, and the next page token.

    A REST store is asked with one ``runs/search`` request (its JSON is used as it comes,
    without building MLflow entities); any other store through its own ``search_runs``.
    """
    body: dict[str, Any] = {
        "experiment_ids": [str(e) for e in experiment_ids],
        "filter": filter_string,
        "run_view_type": view,
        "max_results": max_results,
    }
    if order_by:
        body["order_by"] = list(order_by)
    if page_token:
        body["page_token"] = page_token
    host_creds = getattr(store, "get_host_creds", None)
    if host_creds is not None:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(host_creds(), SEARCH_ENDPOINT, "POST", json=body)
        payload = verify_rest_response(response, SEARCH_ENDPOINT).json()
        return payload.get("runs", []), payload.get("next_page_token") or None

    from mlflow.entities import ViewType
    from mlflow.utils.proto_json_utils import message_to_json

    page = store.search_runs(
        experiment_ids=body["experiment_ids"],
        filter_string=filter_string,
        run_view_type=ViewType.from_string(view.lower()),
        max_results=max_results,
        order_by=order_by,
        page_token=page_token,
    )
    return [json.loads(message_to_json(run.to_proto())) for run in page], page.token or None
