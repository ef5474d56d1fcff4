"""The `admin`-scoped routes: operations on the running service, not reads of the catalog."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.auth import KeyRing
from service.errors import ApiError, from_store, json_response
from service.serving import State


def admin_routes(keys: KeyRing, responses: dict) -> APIRouter:
    router = APIRouter(prefix="/admin", responses=responses)

    @router.post("/keys/reload", summary="Re-read the keys file now (it is also re-read within a second of a change)")
    async def reload_keys() -> Response:
        return json_response({"reloaded": keys.refresh(time.monotonic(), force=True), "keys": len(keys.by_hash)})

    @router.post("/model/check", summary="Follow the active-namespace pointer now instead of at the next poll")
    async def check_model(request: Request) -> Response:
        state: State = request.app.state.m5
        try:
            switched = await run_in_threadpool(from_store, state.check_model)
        except ApiError as exc:
            if isinstance(exc.__cause__, RuntimeError):  # the new namespace's vectors are not its bundle's: stay
                raise ApiError(409, f"model switch refused: {exc.__cause__}") from exc
            raise
        return json_response({"switched": switched, "namespace": state.serving.namespace})

    return router
