"""Ultravox simulator part: invoking a call's HTTP tool as Ultravox does.

``POST /_sim/calls/<id>/tools/<toolName> {"parameters": {...}, "deliver_to": origin}``
invokes the temporary tool from the call's ``selectedTools`` or ``toolOverrides.add``,
with its static parameters (headers, body, query), its automatic ones
(``KNOWN_PARAM_CALL_ID``) and the model's dynamic ones, passed as given (a model can
produce any value; the tool's server must refuse what it does not allow).
``GET /_sim/tool-invocations``: what was invoked and answered.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any

import requests
from flask import Flask, Response, jsonify, request

from telephony.sim.common import SimError, utc_now_iso
from telephony.sim.delivery import also_on_reset, delivered_to


def _tools_of(request_body: dict[str, Any]) -> list[dict[str, Any]]:
    overrides = request_body.get("toolOverrides")
    selected = request_body.get("selectedTools")
    added = overrides.get("add") if isinstance(overrides, dict) else None
    selected = selected if isinstance(selected, list) else []
    added = added if isinstance(added, list) else []
    return [tool for tool in [*selected, *added] if isinstance(tool, dict)]


def _seconds(duration: Any, default: float) -> float:
    try:
        return float(str(duration).removesuffix("s"))
    except ValueError:
        return default


def install_tool_invoker(app: Flask, ultravox_state: Any) -> None:
    invocations: list[dict[str, Any]] = []
    lock = threading.Lock()

    def forget() -> None:
        with lock:
            invocations.clear()

    also_on_reset(app, forget)

    @app.post("/_sim/calls/<call_id>/tools/<tool_name>")
    def invoke_tool(call_id: str, tool_name: str) -> Response:
        body = request.get_json(silent=True) or {}
        parameters = body.get("parameters") or {}
        with ultravox_state.lock:
            sim_call = ultravox_state.get(call_id)
            if sim_call.call["ended"] is not None:
                raise SimError(409, {"detail": "Call already ended."})
            request_body = copy.deepcopy(sim_call.request_body)
        tool = next((entry for entry in _tools_of(request_body)
                     if (entry.get("nameOverride") or (entry.get("temporaryTool") or {}).get("modelToolName"))
                     == tool_name and isinstance(entry.get("temporaryTool"), dict)), None)
        if tool is None:
            raise SimError(404, {"detail": f"No tool {tool_name!r} on this call."})
        definition = tool["temporaryTool"]
        http_details = definition.get("http") or {}
        url, method = str(http_details.get("baseUrlPattern", "")), str(http_details.get("httpMethod", "POST"))
        headers: dict[str, str] = {}
        query: dict[str, Any] = {}
        json_body: dict[str, Any] = {}

        def place(location: str, name: str, value: Any) -> None:
            nonlocal url
            if location == "PARAMETER_LOCATION_HEADER":
                headers[name] = str(value)
            elif location == "PARAMETER_LOCATION_QUERY":
                query[name] = value
            elif location == "PARAMETER_LOCATION_PATH":
                url = url.replace("{" + name + "}", str(value))
            else:
                json_body[name] = value

        for static in definition.get("staticParameters") or []:
            place(static.get("location", ""), static["name"], static.get("value"))
        for automatic in definition.get("automaticParameters") or []:
            if automatic.get("knownValue") == "KNOWN_PARAM_CALL_ID":
                place(automatic.get("location", ""), automatic["name"], call_id)
        for dynamic in definition.get("dynamicParameters") or []:
            if dynamic["name"] in parameters:
                place(dynamic.get("location", ""), dynamic["name"], parameters[dynamic["name"]])
        for name, value in (tool.get("parameterOverrides") or {}).items():
            json_body[name] = value
        record: dict[str, Any] = {"time": utc_now_iso(), "callId": call_id, "tool": tool_name, "url": url}
        started = time.perf_counter()
        record["sent"] = time.time()  # epoch, comparable with the carrier simulator's "received"
        try:
            response = requests.request(method, delivered_to(url, body.get("deliver_to")), headers=headers,
                                        params=query or None, json=json_body if method != "GET" else None,
                                        timeout=_seconds(definition.get("timeout"), 20.0))
            try:
                reply: Any = response.json()
            except ValueError:
                reply = response.text
            record.update({"status": response.status_code, "result": reply})
        except requests.RequestException as exc:
            record.update({"status": None, "error": type(exc).__name__})
        record["ms"] = round((time.perf_counter() - started) * 1000, 2)
        with lock:
            invocations.append(record)
        return jsonify(record)

    @app.get("/_sim/tool-invocations")
    def tool_invocations() -> Response:
        with lock:
            return jsonify({"invocations": copy.deepcopy(invocations)})
